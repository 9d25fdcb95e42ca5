/**
 * VM harness: a small bootable generation built by the project's own factory
 * (`liveup build`), cached by the hash of what goes into it under
 * /var/cache/liveup/vm/<hash>/ (override with LIVEUP_VM_CACHE).
 *
 * The profile's hook runs in the build chroot before update-initramfs, so it
 * installs the repo's initramfs scripts (embedded, the chroot cannot see the
 * repo) and a unit that prints a marker on the serial console.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { DPKG_ENV, serviceDeb } from './debs.js';
import { BUILD_NEEDS, newRunDir, pruneGenerations, requireFreeSpace, touchGeneration, VM_CACHE } from './cache.js';
import { spawn } from 'node:child_process';

/**
 * Run a command without blocking the test worker (a synchronous minutes-long
 * build starves vitest's worker RPC): stdout is returned, and shown on stderr
 * with the command's own stderr, so a bench's stdout carries only its result
 * (`--json`).
 */
export function runAsync(cmd: string, args: readonly string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...args], { stdio: ['ignore', 'pipe', 'inherit'], env: opts.env ?? process.env });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); process.stderr.write(d); });
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGTERM'), opts.timeoutMs) : null;
    child.on('error', reject);
    child.on('close', (code, sig) => {
      if (timer) clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${code ?? sig})`));
    });
  });
}

/**
 * Builds (`liveup build`/`derive`, packaging/build) share the factory's caches
 * and the cached generations: with two VM slots (qemu.ts) two test files may
 * want one at once, so each build runs under this lock. A `flock` child holds
 * it, so it is released when the build ends and also when this process dies.
 * Not reentrant: take it once, around the outermost build.
 */
export async function withBuildLock<T>(fn: () => Promise<T>): Promise<T> {
  mkdirSync(VM_CACHE, { recursive: true });
  const holder = spawn('flock', [join(VM_CACHE, '.build.lock'), 'sh', '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((res, rej) => {
    holder.stdout.once('data', () => res());
    holder.once('error', rej);
    holder.once('exit', (code) => rej(new Error(`flock on the build lock exited (${code})`)));
  });
  try {
    return await fn();
  } finally {
    holder.stdin.end();
  }
}

/** The checkout: two levels up from test/vm, or three from dist/test/vm (bench/boot runs compiled). */
const up = resolve(import.meta.dirname, '../..');
export const REPO = existsSync(join(up, 'package.json')) ? up : resolve(up, '..');
export { VM_CACHE } from './cache.js';
export const MARKER = 'LIVEUP-VM-MARKER';

/** The repo's initramfs scripts as [relative path under initramfs-tools, content]. */
function initramfsFiles(): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const base = join(REPO, 'initramfs-hooks');
  for (const top of ['hooks', 'scripts']) {
    const dir = join(base, top);
    if (!existsSync(dir)) continue;
    if (top === 'hooks') {
      for (const f of readdirSync(dir).sort()) out.push([`hooks/${f}`, readFileSync(join(dir, f), 'utf8')]);
    } else {
      for (const sub of readdirSync(dir).sort()) {
        for (const f of readdirSync(join(dir, sub)).sort()) out.push([`scripts/${sub}/${f}`, readFileSync(join(dir, sub, f), 'utf8')]);
      }
    }
  }
  return out;
}

/** What a generation carrying the real agent needs: its .deb, the channel's pinned key, the channel URL. */
export interface AgentSetup {
  readonly deb: string;
  readonly keyringAsc: string;
  readonly channelUrl: string;
  /** More local .debs for the image (the profile's `debs`), e.g. the test service. */
  readonly extraDebs?: readonly string[];
}

function agentLines(a: AgentSetup): string[] {
  const config = {
    channel: 'stable', mirrors: [a.channelUrl], keyring: '/etc/liveup/keyring.asc', architecture: 'amd64',
    // Checks are driven by the test (agentctl), not by the clock.
    schedule: '0 0 1 1 *', jitterSeconds: 0, rebootStrategy: 'live', bootDir: '/run/liveup/boot',
    // retries: the agent starts without waiting for network-online, so a check right after boot may
    // race DHCP; 4 retries back off ~15-30 s in all (jittered 2, 4, 8, 16 s).
    fetch: { deadlineSeconds: 600, minBytesPerSecond: 0, retries: 4, backoffSeconds: 2 },
  };
  return [
    'mkdir -p /etc/liveup',
    `cat > /etc/liveup/agent.json <<'LIVEUP_EOF'`, JSON.stringify(config, null, 2), 'LIVEUP_EOF',
    `cat > /etc/liveup/keyring.asc <<'LIVEUP_EOF'`, readFileSync(a.keyringAsc, 'utf8').replace(/\n$/, ''), 'LIVEUP_EOF',
    // DHCP on QEMU's user network, so the agent reaches the channel at 10.0.2.2.
    'mkdir -p /etc/systemd/network',
    `printf '[Match]\\nName=en* eth*\\n[Network]\\nDHCP=ipv4\\n' > /etc/systemd/network/20-liveup-vm.network`,
    'systemctl enable systemd-networkd.service',
  ];
}

function hookScript(agent?: AgentSetup): string {
  const lines = ['#!/bin/sh', '# Generated by test/vm/generation.ts: installs liveup initramfs scripts and a console marker.', 'set -eu'];
  for (const [rel, content] of initramfsFiles()) {
    const dest = `/usr/share/initramfs-tools/${rel}`;
    lines.push(`mkdir -p "$(dirname ${dest})"`, `cat > ${dest} <<'LIVEUP_EOF'`, content.replace(/\n$/, ''), 'LIVEUP_EOF', `chmod 0755 ${dest}`);
  }
  // The marker: one line on the serial console once multi-user is reached.
  lines.push(
    'mkdir -p /usr/local/sbin',
    `cat > /usr/local/sbin/liveup-vm-marker <<'LIVEUP_EOF'`,
    '#!/bin/sh',
    `echo "${MARKER} booted=$(cat /run/liveup/booted 2>/dev/null || echo none)" > /dev/ttyS0`,
    'LIVEUP_EOF',
    'chmod 0755 /usr/local/sbin/liveup-vm-marker',
    `cat > /etc/systemd/system/liveup-vm-marker.service <<'LIVEUP_EOF'`,
    '[Unit]',
    'Description=liveup VM test marker',
    'After=multi-user.target',
    '[Service]',
    'Type=oneshot',
    'ExecStart=/usr/local/sbin/liveup-vm-marker',
    '[Install]',
    'WantedBy=multi-user.target',
    'LIVEUP_EOF',
    'systemctl enable liveup-vm-marker.service',
    // A second marker once the boot check passed (its ExecStart exits 0 only then): systemd
    // stops printing unit status on the console once the serial getty runs, so the
    // boot check's own "Finished" line never shows there. BOOT_CHECK_PASSED in qemu.ts.
    'mkdir -p /etc/systemd/system/liveup-boot-check.service.d',
    `printf '[Service]\\nExecStartPost=/bin/sh -c "echo ${MARKER} boot-check-passed booted=$$(cat /run/liveup/booted) > /dev/ttyS0"\\n' > /etc/systemd/system/liveup-boot-check.service.d/vm-marker.conf`,
    // Root autologin on the serial console, for driving the guest.
    'mkdir -p /etc/systemd/system/serial-getty@ttyS0.service.d',
    `printf '[Service]\\nExecStart=\\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200 %%I $TERM\\n' > /etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf`,
    'passwd -d root || true',
    // An emulator artifact, neutralised for every boot path alike (docs/testing.md, "systemd's
    // slow start under TCG"): QEMU TCG makes each write to a freed page that held hot translated
    // code cost milliseconds, and run-init frees busybox's pages (the code the initramfs ran for
    // ~15 s) just before systemd's first readahead reuses them: 13 s instead of 1.1 s, by the luck
    // of page reuse. A sleeping busybox keeps those pages mapped. VM test images only: on real
    // hardware a freed page costs nothing, and the product's initramfs leaves no process behind.
    'mkdir -p /etc/initramfs-tools/scripts/init-bottom',
    `cat > /etc/initramfs-tools/scripts/init-bottom/zz-vm-tcg-pin <<'LIVEUP_EOF'`,
    '#!/bin/sh',
    'case "$1" in prereqs) exit 0;; esac',
    'busybox sleep 2147483647 </dev/null >/dev/null 2>&1 &',
    'LIVEUP_EOF',
    'chmod 0755 /etc/initramfs-tools/scripts/init-bottom/zz-vm-tcg-pin',
    // kexec-tools, if present, must not turn reboots into kexec (vm-boot-facts.md).
    'if [ -f /etc/default/kexec ]; then sed -i s/^LOAD_KEXEC=.*/LOAD_KEXEC=false/ /etc/default/kexec; fi',
    // A required health check of the image that fails when the test asks for it: a file
    // /var/lib/liveup/fail-generation-N on the data partition (which the test writes from the guest)
    // fails generation N's boot check, and only N's.
    'mkdir -p /etc/liveup/checks.d',
    `cat > /etc/liveup/checks.d/50-vm-fail-on-request <<'LIVEUP_EOF'`,
    '#!/bin/sh',
    'v=$(cat /run/liveup/booted 2>/dev/null)',
    'if [ -n "$v" ] && [ -e "/var/lib/liveup/fail-generation-$v" ]; then echo "generation $v fails on request (VM test)" >&2; exit 1; fi',
    'LIVEUP_EOF',
    'chmod 0755 /etc/liveup/checks.d/50-vm-fail-on-request',
    ...(agent ? agentLines(agent) : []),
  );
  return lines.join('\n') + '\n';
}

export function testProfile(agent?: AgentSetup): Record<string, unknown> {
  return {
    format: 1,
    name: agent ? 'vmtest-agent' : 'vmtest',
    version: '1',
    description: 'liveup VM test generation',
    suite: 'trixie',
    architecture: 'amd64',
    sources: [{ uri: 'http://deb.debian.org/debian', components: ['main'], keyring: '/usr/share/keyrings/debian-archive-keyring.gpg' }],
    machine: 'virtual',
    packages: [],
    // Copied beside the profile by buildTestGeneration: a relative path keeps the hash stable.
    debs: (agent?.extraDebs ?? []).map((d) => basename(d)),
    // With `agent`, the factory installs the agent's .deb (passed as --agent-deb): apt brings its
    // Depends (nodejs, kexec-tools, dbus, …). Without, the boot tests' image stays small.
    agent: agent !== undefined,
    persistent: [],
    hooks: ['hooks/50-liveup-vm.sh'],
    compression: { algorithm: 'zstd', level: 3, blockSize: '1M' },
    factory: false,
  };
}

export interface BuiltGeneration {
  readonly gendir: string;
  readonly hash: string;
  readonly cached: boolean;
}

/**
 * Build (or reuse) the test generation; with `agent`, one carrying the real
 * agent (.deb, config, pinned key). Returns its GENDIR.
 */
export async function buildTestGeneration(log: (s: string) => void = () => {}, agent?: AgentSetup): Promise<BuiltGeneration> {
  const profile = testProfile(agent);
  const hook = hookScript(agent);
  const h = createHash('sha256').update(JSON.stringify(profile)).update('\0').update(hook);
  // The factory's code makes the image too: a change there is tested on a fresh build.
  const factory = join(REPO, 'publisher', 'src', 'factory');
  for (const f of readdirSync(factory).filter((n) => n.endsWith('.ts')).sort()) h.update('\0').update(readFileSync(join(factory, f)));
  if (agent) h.update('\0').update(readFileSync(agent.deb));
  for (const d of agent?.extraDebs ?? []) h.update('\0').update(readFileSync(d));
  const hash = h.digest('hex').slice(0, 16);
  const dir = join(VM_CACHE, hash);
  const gendir = join(dir, 'gen');
  const cached = (): boolean => {
    const hit = existsSync(join(dir, 'done')) && existsSync(join(gendir, 'vmlinuz'));
    if (hit) touchGeneration(dir);
    return hit;
  };
  if (cached()) return { gendir, hash, cached: true };
  return withBuildLock(async () => {
    // Built by another test file while this one waited for the lock.
    if (cached()) return { gendir, hash, cached: true };
    return buildUnlocked(log, agent, { profile, hook, hash, dir, gendir });
  });
}

async function buildUnlocked(log: (s: string) => void, agent: AgentSetup | undefined, o: { profile: Record<string, unknown>; hook: string; hash: string; dir: string; gendir: string }): Promise<BuiltGeneration> {
  const { profile, hook, hash, dir, gendir } = o;
  const dropped = pruneGenerations(hash);
  if (dropped.length) log(`dropped the cached generations of ${dropped.length} older key(s): ${dropped.join(', ')}`);
  rmSync(dir, { recursive: true, force: true });
  requireFreeSpace(VM_CACHE, BUILD_NEEDS, `building the test generation ${hash}`);
  mkdirSync(join(dir, 'profile', 'hooks'), { recursive: true });
  writeFileSync(join(dir, 'profile', 'profile.json'), JSON.stringify(profile, null, 2) + '\n');
  writeFileSync(join(dir, 'profile', 'hooks', '50-liveup-vm.sh'), hook);
  chmodSync(join(dir, 'profile', 'hooks', '50-liveup-vm.sh'), 0o755);
  if (agent) copyFileSync(agent.deb, join(dir, 'profile', 'liveup-agent.deb'));
  for (const d of agent?.extraDebs ?? []) copyFileSync(d, join(dir, 'profile', basename(d)));
  const agentArgs = agent ? ['--agent-deb', join(dir, 'profile', 'liveup-agent.deb')] : [];
  log(`building test generation ${hash} in ${gendir}`);
  await runAsync(join(REPO, 'bin', 'liveup'), ['build', '--profile', join(dir, 'profile', 'profile.json'), '--out', gendir, ...agentArgs], { timeoutMs: 20 * 60_000 });
  writeFileSync(join(dir, 'done'), new Date().toISOString() + '\n');
  touchGeneration(dir);
  return { gendir, hash, cached: false };
}

/** The generation carrying the real agent, with what it was made with. */
export interface AgentGeneration extends BuiltGeneration {
  /** Holds vm.key.asc (the channel's signing key) and vm.pub.asc (baked into the image). */
  readonly keys: string;
}

/**
 * Build (or reuse) generation 1 with the agent as shipped: packaging/build's
 * .deb (dist/ must be built), one signing key for every cached generation,
 * the channel at `channelUrl` (as the guest sees it). Shared by the live VM
 * suite and bench/boot, so both boot the same cached image.
 */
export async function buildAgentGeneration(log: (s: string) => void, channelUrl: string): Promise<AgentGeneration> {
  const debDir = join(VM_CACHE, 'debs');
  mkdirSync(debDir, { recursive: true });
  const keys = join(VM_CACHE, 'keys');
  const { deb, svc } = await withBuildLock(async () => {
    // A fixed SOURCE_DATE_EPOCH and build revision (packaging/build defaults to the last commit's
    // time and hash, both in the changelog): the same agent code gives the same .deb bytes, so the
    // cached generations (keyed by them) survive a commit that does not touch what the agent ships.
    const built = (await runAsync(join(REPO, 'packaging', 'build'), ['--only', 'agent', '--no-tsc', '--out', debDir],
      { env: { ...DPKG_ENV, LIVEUP_BUILD_REV: 'vm-test' } })).trim().split('\n').pop()!;
    if (!existsSync(join(keys, 'vm.pub.asc'))) await runAsync(join(REPO, 'bin', 'liveup'), ['key', 'generate', '--out', keys, '--name', 'vm']);
    // The test service, version 1.0 (generation 2 upgrades it: a live replay must restart it).
    return { deb: built, svc: serviceDeb(debDir, '1.0') };
  });
  const built = await buildTestGeneration(log, { deb, keyringAsc: join(keys, 'vm.pub.asc'), channelUrl, extraDebs: [svc] });
  return { ...built, keys };
}

/** What a boot scenario starts from: the test generation, its kernel, a serial command line and a run directory. */
export interface BootRun {
  readonly gendir: string;
  readonly kernelVersion: string;
  readonly cmdline: string;
  readonly work: string;
}

/**
 * The plain test generation with a command line for the serial console,
 * the initramfs check on (liveup.verify=1) and panic=5 — an initramfs panic
 * then reboots, so GRUB's countdown and fallback run instead of a shell
 * waiting forever.
 */
export async function prepareBootRun(tag: string, log: (s: string) => void = (s) => console.log(s)): Promise<BootRun> {
  const gen = await buildTestGeneration(log);
  const meta = JSON.parse(readFileSync(join(gen.gendir, 'generation.json'), 'utf8')) as { kernel: { version: string; cmdline: string } };
  const work = newRunDir(tag);
  const cmdline = `${meta.kernel.cmdline.replace(/\bquiet\b/, '')} console=ttyS0,115200 liveup.verify=1 panic=5`.replace(/\s+/g, ' ').trim();
  return { gendir: gen.gendir, kernelVersion: meta.kernel.version, cmdline, work };
}
