/**
 * The `liveup fleet …` commands: `serve` (the endpoint), `token` (its bearer
 * tokens) and `rollout` (the endpoint's rollout control). They work on the
 * store directly (`--db`), like the endpoint itself, so an administrator on
 * the endpoint's host needs no token to manage it.
 */
import { LiveupError } from '../../agent/src/channel/errors.js';
import { EXIT, optInt, optString, requireString, stringList, type Command, type Values } from '../../agent/src/cli/framework.js';
import { serveFleet } from './server.js';
import { openFleetStore as open, TOKEN_ROLES, type FleetStore, type TokenRole } from './store.js';
import type { FleetRollout, RolloutChange } from './rollout.js';

const DB_OPTION = { db: { type: 'string' as const, description: 'fleet database: sqlite:PATH or postgres://USER@HOST/DB', valueName: 'sqlite:PATH|postgres://…' } };

const openFleetStore = (values: Values): Promise<FleetStore> => open(requireString(values, 'db'));

async function withStore<T>(values: Values, fn: (s: FleetStore) => Promise<T>): Promise<T> {
  const store = await openFleetStore(values);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const fleetServe: Command = {
  path: ['fleet', 'serve'],
  summary: 'run the fleet endpoint: agent reports, FleetLock reboot slots, rollout control, the dashboard',
  usage: '--db sqlite:PATH|postgres://… [--listen ADDR:PORT] [--slots N] [--group-slots GROUP=N]…',
  description:
    'API (bearer token from `liveup fleet token create`): POST /v1/reports, GET /v1/machines, GET /v1/machines/ID,\n' +
    'POST /v1/pre-reboot and /v1/steady-state (FleetLock), GET|POST /v1/rollouts/CHANNEL. The dashboard is at / —\n' +
    'open it as /#token=ADMIN-TOKEN. Put TLS in front (nginx, see docs/fleet.md) for anything but loopback.',
  options: {
    ...DB_OPTION,
    listen: { type: 'string', description: 'address and port', default: '127.0.0.1:8443', valueName: 'ADDR:PORT' },
    slots: { type: 'string', description: 'reboot slots per FleetLock group [default: 1]', valueName: 'N' },
    'group-slots': { type: 'string', multiple: true, description: 'slots for one group, e.g. web=3', valueName: 'GROUP=N' },
  },
  async run({ values, io, json }) {
    const listen = optString(values, 'listen') ?? '127.0.0.1:8443';
    const m = /^(.*):(\d+)$/.exec(listen);
    if (!m) throw new LiveupError('INVALID_ARGUMENT', `--listen ${listen}: expected ADDR:PORT`);
    const slots: Record<string, number> = { default: optInt(values, 'slots', { min: 1 }) ?? 1 };
    for (const g of stringList(values, 'group-slots')) {
      const gm = /^([A-Za-z0-9._-]+)=(\d+)$/.exec(g);
      if (!gm || Number(gm[2]) < 1) throw new LiveupError('INVALID_ARGUMENT', `--group-slots ${g}: expected GROUP=N with N >= 1`);
      slots[gm[1]!] = Number(gm[2]);
    }
    const store = await openFleetStore(values);
    const server = await serveFleet({ store, host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]), slots, log: (l) => io.err(l) })
      .catch(async (e: unknown) => { await store.close(); throw e; });
    io.out(json ? JSON.stringify({ ok: true, url: server.url, store: store.kind }) : `fleet endpoint at ${server.url} (${store.kind}; dashboard: ${server.url}#token=…)`);
    await new Promise<void>((resolve) => {
      const stop = () => void server.close().then(() => store.close()).then(resolve);
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    return EXIT.OK;
  },
};

const fleetToken: Command = {
  path: ['fleet', 'token'],
  summary: 'manage the fleet endpoint\'s bearer tokens: create NAME [--role agent|admin] | revoke NAME | list',
  usage: 'create NAME [--role agent|admin] | revoke NAME | list  --db sqlite:PATH|postgres://…',
  description:
    'create prints the new token once (only its SHA-256 is stored). An agent token (the default) posts reports,\n' +
    'takes FleetLock slots and reads its channel\'s rollout: give it to machines with `agentctl enroll`. An admin\n' +
    'token also reads the inventory (the dashboard) and changes rollouts.',
  options: { ...DB_OPTION, role: { type: 'string', description: 'agent or admin [default: agent]', valueName: 'ROLE' } },
  positionals: { min: 1, max: 2 },
  async run({ values, positionals, io, json }) {
    const [verb, name] = positionals;
    if (!['create', 'revoke', 'list'].includes(verb!) || (verb !== 'list' && !name)) throw new LiveupError('INVALID_ARGUMENT', 'usage: liveup fleet token create NAME [--role agent|admin] | revoke NAME | list');
    const role = (optString(values, 'role') ?? 'agent') as TokenRole;
    if (!TOKEN_ROLES.includes(role)) throw new LiveupError('INVALID_ARGUMENT', `--role ${role}: expected agent or admin`);
    return withStore(values, async (store) => {
      if (verb === 'list') {
        const t = await store.tokens();
        if (json) io.out(JSON.stringify(t));
        else for (const x of t) io.out(`${x.name}  ${x.role}  created ${x.createdAt}${x.revokedAt ? `  revoked ${x.revokedAt}` : ''}`);
      } else if (verb === 'create') {
        const secret = await store.createToken(name!, role);
        io.out(json ? JSON.stringify({ ok: true, name, role, token: secret }) : secret);
      } else {
        await store.revokeToken(name!);
        io.out(json ? JSON.stringify({ ok: true, name, revoked: true }) : `revoked ${name}`);
      }
      return EXIT.OK;
    });
  },
};

/** `20%`, `0.2` or `off`. */
function parseRatio(s: string): number {
  if (s === 'off') return 0;
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(s);
  const v = m ? Number(m[1]) / (m[2] ? 100 : 1) : NaN;
  if (!(v >= 0 && v <= 1)) throw new LiveupError('INVALID_ARGUMENT', `--auto-pause ${s}: expected a share like 20% (or 0.2), or off`);
  return v;
}

function describe(r: FleetRollout): string {
  return `${r.channel}: version ${r.version} to ${r.percent}% of machines${r.paused ? `, PAUSED (${r.reason ?? 'by hand'})` : ''}; ` +
    `auto-pause ${r.autoPauseRatio > 0 ? `at ${Math.round(r.autoPauseRatio * 100)}% failed boot checks once ${r.autoPauseMin} machines tried it` : 'off'}`;
}

const fleetRollout: Command = {
  path: ['fleet', 'rollout'],
  summary: 'the endpoint\'s rollout control: CHANNEL --percent N | --pause | --resume (or show)',
  usage: '[CHANNEL] --db sqlite:PATH|postgres://… [--version V] [--percent N | --pause | --resume] [--auto-pause 20%|off] [--auto-pause-min N]',
  description:
    'Caps how far a channel\'s rollout goes, on top of the signed index\'s own rollout (liveup rollout): a machine\n' +
    'takes the version when its stable bucket is under the smaller of the two shares, and never while paused here.\n' +
    'Agents read it before taking a version. The endpoint pauses a rollout by itself when the share of machines\n' +
    'that failed the version\'s boot check passes --auto-pause (default 20%, once --auto-pause-min machines, default\n' +
    '5, tried it). Without a change, shows the channel\'s rollout (or every channel\'s).',
  options: {
    ...DB_OPTION,
    version: { type: 'string', description: 'the version being rolled out (needed the first time, or to start a new one)', valueName: 'V' },
    percent: { type: 'string', description: 'share of machines, 0 to 100', valueName: 'N' },
    pause: { type: 'boolean', description: 'hold every machine that has not taken the version yet' },
    resume: { type: 'boolean', description: 'lift a pause (by hand or automatic)' },
    'auto-pause': { type: 'string', description: 'pause when this share of the wave failed its boot check, or off', valueName: 'SHARE' },
    'auto-pause-min': { type: 'string', description: 'machines that must have tried the version before auto-pause counts', valueName: 'N' },
  },
  positionals: { min: 0, max: 1 },
  async run({ values, positionals, io, json }) {
    const channel = positionals[0];
    const change: { -readonly [K in keyof RolloutChange]: RolloutChange[K] } = {};
    const version = optInt(values, 'version', { min: 1 });
    if (version !== undefined) change.version = version;
    const p = optString(values, 'percent');
    if (p !== undefined) {
      const n = /^\d+(\.\d+)?$/.test(p) ? Number(p) : NaN;
      if (!(n >= 0 && n <= 100)) throw new LiveupError('INVALID_ARGUMENT', `--percent ${p}: expected a number from 0 to 100`);
      change.percent = n;
    }
    if (values.pause === true && values.resume === true) throw new LiveupError('INVALID_ARGUMENT', 'give --pause or --resume, not both');
    if (values.pause === true) Object.assign(change, { paused: true, reason: 'paused by hand (liveup fleet rollout --pause)' });
    if (values.resume === true) change.paused = false;
    const ap = optString(values, 'auto-pause');
    if (ap !== undefined) change.autoPauseRatio = parseRatio(ap);
    const apMin = optInt(values, 'auto-pause-min', { min: 1 });
    if (apMin !== undefined) change.autoPauseMin = apMin;
    const changing = Object.keys(change).length > 0;
    if (changing && !channel) throw new LiveupError('INVALID_ARGUMENT', 'name the CHANNEL to change');
    return withStore(values, async (store) => {
      if (!changing) {
        const rows = channel ? [await store.rollout(channel)].filter((r): r is FleetRollout => r !== null) : await store.rollouts();
        if (channel && rows.length === 0) throw new LiveupError('NOT_FOUND', `channel "${channel}" has no rollout control; start one with --version V --percent N`);
        if (json) io.out(JSON.stringify(channel ? rows[0] : rows));
        else if (rows.length === 0) io.out('no rollout control on any channel');
        else for (const r of rows) io.out(describe(r));
        return EXIT.OK;
      }
      const r = await store.setRollout(channel!, change);
      io.out(json ? JSON.stringify({ ok: true, rollout: r }) : describe(r));
      return EXIT.OK;
    });
  },
};

export const FLEET_COMMANDS: Command[] = [fleetServe, fleetToken, fleetRollout];
