import { describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type BootMenuGeneration,
  type BootMenuModel,
  ENV_TRIES_LEFT,
  ENV_TRY_VERSION,
  MAX_TRIES,
  grubQuote,
  renderBootMenu,
  trialEnv,
} from '../../agent/src/core/bootmenu.js';
import { run } from '../../agent/src/adapters/exec.js';
import { isLiveupError } from '../../agent/src/channel/errors.js';
import { tmp } from '../helpers/tmp.js';

const gen = (version: number, state: BootMenuGeneration['state'], extra: Partial<BootMenuGeneration> = {}): BootMenuGeneration => ({
  version,
  name: `gen-${version}`,
  kernelVersion: '6.12.48+deb13-amd64',
  cmdline: 'boot=live components quiet',
  state,
  ...extra,
});

const base: BootMenuModel = {
  // Deliberately unordered: the renderer sorts newest first.
  generations: [gen(3, 'good'), gen(5, 'staged'), gen(4, 'failed'), gen(2, 'good')],
  defaultVersion: 3,
  tryVersion: 5,
  root: { kind: 'uuid', uuid: '1234-ABCD' },
  timeoutSeconds: 2,
  serial: true,
};

/** The body lines of each menuentry, keyed by its --id. */
function menuentries(text: string): Map<string, { title: string; body: string[] }> {
  const out = new Map<string, { title: string; body: string[] }>();
  const re = /^menuentry ('(?:[^']|'\\'')*') --id (\S+) [^\n]*\{\n([\s\S]*?)^\}/gm;
  for (const m of text.matchAll(re)) {
    const title = m[1]!.slice(1, -1).replace(/'\\''/g, "'");
    out.set(m[2]!, { title, body: m[3]!.trim().split('\n').map((l) => l.trim()) });
  }
  return out;
}

async function grubScriptCheck(text: string): Promise<void> {
  const f = join(await tmp(), 'grub.cfg');
  await writeFile(f, text);
  // Throws COMMAND_FAILED (with grub-script-check's message) on a syntax error.
  await run('grub-script-check', [f], { timeoutMs: 10_000 });
}

function expectCode(fn: () => unknown, code: 'INVALID_ARGUMENT', match: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(isLiveupError(e, code), String(e)).toBe(true);
    expect((e as Error).message).toMatch(match);
    return;
  }
  throw new Error('expected an error');
}

