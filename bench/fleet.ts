/**
 * bench/fleet: N simulated agents (distinct machine ids, one report each
 * per round; at least 2 rounds and 20,000 reports in all) posting to `liveup fleet serve`'s handler on loopback
 * with keep-alive connections, C at a time. Prints reports/s and latency
 * percentiles for the SQLite store and for PostgreSQL (a server started from
 * Debian's package for the run, fsync on, like SQLite's synchronous=FULL).
 * Baseline in the same run: the same
 * requests against an endpoint that answers 200 without storing, so the
 * ratio isolates the store's cost from HTTP's.
 *
 *   node dist/bench/fleet.js [--machines 1000,10000] [--concurrency 32] [--stores sqlite,postgres]
 */
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openFleetStore } from '../fleet/src/store.js';
import { serveFleet } from '../fleet/src/server.js';
import { startPostgres, type PgServer } from './pgserver.js';

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function post(url: URL, body: string, token: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), authorization: `Bearer ${token}` } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const report = (n: number, seq: number) => JSON.stringify({
  format: 1, machineId: n.toString(16).padStart(32, '0'), hostname: `m${n}`, channel: 'stable', seq, sentAt: new Date().toISOString(),
  agentVersion: '0.1.0', state: 'idle', bootedVersion: 7, runningVersion: 7, stagedVersion: null, lastGoodVersion: 7,
  lastResult: 'ok', lastError: null, health: 'good', uptimeSeconds: 1000 + n, decision: null,
});

async function drive(url: URL, token: string, machines: number, concurrency: number): Promise<{ perSecond: number; p50: number; p99: number }> {
  const jobs: [number, number][] = [];
  // Enough rounds for at least 20,000 reports, so a small fleet is measured at a steady state too.
  const rounds = Math.max(2, Math.ceil(20_000 / machines));
  for (let seq = 1; seq <= rounds; seq++) for (let n = 1; n <= machines; n++) jobs.push([n, seq]);
  const lat: number[] = [];
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < jobs.length) {
      const [n, seq] = jobs[next++]!;
      const s = process.hrtime.bigint();
      const status = await post(url, report(n, seq), token);
      if (status !== 200) throw new Error(`report answered ${status}`);
      lat.push(Number(process.hrtime.bigint() - s) / 1e6);
    }
  }));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  lat.sort((a, b) => a - b);
  return { perSecond: jobs.length / secs, p50: lat[Math.floor(lat.length * 0.5)]!, p99: lat[Math.floor(lat.length * 0.99)]! };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    machines: { type: 'string', default: '1000,10000' }, concurrency: { type: 'string', default: '32' }, stores: { type: 'string', default: 'sqlite,postgres' },
  } });
  const concurrency = Number(values.concurrency);
  const kinds = values.stores!.split(',') as ('sqlite' | 'postgres')[];
  const work = mkdtempSync('/var/tmp/liveup-bench-fleet-');
  let pg: PgServer | null = null;
  let dbs = 0;
  const db = async (kind: 'sqlite' | 'postgres'): Promise<string> => {
    if (kind === 'sqlite') return `sqlite:${join(work, `fleet-${++dbs}.db`)}`;
    pg ??= await startPostgres({ durable: true });
    return pg.database(`bench_${++dbs}`);
  };
  try {
    // Baseline: HTTP alone, same bodies, nothing stored.
    const bare = http.createServer((req, res) => { req.resume(); req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"ok":true}'); }); });
    await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
    const bareUrl = new URL(`http://127.0.0.1:${(bare.address() as { port: number }).port}/v1/reports`);
    const lines = [`bench/fleet (loopback, ${concurrency} concurrent keep-alive clients, at least 2 reports per machine and 20,000 in all, after a warm-up)`];
    for (const kind of kinds) {
      {
        // Warm-up: JIT, sockets and the database's first pages, so the first size measured is not the cold one.
        const store = await openFleetStore(await db(kind));
        const server = await serveFleet({ store, host: '127.0.0.1', port: 0 });
        await drive(new URL('v1/reports', server.url), await store.createToken('warm', 'agent'), 2000, concurrency);
        await drive(bareUrl, 'x', 2000, concurrency);
        await server.close();
        await store.close();
      }
      for (const m of values.machines!.split(',').map(Number)) {
        const store = await openFleetStore(await db(kind));
        const token = await store.createToken('bench', 'agent');
        const server = await serveFleet({ store, host: '127.0.0.1', port: 0 });
        const ours = await drive(new URL('v1/reports', server.url), token, m, concurrency);
        const base = await drive(bareUrl, token, m, concurrency);
        await server.close();
        await store.close();
        lines.push(
          `  ${String(m).padStart(6)} machines, ${kind.padEnd(8)} ${ours.perSecond.toFixed(0).padStart(6)} reports/s  p50 ${ours.p50.toFixed(1)} ms  p99 ${ours.p99.toFixed(1)} ms` +
          `   (HTTP alone ${base.perSecond.toFixed(0)} reports/s: ${(ours.perSecond / base.perSecond).toFixed(2)}x; goal >= 5000/s, p99 < 50 ms)`,
        );
      }
    }
    bare.close();
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    agent.destroy();
    if (pg) await (pg as PgServer).stop();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
