/**
 * The fleet dashboard as a person sees it, in headless Chromium (Debian's
 * package, driven by playwright-core): seeded machines, a stale one, a failed
 * boot check, a paused rollout; filtering; a new report shows up without a
 * reload. The screenshot is kept in test-artifacts/dashboard.png.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { tmp } from '../helpers/tmp.js';
import { openFleetStore } from '../../fleet/src/store.js';
import { serveFleet } from '../../fleet/src/server.js';
import { postJson } from '../../agent/src/adapters/fleet.js';
import { parseReport, type FleetReport } from '../../fleet/src/report.js';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanups.length) await Promise.resolve(cleanups.pop()!()).catch(() => undefined);
});

const ID = (n: number) => n.toString(16).padStart(32, '0');
const body = (n: number, o: Record<string, unknown> = {}) => ({
  format: 1, machineId: ID(n), hostname: `web-${n}`, channel: 'stable', seq: 1, sentAt: new Date().toISOString(), agentVersion: '0.1.0',
  state: 'idle', bootedVersion: 4, runningVersion: 4, stagedVersion: null, lastGoodVersion: 4, lastResult: 'ok', lastError: null,
  health: 'good', uptimeSeconds: 100, decision: null, failedVersion: null, ...o,
});
/** Seeded through the endpoint's own parser, as a posted report would be. */
const report = (n: number, o: Record<string, unknown> = {}): FleetReport => parseReport(JSON.stringify(body(n, o)));

describe('the fleet dashboard in Chromium', () => {
  it('shows machines, stale ones, failures, versions and rollout progress; filters; updates without a reload', async () => {
    const dir = await tmp();
    let clock = new Date(Date.now() - 10 * 3600e3); // the first machine was last heard from 10 hours ago
    const store = await openFleetStore(`sqlite:${join(dir, 'fleet.db')}`, () => clock);
    cleanups.push(() => store.close());
    await store.saveReports([report(1, { hostname: 'db-1', channel: 'beta' })]);
    clock = new Date();
    await store.saveReports([
      report(2, { bootedVersion: 5, runningVersion: 5, lastGoodVersion: 5 }),
      report(3, { bootedVersion: 5, runningVersion: 5, health: 'failed', lastResult: 'BOOT_CHECK_FAILED', lastError: 'unit nginx.service failed' }),
      report(4),
      report(5, { stagedVersion: 5, state: 'staged' }),
    ]);
    await store.setRollout('stable', { version: 5, percent: 25 });
    await store.setRollout('stable', { paused: true, reason: 'paused automatically: 1 of 2 machines failed the boot check of 5' });
    const admin = await store.createToken('admin', 'admin');
    const machines = await store.createToken('machines', 'agent');
    const server = await serveFleet({ store, host: '127.0.0.1', port: 0 });
    cleanups.push(() => server.close());

    const browser: Browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
    cleanups.push(() => browser.close());
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(`${server.url}#token=${admin}&poll=1`);

    await expect.poll(() => page.locator('#rows tr').count()).toBe(5);
    const summary = await page.locator('#summary').innerText();
    expect(summary).toMatch(/5\s+machines/);
    expect(summary).toMatch(/1\s+stale/);
    expect(summary).toMatch(/1\s+with failures/);
    const staleRow = page.locator('#rows tr.stale');
    expect(await staleRow.innerText()).toMatch(/db-1[\s\S]*\(stale\)/);
    expect(await page.locator('#failures').innerText()).toMatch(/web-3: BOOT_CHECK_FAILED unit nginx\.service failed/);
    const versions = await page.locator('#versions').innerText();
    expect(versions).toMatch(/stable 4: 2/);
    expect(versions).toMatch(/stable 5: 2/);
    expect(versions).toMatch(/beta 4: 1/);
    const rollout = await page.locator('#rollouts').innerText();
    expect(rollout).toMatch(/stable: version 5\s+2 of 4 machines \(50%\), target 25%\s+PAUSED: paused automatically: 1 of 2 machines failed/);
    expect(await page.locator('#rows tr', { hasText: 'web-3' }).locator('td.bad').innerText()).toBe('failed');

    // Filter and search: by hostname, then by state.
    await page.fill('#filter', 'web-5');
    await expect.poll(() => page.locator('#rows tr').count()).toBe(1);
    expect(await page.locator('#rows').innerText()).toMatch(/web-5[\s\S]*staged/);
    await page.fill('#filter', '');

    // A new machine reports: the page shows it on its next poll, without a reload.
    const posted = await postJson(`${server.url}v1/reports`, body(6, { hostname: 'web-6', bootedVersion: 5, runningVersion: 5 }), { authorization: `Bearer ${machines}` });
    expect(posted.status).toBe(200);
    await expect.poll(() => page.locator('#rows tr').count(), { timeout: 10_000 }).toBe(6);
    expect(await page.locator('#rollouts').innerText()).toMatch(/3 of 5 machines \(60%\)/);
    const artifacts = join(process.cwd(), 'test-artifacts');
    await mkdir(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });

    // An agent token cannot read the fleet: the page says so instead of showing an empty fleet.
    const other = await browser.newPage();
    await other.goto(`${server.url}#token=${machines}`);
    await expect.poll(() => other.locator('#error').innerText()).toMatch(/cannot load: token "machines" is an agent token/);
  });
});
