import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GRUBENV_SIZE, createGrubEnv, parseEnvList } from '../../agent/src/adapters/grubenv.js';
import { run, type Runner } from '../../agent/src/adapters/exec.js';
import { type ErrorCode, isLiveupError } from '../../agent/src/channel/errors.js';
import { trialEnv } from '../../agent/src/core/bootmenu.js';
import { tmp } from '../helpers/tmp.js';

const env = createGrubEnv();

async function rejectsWith(p: Promise<unknown>, code: ErrorCode, match?: RegExp): Promise<void> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(isLiveupError(e, code), `expected ${code}, got ${String(e)}`).toBe(true);
  if (match) expect((e as Error).message).toMatch(match);
}

async function setup(): Promise<{ dir: string; file: string }> {
  const dir = await tmp();
  return { dir, file: join(dir, 'grubenv') };
}

describe('grubenv adapter (real grub-editenv)', () => {
  it('creates, sets, reads and unsets', async () => {
    const { file } = await setup();
    await env.create(file);
    expect((await stat(file)).size).toBe(GRUBENV_SIZE);
    expect(await env.read(file)).toEqual({});
    await env.set(file, { ...trialEnv(7, 3), note: 'a b=c' });
    expect(await env.read(file)).toEqual({ liveup_try_version: '7', liveup_tries_left: '3', note: 'a b=c' });
    await env.unset(file, ['liveup_try_version', 'absent']);
    expect(await env.read(file)).toEqual({ liveup_tries_left: '3', note: 'a b=c' });
    await env.setNextEntry(file, 'liveup-7');
    expect((await env.read(file)).next_entry).toBe('liveup-7');
    // grub-editenv itself agrees with what we read.
    expect(parseEnvList((await run('grub-editenv', [file, 'list'])).stdout).next_entry).toBe('liveup-7');
  });

  it('reads the block itself exactly as `grub-editenv list` does (escapes, =, unicode, padding)', async () => {
    const { file } = await setup();
    // Written by grub-editenv directly, with the values our validator would refuse too (backslashes, '#').
    await run('grub-editenv', [file, 'create']);
    await run('grub-editenv', [file, 'set', 'a=x\\y', 'b=c=d', 'c=#not a comment', 'd=été', 'e=', 'f=\\\\n']);
    const theirs = parseEnvList((await run('grub-editenv', [file, 'list'])).stdout);
    expect(Object.keys(theirs)).toHaveLength(6);
    expect(await env.read(file)).toEqual(theirs);
  });

  it('set creates a missing block; read and unset never create one', async () => {
    const { dir, file } = await setup();
    await rejectsWith(env.read(file), 'NOT_FOUND', /does not exist/);
    await env.unset(file, ['x']);
    expect(await readdir(dir)).toEqual([]);
    await env.set(file, { x: '1' });
    expect(await env.read(file)).toEqual({ x: '1' });
  });

  it('replaces the block by rename: a new inode, 1024 bytes, no temp files left', async () => {
    const { dir, file } = await setup();
    await env.create(file);
    const before = await stat(file);
    await env.set(file, { a: '1' });
    const after = await stat(file);
    expect(after.ino).not.toBe(before.ino);
    expect(after.size).toBe(GRUBENV_SIZE);
    expect((await readFile(file, 'latin1')).startsWith('# GRUB Environment Block\n')).toBe(true);
    expect(await readdir(dir)).toEqual(['grubenv']);
  });

  it('a failure mid-edit leaves the old block untouched and no temp file', async () => {
    const { dir, file } = await setup();
    await env.set(file, { keep: 'me' });
    const original = await readFile(file);
    // Edit the copy for real, then fail as a crash before the rename would.
    const crashing: Runner = async (cmd, args, opts) => {
      const r = await run(cmd, args, opts);
      if (args[1] === 'set') throw new Error('simulated crash after editing the copy');
      return r;
    };
    await expect(createGrubEnv({ runner: crashing }).set(file, { keep: 'changed' })).rejects.toThrow(/simulated crash/);
    expect(await readFile(file)).toEqual(original);
    expect(await readdir(dir)).toEqual(['grubenv']);
  });

  it('variables that do not fit are refused and leave the block as it was', async () => {
    const { file } = await setup();
    await env.set(file, { small: '1' });
    await rejectsWith(env.set(file, { big: 'x'.repeat(2000) }), 'INVALID_ARGUMENT', /do not fit/);
    expect(await env.read(file)).toEqual({ small: '1' });
  });

  it('a corrupted block gives BOOT_ENV_INVALID on read and write; create recovers', async () => {
    const { file } = await setup();
    await writeFile(file, randomBytes(GRUBENV_SIZE));
    await rejectsWith(env.read(file), 'BOOT_ENV_INVALID', /not a GRUB environment block.*recreate/);
    await rejectsWith(env.set(file, { a: '1' }), 'BOOT_ENV_INVALID');
    await writeFile(file, randomBytes(500));
    await rejectsWith(env.read(file), 'BOOT_ENV_INVALID', /500 bytes/);
    // Right size and header but a damaged body: GRUB (and grub-editenv) accept it, so
    // damage shows as odd values, never as an error; grub.cfg only trusts values it wrote.
    const body = Buffer.alloc(GRUBENV_SIZE, '#');
    body.write('# GRUB Environment Block\nfoo=bar\n\u0001garbage\nliveup_tries_left=\u00ff\n', 'latin1');
    await writeFile(file, body);
    expect(await env.read(file)).toEqual({ foo: 'bar', liveup_tries_left: '\ufffd' });
    await env.create(file);
    expect(await env.read(file)).toEqual({});
    await env.set(file, { a: '1' });
    expect(await env.read(file)).toEqual({ a: '1' });
  });

  it('validates names and values before touching the file', async () => {
    const { dir, file } = await setup();
    await rejectsWith(env.set(file, { 'bad name': '1' }), 'INVALID_ARGUMENT', /variable name/);
    await rejectsWith(env.set(file, { ok: 'two\nlines' }), 'INVALID_ARGUMENT', /newline/);
    await rejectsWith(env.unset(file, ['a=b']), 'INVALID_ARGUMENT');
    await rejectsWith(env.setNextEntry(file, ''), 'INVALID_ARGUMENT');
    expect(await readdir(dir)).toEqual([]);
  });

  it('a missing grub-editenv binary is a COMMAND_FAILED naming it', async () => {
    const { file } = await setup();
    await rejectsWith(createGrubEnv({ editenv: '/nonexistent/grub-editenv' }).create(file), 'COMMAND_FAILED', /nonexistent\/grub-editenv.*could not be started/);
  });
});
