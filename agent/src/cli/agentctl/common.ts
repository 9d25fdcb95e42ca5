/** What every agentctl verb shares: the --bus option, a client per run, and output helpers. */
import { LiveupError } from '../../channel/errors.js';
import { connectAgent, type AgentClient } from '../../dbus/client.js';
import type { OptionSpec, Values } from '../framework.js';

export const BUS_OPTION: Record<string, OptionSpec> = {
  bus: {
    type: 'string',
    description: 'bus of liveup-agentd: system, session or a D-Bus address',
    default: 'system',
    valueName: 'system|session|ADDRESS',
  },
};

/** Connect for one verb and always disconnect, so the process can exit. */
export async function withAgent<T>(values: Values, fn: (c: AgentClient) => Promise<T>): Promise<T> {
  const bus = typeof values.bus === 'string' && values.bus !== '' ? values.bus : 'system';
  const client = await connectAgent({ bus });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

export function parseVersion(s: string, what = 'VERSION'): number {
  if (!/^\d+$/.test(s) || Number(s) < 1 || !Number.isSafeInteger(Number(s))) {
    throw new LiveupError('INVALID_ARGUMENT', `${what} must be a generation version (a whole number ≥ 1), got "${s}"`);
  }
  return Number(s);
}

/** `2030-01-02T03:04:05.000Z` → `2030-01-02 03:04 UTC`; "never" for null. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return 'never';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

/** Left-aligned columns; the last column is not padded. */
export function table(rows: readonly (readonly string[])[]): string[] {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => { widths[i] = Math.max(widths[i] ?? 0, c.length); });
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}
