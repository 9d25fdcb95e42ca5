#!/usr/bin/env bash
# The demo (README): the main job of liveup, end to end, printing what it does.
# Build a real Debian 13 generation from a profile, derive the next one by
# installing a package, sign and publish both, serve the channel; a machine
# running generation 1 (its squashfs under a tmpfs overlay, as live-boot
# mounts it) gets generation 2 from its agent and applies it live, without a
# reboot; the machine reports to a fleet endpoint; a hybrid ISO of the new
# generation is written; a tampered artifact is caught.
# First run ~4-6 min (debootstrap, apt); later runs reuse the factory's cache.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

LIVEUP="$PWD/bin/liveup"
# Its work (two generations, a channel, an ISO: ~2.2 GB) is removed at the end unless
# LIVEUP_DEMO_KEEP=1 or LIVEUP_DEMO_DIR names where to keep it; a failed run keeps it
# for a look. (Kept by default, every run left 2.2 GB in /tmp.)
WORK=${LIVEUP_DEMO_DIR:-$(mktemp -d /tmp/liveup-demo.XXXXXX)}
KEEP=${LIVEUP_DEMO_KEEP:-${LIVEUP_DEMO_DIR:+1}}
step() { printf '\n\033[1;34m### %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

step "1. A signing key for the channel (the private half never leaves the publisher)"
run "$LIVEUP" key generate --out "$WORK/keys" --name demo

step "2. Build generation 1 from a versioned profile: debootstrap → kernel, live-boot, agent-ready → mksquashfs"
run cat profiles/demo.json
run "$LIVEUP" build --profile profiles/demo.json --out "$WORK/gen1"

step "3. Publish it into the channel 'stable' (manifest signed, then the index re-signed)"
run "$LIVEUP" publish --repo "$WORK/repo" --channel stable --key "$WORK/keys/demo.key.asc" --expires 30d "$WORK/gen1"

step "4. Derive generation 2 from the published one: install 'hello'; the exact .deb and the change are recorded"
run "$LIVEUP" derive --from "$WORK/repo" --channel stable --keyring "$WORK/keys/demo.pub.asc" --install hello --out "$WORK/gen2"
run "$LIVEUP" publish --repo "$WORK/repo" --channel stable --key "$WORK/keys/demo.key.asc" --expires 30d "$WORK/gen2"
run find "$WORK/repo" -maxdepth 3 -not -name '.*' -printf '%P\n'

step "5. Serve the channel over HTTP on 127.0.0.1, and verify it with the pinned key"
"$LIVEUP" serve "$WORK/repo" --listen 127.0.0.1:0 --quiet > "$WORK/serve.out" &
SERVER=$!
MOUNTS=()
cleanup() {
  kill ${SERVER:-} ${FLEET:-} ${AGENTD:-} 2>/dev/null || true
  wait ${SERVER:-} ${FLEET:-} ${AGENTD:-} 2>/dev/null || true
  [ -f "$WORK/machine/bus.pid" ] && kill "$(cat "$WORK/machine/bus.pid")" 2>/dev/null || true
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
}
finish() {
  local rc=$?
  cleanup
  if [ "$rc" -ne 0 ]; then echo "demo failed (exit $rc); its work is kept in $WORK" >&2
  elif [ "${KEEP:-}" = 1 ]; then echo "Everything is in $WORK"
  elif findmnt -rn -o TARGET | grep -q "^$WORK/"; then echo "something is still mounted under $WORK; kept" >&2
  # --one-file-system: never follow a mount that outlived the lazy unmounts into the host.
  else rm -rf --one-file-system "$WORK"; echo "(its work, $WORK, was removed; LIVEUP_DEMO_KEEP=1 keeps it)"
  fi
}
trap finish EXIT
for _ in $(seq 50); do grep -q http "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[^ ]*' "$WORK/serve.out")
echo "serving at $URL"
run "$LIVEUP" verify --repo "$URL" --channel stable --keyring "$WORK/keys/demo.pub.asc"

step "6. A fleet endpoint, a token for the machines and one for the administrator"
"$LIVEUP" fleet serve --db "sqlite:$WORK/fleet.db" --listen 127.0.0.1:0 > "$WORK/fleet.out" 2>&1 &
FLEET=$!
for _ in $(seq 50); do grep -q http "$WORK/fleet.out" 2>/dev/null && break; sleep 0.1; done
FLEET_URL=$(grep -o 'http://[^ ]*/' "$WORK/fleet.out" | head -1)
TOKEN=$("$LIVEUP" fleet token create demo-machines --db "sqlite:$WORK/fleet.db")
ADMIN=$("$LIVEUP" fleet token create demo-admin --role admin --db "sqlite:$WORK/fleet.db")
echo "fleet endpoint at $FLEET_URL (dashboard: ${FLEET_URL}#token=$ADMIN)"

step "7. A machine running generation 1: its squashfs read-only under a tmpfs overlay, as live-boot mounts it"
M="$WORK/machine"
mkdir -p "$M/boot/live" "$M/run" "$M/lower" "$M/rw" "$M/root"
cp -r "$WORK/repo/generations/1" "$M/boot/live/1"
echo 1 > "$M/run/booted"
run mount -t squashfs -o loop,ro "$M/boot/live/1/filesystem.squashfs" "$M/lower"; MOUNTS+=("$M/lower")
mount -t tmpfs demo-rw "$M/rw"; MOUNTS+=("$M/rw"); mkdir -p "$M/rw/upper" "$M/rw/work"
run mount -t overlay overlay -o "lowerdir=$M/lower,upperdir=$M/rw/upper,workdir=$M/rw/work" "$M/root"; MOUNTS+=("$M/root")
# A private D-Bus (the real agent is on the system bus; the demo must not touch this host's).
cat > "$M/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path=$M/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
CONF
dbus-daemon --config-file="$M/bus.conf" --fork --print-pid=1 --nopidfile > "$M/bus.pid" 2>/dev/null
BUS="unix:path=$M/bus"
cat > "$M/agent.json" <<CONF
{ "channel": "stable", "mirrors": ["$URL"], "keyring": "$WORK/keys/demo.pub.asc",
  "bootDir": "$M/boot", "stateDir": "$M/state", "dbus": "$BUS", "liveRoot": "$M/root",
  "schedule": "0 3 * * *", "jitterSeconds": 0, "rebootStrategy": "live" }
CONF
run cat "$M/agent.json"
AGENTCTL="$PWD/bin/agentctl"
run "$AGENTCTL" enroll "$FLEET_URL" --token "$TOKEN" --group demo --config-dir "$M/agent.d" --token-file "$M/fleet.token"
"$PWD/bin/liveup-agentd" --config "$M/agent.json" --config-dir "$M/agent.d" --local-config-dir "$M/state/agent.d" --run-dir "$M/run" > "$M/agentd.log" 2>&1 &
AGENTD=$!
for _ in $(seq 100); do "$AGENTCTL" --bus "$BUS" status >/dev/null 2>&1 && break; sleep 0.1; done
run "$AGENTCTL" --bus "$BUS" status
run chroot "$M/root" sh -c 'command -v hello || echo "hello: not installed"'

step "8. The agent checks the channel, stages generation 2 for the next boot, and replays its change live"
run "$AGENTCTL" --bus "$BUS" check
run "$AGENTCTL" --bus "$BUS" update --apply-live
run chroot "$M/root" hello
run "$AGENTCTL" --bus "$BUS" status
run grep -E "^(menuentry|set (default|fallback))" "$M/boot/grub/grub.cfg"
run "$AGENTCTL" --bus "$BUS" history

step "9. The machine reported every step to the fleet endpoint"
run "$AGENTCTL" --bus "$BUS" report
run curl -sf -H "Authorization: Bearer $ADMIN" "${FLEET_URL}v1/machines"
echo

step "10. A hybrid ISO (BIOS and UEFI) of generation 2, for a USB stick or a new machine"
run "$LIVEUP" iso --gendir "$WORK/repo/generations/2" --out "$WORK/demo-2.iso"

step "11. Tamper with one byte of generation 1's kernel: verification names the problem and fails"
printf 'TAMPERED' | dd of="$WORK/repo/generations/1/vmlinuz" bs=1 seek=4096 conv=notrunc status=none
if "$LIVEUP" verify --repo "$URL" --channel stable --keyring "$WORK/keys/demo.pub.asc"; then
  echo "demo: tampering was NOT detected" >&2; exit 1
else
  echo "(exit $? as expected: the tampered artifact is refused)"
fi

step "Done."
