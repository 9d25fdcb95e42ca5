/**
 * bench/agent: the daemon's memory and its end-to-end update speed, measured
 * on the real binaries (liveup-agentd on a private dbus-daemon, agentctl,
 * liveup serve on 127.0.0.1), against `curl -o` + `sha512sum` of the same
 * image in the same run.
 *
 *   node dist/bench/agent.js [--e2e-mb 512] [--stage-mb 1024]
 *
 * Prints: idle RSS after a check, peak RSS (VmHWM) over staging the large
 * image, and the ratio (ours / (curl + sha512sum)) for the e2e image.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, cpSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { generateKey } from '../publisher/src/key.js';
import { loadPrivateKey } from '../agent/src/channel/signature.js';
import { publish } from '../publisher/src/publish.js';
import { serve } from '../publisher/src/serve.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const bin = (n: string) => join(ROOT, 'bin', n);

function gendir(dir: string, mb: number, marker: string): string {
  mkdirSync(join(dir, 'tree'), { recursive: true });
  writeFileSync(join(dir, 'tree', 'marker'), marker);
  mkdirSync(join(dir, 'gen'), { recursive: true });
  // A random "image" of the given size: hashing and I/O cost do not depend on it being squashfs.
  execFileSync('dd', ['if=/dev/urandom', `of=${join(dir, 'gen', 'filesystem.squashfs')}`, 'bs=1M', `count=${mb}`, 'status=none']);
  execFileSync('dd', ['if=/dev/urandom', `of=${join(dir, 'gen', 'vmlinuz')}`, 'bs=1M', 'count=8', 'status=none']);
  execFileSync('dd', ['if=/dev/urandom', `of=${join(dir, 'gen', 'initrd.img')}`, 'bs=1M', 'count=16', 'status=none']);
  return join(dir, 'gen');
}

function status(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Asynchronous on purpose: the channel server runs in this process and must keep answering. */
function ctl(bus: string, args: string[]): Promise<string> {
  const child = spawn(process.execPath, [bin('agentctl'), '--bus', bus, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((ok, fail) => child.on('close', (code) => (code === 0 ? ok(out) : fail(new Error(`agentctl ${args.join(' ')}: ${out}`)))));
}

function run(cmd: string, args: string[]): Promise<void> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  return new Promise((ok, fail) => child.on('close', (code) => (code === 0 ? ok() : fail(new Error(`${cmd} failed`)))));
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { 'e2e-mb': { type: 'string', default: '512' }, 'stage-mb': { type: 'string', default: '1024' } } });
  const work = mkdtempSync('/var/tmp/liveup-bench-agent-');
  let daemon: ChildProcess | null = null;
  let busd: ChildProcess | null = null;
  try {
    process.stderr.write('preparing: keys, three generations, a channel, a private bus…\n');
    const k = await generateKey({ outDir: join(work, 'keys'), name: 'bench' });
    const keys = [await loadPrivateKey(k.privateKeyPath)];
    const repo = join(work, 'repo');
    const pub = (g: string) => publish({ repo, channel: 'stable', gendir: g, keys, indexTtlMs: 86400e3, manifestTtlMs: 86400e3 });
    await pub(gendir(join(work, 'g1'), 1, 'one'));
    const server = await serve({ root: repo, host: '127.0.0.1', port: 0 });
    const boot = join(work, 'boot');
    mkdirSync(join(boot, 'live'), { recursive: true });
    cpSync(join(repo, 'generations', '1'), join(boot, 'live', '1'), { recursive: true });
    const runDir = join(work, 'run');
    mkdirSync(runDir);
    writeFileSync(join(runDir, 'booted'), '1\n');
    const sock = join(work, 'bus');
    writeFileSync(join(work, 'bus.conf'), `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path=${sock}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>`);
    busd = spawn('dbus-daemon', [`--config-file=${join(work, 'bus.conf')}`, '--nofork', '--nopidfile', '--print-address=1'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const bus = await new Promise<string>((ok) => busd!.stdout!.once('data', (d: Buffer) => ok(d.toString().trim())));
    writeFileSync(join(work, 'agent.json'), JSON.stringify({
      channel: 'stable', mirrors: [server.url], keyring: k.publicKeyPath, schedule: '0 0 1 1 *', jitterSeconds: 0,
      bootDir: boot, stateDir: join(work, 'state'), dbus: bus, keep: 2,
      fetch: { deadlineSeconds: 3600, minBytesPerSecond: 0, retries: 1, backoffSeconds: 1 },
    }));
    const daemonArgs = ['--config', join(work, 'agent.json'), '--config-dir', join(work, 'agent.d'), '--run-dir', runDir];
    const env = { ...process.env, LIVEUP_LOG_LEVEL: 'warn' };
    /** Starts a daemon, waits until it answers, runs a check and returns its RSS once the heap settled. */
    const startAndCheck = async (argv: string[]): Promise<{ child: ChildProcess; idle: number }> => {
      const child = spawn(argv[0]!, [...argv.slice(1), ...daemonArgs], { stdio: ['ignore', 'ignore', 'inherit'], env });
      for (let i = 0; i < 100; i++) {
        if (spawnSync(process.execPath, [bin('agentctl'), '--bus', bus, 'status'], { stdio: 'ignore' }).status === 0) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      await ctl(bus, ['check']);
      await new Promise((r) => setTimeout(r, 2000)); // let the heap settle after the check
      return { child, idle: status(child.pid!, 'VmRSS') };
    };
    // Baseline: the same daemon under plain `node`, without the launcher's V8 flags.
    const plain = await startAndCheck([process.execPath, bin('liveup-agentd')]);
    plain.child.kill('SIGTERM');
    await new Promise((r) => plain.child.once('exit', r));
    // As shipped: the launcher itself, shebang flags included.
    const shipped = await startAndCheck([bin('liveup-agentd')]);
    daemon = shipped.child;
    const pid = daemon.pid!;
    const idle = shipped.idle;

    const e2eMb = Number(values['e2e-mb']);
    await pub(gendir(join(work, 'g2'), e2eMb, 'two'));
    const total = e2eMb + 8 + 16;
    execFileSync('cat', [join(repo, 'generations', '2', 'filesystem.squashfs')], { stdio: ['ignore', 'ignore', 'inherit'] }); // warm cache for both
    let t0 = process.hrtime.bigint();
    await ctl(bus, ['update']);
    const oursMs = Number(process.hrtime.bigint() - t0) / 1e6;
    t0 = process.hrtime.bigint();
    for (const f of ['filesystem.squashfs', 'vmlinuz', 'initrd.img']) {
      await run('curl', ['-sf', '-o', join(work, `curl-${f}`), `${server.url}generations/2/${f}`]);
      await run('sha512sum', [join(work, `curl-${f}`)]);
    }
    const baseMs = Number(process.hrtime.bigint() - t0) / 1e6;

    const stageMb = Number(values['stage-mb']);
    await pub(gendir(join(work, 'g3'), stageMb, 'three'));
    await ctl(bus, ['update']);
    const peak = status(pid, 'VmHWM');
    await server.close();
    const lines = [
      `bench/agent (liveup-agentd, real bus, liveup serve on 127.0.0.1)`,
      `  idle RSS after a check           ${idle.toFixed(0)} MB   (goal <= 65 MB; plain \`node\` without the launcher's flags: ${plain.idle.toFixed(0)} MB, ${(idle / plain.idle).toFixed(2)}x)`,
      `  peak RSS, staging ${stageMb} MiB       ${peak.toFixed(0)} MB   (goal <= 128 MB)`,
      `  update of ${total} MiB (fetch+verify+stage+menu)  ${(oursMs / 1000).toFixed(2)} s`,
      `  curl -o + sha512sum, same files  ${(baseMs / 1000).toFixed(2)} s`,
      `  ratio ours / (curl + sha512sum)  ${(oursMs / baseMs).toFixed(2)}x   (goal <= 1.0x)`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    daemon?.kill('SIGTERM');
    busd?.kill('SIGTERM');
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
