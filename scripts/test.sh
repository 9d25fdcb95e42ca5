#!/usr/bin/env bash
# The test command (README, .ci/run): set-up, type check, the unit and
# integration tiers, then the VM suite (QEMU boots of real generations; two
# test files at a time, each with its own QEMU slot, LIVEUP_VM_SLOTS=1 for one
# VM at a time; LIVEUP_VM_TESTS=0 skips it). Arguments go to the first vitest
# run only (and skip the VM suite): `./scripts/test.sh test/unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
VM=${LIVEUP_VM_TESTS:-1}
LIVEUP_SETUP_VM=$VM ./scripts/setup.sh
echo "==> type check (strict, tests included)" >&2
npx tsc -p tsconfig.json --noEmit
echo "==> vitest: unit and integration" >&2
# The VM files skip themselves here; they run below, one file at a time.
env -u LIVEUP_VM_TESTS npx vitest run "$@"
if [ "$VM" = 1 ] && [ $# -eq 0 ]; then
  echo "==> vitest: VM suite (QEMU TCG)" >&2
  # One QEMU per slot (test/vm/qemu.ts) and builds under one lock (generation.ts):
  # the long live suite runs beside the boot, ISO and signed-boot files.
  SLOTS=${LIVEUP_VM_SLOTS:-2}
  LIVEUP_VM_TESTS=1 LIVEUP_VM_SLOTS=$SLOTS npx vitest run test/vm --maxWorkers="$SLOTS" --minWorkers=1
fi
