#!/usr/bin/env bash
# The demo (README): the main job of liveup, end to end, printing what it does.
# Today: make a signing key, publish two generations into a local channel,
# serve the channel over HTTP, verify it as an agent would, let a real agent
# (liveup-agentd + agentctl) stage the update with its boot menu, then show
# that a tampered artifact is caught. Later issues extend it (agent, boot, fleet).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

LIVEUP="$PWD/bin/liveup"
WORK=${LIVEUP_DEMO_DIR:-$(mktemp -d /tmp/liveup-demo.XXXXXX)}
step() { printf '\n\033[1;34m### %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

step "1. A signing key for the channel (the private half never leaves the publisher)"
run "$LIVEUP" key generate --out "$WORK/keys" --name demo

step "2. Two generations: a small root tree squashed with mksquashfs, a kernel and an initrd"
KERNEL=$(ls /boot/vmlinuz-* 2>/dev/null | head -1 || true)
INITRD=$(ls /boot/initrd.img-* 2>/dev/null | head -1 || true)
for n in 1 2; do
  mkdir -p "$WORK/tree$n/etc" "$WORK/gen$n"
  echo "demo generation $n" > "$WORK/tree$n/etc/liveup-demo"
  run mksquashfs "$WORK/tree$n" "$WORK/gen$n/filesystem.squashfs" -noappend -quiet -no-progress -comp zstd -reproducible -mkfs-time 0 -all-time 0
  if [ -n "$KERNEL" ] && [ -n "$INITRD" ]; then
    cp "$KERNEL" "$WORK/gen$n/vmlinuz"; cp "$INITRD" "$WORK/gen$n/initrd.img"
  else # no kernel on this host: stand-ins (later demos build real ones with `liveup build`)
    head -c 8M /dev/urandom > "$WORK/gen$n/vmlinuz"; head -c 4M /dev/urandom > "$WORK/gen$n/initrd.img"
  fi
done

step "3. Publish both into the channel 'stable' (manifest signed, then the index re-signed)"
run "$LIVEUP" publish --repo "$WORK/repo" --channel stable --key "$WORK/keys/demo.key.asc" --expires 30d "$WORK/gen1"
run "$LIVEUP" publish --repo "$WORK/repo" --channel stable --key "$WORK/keys/demo.key.asc" --expires 30d "$WORK/gen2"
run find "$WORK/repo" -maxdepth 3 -not -name '.*' -printf '%P\n'

step "4. Serve the channel over HTTP on 127.0.0.1"
"$LIVEUP" serve "$WORK/repo" --listen 127.0.0.1:0 --quiet > "$WORK/serve.out" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q http "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[^ ]*' "$WORK/serve.out")
echo "serving at $URL"

step "5. Verify the channel over HTTP with the pinned public key: index, manifests, every artifact"
run "$LIVEUP" verify --repo "$URL" --channel stable --keyring "$WORK/keys/demo.pub.asc"

step "6. An agent on a machine running generation 1 finds, verifies and stages generation 2"
# The machine: a boot medium holding generation 1, a state dir, and a private
# D-Bus (the real one is the system bus; the demo must not touch this host's).
mkdir -p "$WORK/machine/boot/live" "$WORK/machine/run"
cp -r "$WORK/repo/generations/1" "$WORK/machine/boot/live/1"
echo 1 > "$WORK/machine/run/booted"
cat > "$WORK/machine/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path=$WORK/machine/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
CONF
dbus-daemon --config-file="$WORK/machine/bus.conf" --fork --print-pid=1 --nopidfile > "$WORK/machine/bus.pid" 2>/dev/null
BUS="unix:path=$WORK/machine/bus"
cat > "$WORK/machine/agent.json" <<CONF
{ "channel": "stable", "mirrors": ["$URL"], "keyring": "$WORK/keys/demo.pub.asc",
  "bootDir": "$WORK/machine/boot", "stateDir": "$WORK/machine/state", "dbus": "$BUS",
  "schedule": "0 3 * * *", "jitterSeconds": 0 }
CONF
run cat "$WORK/machine/agent.json"
"$PWD/bin/liveup-agentd" --config "$WORK/machine/agent.json" --config-dir "$WORK/machine/agent.d" --run-dir "$WORK/machine/run" > "$WORK/machine/agentd.log" 2>&1 &
AGENTD=$!
trap 'kill $SERVER $AGENTD 2>/dev/null || true; kill "$(cat "$WORK/machine/bus.pid")" 2>/dev/null || true' EXIT
AGENTCTL="$PWD/bin/agentctl"
for _ in $(seq 100); do "$AGENTCTL" --bus "$BUS" status >/dev/null 2>&1 && break; sleep 0.1; done
run "$AGENTCTL" --bus "$BUS" status
run "$AGENTCTL" --bus "$BUS" check
run "$AGENTCTL" --bus "$BUS" update
run "$AGENTCTL" --bus "$BUS" list
run ls "$WORK/machine/boot/live/2"
run grep -E "^(menuentry|set (default|fallback))" "$WORK/machine/boot/grub/grub.cfg"
run grub-editenv "$WORK/machine/boot/grub/grubenv" list
run "$AGENTCTL" --bus "$BUS" history

step "7. Tamper with one byte of generation 1's kernel: verification names the problem and fails"
printf 'TAMPERED' | dd of="$WORK/repo/generations/1/vmlinuz" bs=1 seek=4096 conv=notrunc status=none
if "$LIVEUP" verify --repo "$URL" --channel stable --keyring "$WORK/keys/demo.pub.asc"; then
  echo "demo: tampering was NOT detected" >&2; exit 1
else
  echo "(exit $? as expected: the tampered artifact is refused)"
fi

step "Done. Everything is in $WORK"
