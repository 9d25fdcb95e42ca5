#!/usr/bin/env bash
# The test command (README, .ci/run): set-up, type check, then every test tier
# that this machine can run. VM tests (QEMU boots) run with LIVEUP_VM_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "==> type check (strict, tests included)" >&2
npx tsc -p tsconfig.json --noEmit
echo "==> vitest" >&2
npx vitest run "$@"