describe('renderBootMenu', () => {
  it('renders one entry per generation, newest first, with ids and the live parameters', async () => {
    const r = renderBootMenu(base);
    expect(r.entries.map((e) => e.version)).toEqual([5, 4, 3, 2]);
    expect(r.entries.map((e) => e.id)).toEqual(['liveup-5', 'liveup-4', 'liveup-3', 'liveup-2']);
    const parsed = menuentries(r.text);
    expect([...parsed.keys()]).toEqual(['liveup-5', 'liveup-4', 'liveup-3', 'liveup-2']);
    for (const e of r.entries) {
      const body = parsed.get(e.id)!.body;
      const linux = body.find((l) => l.startsWith('linux '))!;
      expect(linux.split(' ').slice(0, 2)).toEqual(['linux', `/live/${e.version}/vmlinuz`]);
      expect(linux).toContain('boot=live components quiet');
      expect(linux.endsWith(`live-media-path=/live/${e.version} liveup.generation=${e.version}`)).toBe(true);
      expect(body).toContain(`initrd /live/${e.version}/initrd.img`);
    }
    expect(parsed.get('liveup-4')!.title).toContain('[failed]');
    await grubScriptCheck(r.text);
  });

  it('defaults to the last good entry before grubenv is read, with good fallbacks by index', () => {
    const r = renderBootMenu(base);
    expect(r.defaultIndex).toBe(2); // 5, 4, [3], 2
    expect(r.fallbackIndexes).toEqual([2, 3]);
    expect(r.tryIndex).toBe(0);
    const lines = r.text.split('\n');
    const def = lines.indexOf('set default=2');
    const load = lines.findIndex((l) => l.trim().startsWith('load_env'));
    expect(def).toBeGreaterThan(-1);
    expect(def).toBeLessThan(load);
    expect(lines).toContain('set fallback="2 3"');
    // Whitelisted: a tampered grubenv cannot set root, prefix or default.
    expect(lines[load]!.trim()).toBe('load_env next_entry liveup_try_version liveup_tries_left');
    // Guarded like grub-mkconfig, so a missing grubenv prints no error.
    expect(lines[load - 1]).toBe('if [ -s "${prefix}/grubenv" ] ; then');
    // Values that load_env might not overwrite are cleared first.
    expect(lines.slice(def, load)).toEqual(expect.arrayContaining(['set next_entry=', 'set liveup_try_version=', 'set liveup_tries_left=']));
  });

  it('never uses a failed or non-good generation as default or fallback', () => {
    const r = renderBootMenu(base);
    const failed = r.entries.find((e) => e.version === 4)!.index;
    expect(r.defaultIndex).not.toBe(failed);
    expect(r.fallbackIndexes).not.toContain(failed);
    expect(r.fallbackIndexes).not.toContain(r.tryIndex);
    expectCode(() => renderBootMenu({ ...base, defaultVersion: 4 }), 'INVALID_ARGUMENT', /default generation 4 is failed/);
    expectCode(() => renderBootMenu({ ...base, defaultVersion: 5, tryVersion: null }), 'INVALID_ARGUMENT', /default generation 5 is staged/);
    expectCode(() => renderBootMenu({ ...base, tryVersion: 4 }), 'INVALID_ARGUMENT', /trial generation 4 is failed/);
    expectCode(() => renderBootMenu({ ...base, tryVersion: 3 }), 'INVALID_ARGUMENT', /already the default/);
    expectCode(() => renderBootMenu({ ...base, tryVersion: 9 }), 'INVALID_ARGUMENT', /trial generation 9 is not among/);
    expectCode(() => renderBootMenu({ ...base, defaultVersion: 7 }), 'INVALID_ARGUMENT', /default generation 7 is not among/);
    expectCode(() => renderBootMenu({ ...base, generations: [...base.generations, gen(3, 'good')] }), 'INVALID_ARGUMENT', /listed twice/);
  });

  it('one-shot next_entry follows grub-reboot: honoured once, cleared and saved, only for known entries', () => {
    const { text, entries } = renderBootMenu(base);
    expect(text).toContain('if [ "${next_entry}" ] ; then');
    expect(text).toContain('  set next_entry=\n  if save_env next_entry ; then');
    // Every value next_entry is compared with is an id or index we rendered; nothing else sets default.
    const compared = [...text.matchAll(/\[ "\$\{liveup_next\}" = "([^"]*)" \]/g)].map((m) => m[1]);
    expect(compared).toEqual(entries.flatMap((e) => [e.id, String(e.index)]));
    expect(text).not.toMatch(/set default="?\$/);
  });

  it('boot counting: the trial is tried while tries are left, each attempt saved first', () => {
    const { text, tryIndex } = renderBootMenu(base);
    expect(text).toContain(`elif [ "\${${ENV_TRY_VERSION}}" = "5" ] ; then`);
    for (let n = 1; n <= MAX_TRIES; n++) {
      expect(text).toContain(
        `[ "\${${ENV_TRIES_LEFT}}" = "${n}" ] ; then\n    set ${ENV_TRIES_LEFT}=${n - 1}\n    if save_env ${ENV_TRIES_LEFT} ; then set default=${tryIndex} ; fi`,
      );
    }
    // "0" and anything else fall through: default stays the last good entry.
    expect(text).not.toContain(`= "0" ] ; then\n    set ${ENV_TRIES_LEFT}`);
    expect(trialEnv(5, 3)).toEqual({ liveup_try_version: '5', liveup_tries_left: '3' });
    expect(() => trialEnv(5, 0)).toThrow(/1 to 9/);
    expect(() => trialEnv(5, MAX_TRIES + 1)).toThrow(/1 to 9/);
  });

  it('without a trial version, grubenv trial variables are ignored', async () => {
    const r = renderBootMenu({ ...base, tryVersion: null });
    expect(r.tryIndex).toBeNull();
    expect(r.text).not.toContain('elif [ "${liveup_try_version}"');
    expect(r.text).not.toContain(`save_env ${ENV_TRIES_LEFT}`);
    await grubScriptCheck(r.text);
  });

  it('quotes names safely and refuses kernel parameters it cannot pass faithfully', async () => {
    const nasty = gen(6, 'staged', {
      name: "it's $(evil); } menuentry x {\nnewline",
      kernelVersion: "6.1'$x",
      cmdline: 'boot=live  foo=$bar;baz {x} # live-media-path=/evil liveup.generation=1 ',
    });
    const r = renderBootMenu({ ...base, generations: [...base.generations, nasty], tryVersion: 6 });
    const e = menuentries(r.text).get('liveup-6')!;
    expect(e.title).toBe("liveup 6: it's $(evil); } menuentry x { newline (kernel 6.1'$x) [staged]");
    const linux = e.body.find((l) => l.startsWith('linux '))!;
    expect(linux).toBe("linux /live/6/vmlinuz boot=live 'foo=$bar;baz' '{x}' '#' live-media-path=/live/6 liveup.generation=6");
    await grubScriptCheck(r.text);
    expectCode(() => renderBootMenu({ ...base, generations: [gen(3, 'good', { cmdline: 'a="b c"' })], tryVersion: null }), 'INVALID_ARGUMENT', /quotes/);
    expectCode(() => renderBootMenu({ ...base, generations: [gen(3, 'good', { cmdline: 'a\u0000b' })], tryVersion: null }), 'INVALID_ARGUMENT', /control/);
    expect(grubQuote("a'b")).toBe("'a'\\''b'");
  });

  it.each([
    [{ kind: 'uuid', uuid: '0f3a1c2e-1111-4222-8333-444455556666' }, 'search --no-floppy --set=root --fs-uuid 0f3a1c2e-1111-4222-8333-444455556666'],
    [{ kind: 'label', label: "LIVE UP's" }, "search --no-floppy --set=root --label 'LIVE UP'\\''s'"],
    [{ kind: 'file', path: '/live/.liveup-medium' }, "search --no-floppy --set=root --file '/live/.liveup-medium'"],
  ] as const)('locates the boot partition by %o', async (root, line) => {
    const r = renderBootMenu({ ...base, root, serial: false });
    expect(r.text.split('\n')).toContain(line);
    expect(r.text).not.toContain('terminal_output serial');
    await grubScriptCheck(r.text);
  });

  it('rejects a root that would need guessing', () => {
    expectCode(() => renderBootMenu({ ...base, root: { kind: 'uuid', uuid: 'x; reboot' } }), 'INVALID_ARGUMENT', /not a UUID/);
    expectCode(() => renderBootMenu({ ...base, root: { kind: 'file', path: 'relative' } }), 'INVALID_ARGUMENT', /absolute/);
  });

  it('configures a serial console when asked', () => {
    const lines = renderBootMenu({ ...base, serial: { unit: 1, speed: 9600 } }).text.split('\n');
    expect(lines).toContain('serial --unit=1 --speed=9600 --word=8 --parity=no --stop=1');
    expect(lines).toContain('terminal_output serial console');
    expect(lines).toContain('set timeout=2');
  });

  it('renders a single good generation', async () => {
    const r = renderBootMenu({ ...base, generations: [gen(1, 'good')], defaultVersion: 1, tryVersion: null });
    expect(r.defaultIndex).toBe(0);
    expect(r.fallbackIndexes).toEqual([0]);
    await grubScriptCheck(r.text);
  });

  it("verify 'sha512': each entry loads only after hashsum checked its files, else returns so the fallback runs", async () => {
    const r = renderBootMenu({ ...base, verify: 'sha512' });
    await grubScriptCheck(r.text);
    for (const [id, e] of menuentries(r.text)) {
      const v = id.replace('liveup-', '');
      const check = e.body.indexOf(`if hashsum --hash sha512 --prefix /live/${v} --check /live/${v}/SHA512SUMS ; then`);
      const linux = e.body.findIndex((l) => l.startsWith(`linux /live/${v}/vmlinuz`));
      const orElse = e.body.indexOf('else');
      expect(check, id).toBeGreaterThanOrEqual(0);
      // The kernel and initrd are loaded inside the passing branch only; the other branch loads nothing.
      expect(linux).toBeGreaterThan(check);
      expect(orElse).toBeGreaterThan(linux);
      expect(e.body.slice(orElse).some((l) => /^(linux|initrd) /.test(l))).toBe(false);
      expect(e.body.slice(orElse).join('\n')).toMatch(new RegExp(`generation ${v} failed its SHA-512 check`));
    }
    // Off (the default) loads directly.
    expect(renderBootMenu(base).text).not.toMatch(/hashsum/);
    expectCode(() => renderBootMenu({ ...base, verify: 'md5' as 'sha512' }), 'INVALID_ARGUMENT', /verify must be one of off, sha512/);
  });

  it('a syntax error is caught by the grub-script-check helper (the check is real)', async () => {
    await expect(grubScriptCheck('if [ x ] ; then\n echo\n')).rejects.toThrow(/grub-script-check/);
  });
});
