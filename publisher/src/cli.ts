/** `liveup`: the publisher-side command line. One entry per verb; the work lives in the modules. */
import { readFile } from 'node:fs/promises';
import { LiveupError } from '../../agent/src/channel/errors.js';
import { loadKeyring, loadPrivateKey } from '../../agent/src/channel/signature.js';
import { openSource } from '../../agent/src/channel/source.js';
import {
  EXIT, optInt, optString, parseDuration, requireString, runCli, stringList, type Command,
} from '../../agent/src/cli/framework.js';
import { build, DEFAULT_CACHE } from './factory/build.js';
import { writeIso } from './iso.js';
import { checkedGeneration, makeDisk } from './disk.js';
import { SERIAL_CONSOLES } from './generation.js';
import { GRUB_VERIFY_MODES, type GrubVerify } from '../../agent/src/core/bootmenu.js';
import { existsSync } from 'node:fs';
import { FLEET_COMMANDS } from '../../fleet/src/cli.js';
import { derive, DEFAULT_REBOOT_PACKAGES } from './factory/derive.js';
import { KEY_TYPES, generateKey, type KeyType } from './key.js';
import { loadBootKey, loadBootPublicKey } from './bootsign.js';
import { changeRollout, publish, type RolloutChange } from './publish.js';
import { listChannels } from './repo.js';
import { serve } from './serve.js';
import { verifyRepo } from './verify-repo.js';
import { defaultJobs } from './mirror/hashpool.js';
import { ProgressLine, formatBytes } from './mirror/progress.js';
import { loadMirrorConfig, syncMirror } from './mirror/sync.js';
import { resolveMirrorRoot, verifyMirror, type MirrorProblem } from './mirror/verify.js';

const keyGenerate: Command = {
  path: ['key', 'generate'],
  summary: 'generate an OpenPGP signing key pair (Ed25519 for a channel, RSA for a boot key)',
  usage: '--out DIR [--name NAME] [--type ed25519|rsa] [--email ADDR] [--force]',
  description:
    'Writes DIR/NAME.key.asc (private, mode 0600) and DIR/NAME.pub.asc (the public key agents pin).\n' +
    '--type rsa makes a boot key (3072-bit RSA) for `liveup publish --boot-key` and `liveup disk --boot-pubkey`:\n' +
    'GRUB\'s signature check reads RSA keys only.',
  options: {
    type: { type: 'string', description: 'ed25519 (channel signing) or rsa (boot key for GRUB) [default: ed25519]', valueName: 'TYPE' },
    out: { type: 'string', description: 'directory for the key files', valueName: 'DIR' },
    name: { type: 'string', description: 'key name, used in file names and the user ID', default: 'liveup' },
    email: { type: 'string', description: 'e-mail address for the user ID' },
    force: { type: 'boolean', description: 'overwrite existing key files' },
  },
  async run({ values, io, json }) {
    const type = optString(values, 'type') ?? 'ed25519';
    if (!(KEY_TYPES as readonly string[]).includes(type)) throw new LiveupError('INVALID_ARGUMENT', `--type must be ${KEY_TYPES.join(' or ')}, got ${JSON.stringify(type)}`);
    const k = await generateKey({
      type: type as KeyType,
      outDir: requireString(values, 'out'),
      name: optString(values, 'name') ?? 'liveup',
      email: optString(values, 'email'),
      force: values.force === true,
    });
    if (json) io.out(JSON.stringify({ ok: true, ...k }));
    else {
      io.out(`fingerprint ${k.fingerprint}`);
      io.out(`private key ${k.privateKeyPath} (mode 0600: keep it off the machines you update)`);
      io.out(`public key  ${k.publicKeyPath} (${type === 'rsa' ? 'the boot key: build it into GRUB with `liveup disk --boot-pubkey`' : 'pin this on every agent'})`);
    }
    return EXIT.OK;
  },
};

const publishCmd: Command = {
  path: ['publish'],
  summary: 'sign a generation directory into a channel repository',
  usage: '--repo REPO --channel NAME --key PRIVATE.asc [--boot-key RSA.key.asc] [--expires 30d] [--version N] GENDIR',
  description:
    'GENDIR holds filesystem.squashfs, vmlinuz and initrd.img, and optionally packages.json and\n' +
    'generation.json (name, kernel, parent, package changes with their .deb files) as written by\n' +
    '`liveup build` / `liveup derive`. The generation lands in REPO/generations/<version>/, then the\n' +
    'channel index is re-signed; readers never see a half-published state.\n' +
    'With --boot-key (an RSA key: `liveup key generate --type rsa`) the generation also gets boot.cfg and GRUB\n' +
    'signatures (boot.cfg.sig, vmlinuz.sig, initrd.img.sig) for disks made with `liveup disk --grub-verify signature`.\n' +
    'Agents older than signed boot refuse such a manifest (unknown artifact roles).',
  positionals: { min: 1, max: 1 },
  options: {
    repo: { type: 'string', description: 'channel repository directory', valueName: 'REPO' },
    channel: { type: 'string', description: 'channel name', valueName: 'NAME' },
    key: { type: 'string', multiple: true, description: 'armored private signing key (repeat for threshold signing)', valueName: 'PRIVATE.asc' },
    'boot-key': { type: 'string', description: 'armored private RSA boot key: sign boot.cfg, kernel and initrd for GRUB (signed boot)', valueName: 'RSA.key.asc' },
    expires: { type: 'string', description: 'how long the channel index stays valid', default: '30d', valueName: 'DURATION' },
    'manifest-expires': { type: 'string', description: 'how long the manifest stays valid', default: '365d', valueName: 'DURATION' },
    version: { type: 'string', description: 'version number (default: highest in the repository + 1)', valueName: 'N' },
    name: { type: 'string', description: 'generation name (default: from generation.json, else CHANNEL-VERSION)' },
    arch: { type: 'string', description: 'Debian architecture (default: from generation.json, else this host)' },
    cmdline: { type: 'string', description: 'kernel command line (default: from generation.json, else "boot=live components")' },
    rollout: { type: 'string', description: 'roll out in waves: a share of machines ("10%") or all of them over a duration ("48h")', valueName: 'PERCENT%|DURATION' },
  },
  async run({ values, positionals, io, json }) {
    const keyPaths = stringList(values, 'key');
    const rolloutText = optString(values, 'rollout');
    let rollout: { percent: number } | { durationSeconds: number } | undefined;
    if (rolloutText !== undefined) {
      const pm = /^(\d{1,3})%$/.exec(rolloutText);
      if (pm) {
        if (Number(pm[1]) > 100) throw new LiveupError('INVALID_ARGUMENT', `--rollout ${rolloutText}: a share is 0% to 100%`);
        rollout = { percent: Number(pm[1]) };
      } else rollout = { durationSeconds: Math.round(parseDuration(rolloutText, '--rollout') / 1000) };
    }
    if (keyPaths.length === 0) throw new LiveupError('INVALID_ARGUMENT', '--key is required');
    const keys = await Promise.all(keyPaths.map((p) => loadPrivateKey(p)));
    const bootKeyPath = optString(values, 'boot-key');
    const bootKey = bootKeyPath === undefined ? undefined : await loadBootKey(bootKeyPath);
    const r = await publish({
      ...(bootKey ? { bootKey } : {}),
      repo: requireString(values, 'repo'),
      channel: requireString(values, 'channel'),
      gendir: positionals[0]!,
      keys,
      indexTtlMs: parseDuration(optString(values, 'expires') ?? '30d', '--expires'),
      manifestTtlMs: parseDuration(optString(values, 'manifest-expires') ?? '365d', '--manifest-expires'),
      version: optInt(values, 'version', { min: 1 }),
      name: optString(values, 'name'),
      architecture: optString(values, 'arch'),
      cmdline: optString(values, 'cmdline'),
      ...(rollout ? { rollout } : {}),
      log: json ? undefined : (l) => io.out(l),
    });
    if (json) io.out(JSON.stringify({ ok: true, version: r.version, channel: r.channel, sequence: r.sequence, manifest: r.manifestPath }));
    else io.out(`published version ${r.version} (${r.manifest.name}) to channel ${r.channel}, index sequence ${r.sequence}`);
    return EXIT.OK;
  },
};

const rolloutCmd: Command = {
  path: ['rollout'],
  summary: 'steer the rollout of a channel\'s newest version: --percent N | --pause | --resume | --done',
  usage: '--repo REPO --channel NAME --key PRIVATE.asc (--percent N | --pause | --resume | --done)',
  description:
    'Re-signs the channel index. A machine takes the version once the share passes its stable bucket (a hash of\n' +
    'its machine id and the version), so the same machines go first however often this runs. --pause freezes the\n' +
    'share reached (a timed rollout becomes that fixed share); --resume lifts the pause; --done lets every machine take it.',
  options: {
    repo: { type: 'string', description: 'channel repository directory', valueName: 'REPO' },
    channel: { type: 'string', description: 'channel name', valueName: 'NAME' },
    key: { type: 'string', multiple: true, description: 'armored private signing key', valueName: 'PRIVATE.asc' },
    percent: { type: 'string', description: 'share of machines, 0 to 100', valueName: 'N' },
    pause: { type: 'boolean', description: 'freeze the rollout where it is' },
    resume: { type: 'boolean', description: 'continue a paused rollout' },
    done: { type: 'boolean', description: 'end the rollout: every machine takes the version' },
    expires: { type: 'string', description: 'how long the re-signed index stays valid', default: '30d', valueName: 'DURATION' },
  },
  async run({ values, io, json }) {
    const keyPaths = stringList(values, 'key');
    if (keyPaths.length === 0) throw new LiveupError('INVALID_ARGUMENT', '--key is required');
    const percent = optInt(values, 'percent', { min: 0 });
    const chosen = [percent !== undefined, values.pause === true, values.resume === true, values.done === true].filter(Boolean).length;
    if (chosen !== 1) throw new LiveupError('INVALID_ARGUMENT', 'give exactly one of --percent N, --pause, --resume, --done');
    const change: RolloutChange = percent !== undefined ? { percent } : values.pause ? { pause: true } : values.resume ? { resume: true } : { done: true };
    const index = await changeRollout({
      repo: requireString(values, 'repo'), channel: requireString(values, 'channel'),
      keys: await Promise.all(keyPaths.map((p) => loadPrivateKey(p))), change,
      indexTtlMs: parseDuration(optString(values, 'expires') ?? '30d', '--expires'),
    });
    const r = index.rollout;
    if (json) io.out(JSON.stringify({ ok: true, sequence: index.sequence, rollout: r ?? null }));
    else io.out(r ? `rollout of ${r.version}: ${r.percent ?? '?'}%${r.paused ? ' (paused)' : ''}; index sequence ${index.sequence}` : `rollout ended: every machine takes ${String(index.latest)}; index sequence ${index.sequence}`);
    return EXIT.OK;
  },
};

const verifyCmd: Command = {
  path: ['verify'],
  summary: 'verify a channel repository: index, every manifest, every artifact',
  usage: '--repo REPO|URL --keyring PUB.asc [--channel NAME] [--threshold N]',
  description: 'Exit 0 when everything holds; otherwise one line per problem ("CODE path: message") and exit 1.\nWithout --channel, every channel of a local repository is checked (a URL needs --channel).',
  options: {
    repo: { type: 'string', description: 'repository directory, file:// or http(s):// URL', valueName: 'REPO|URL' },
    keyring: { type: 'string', description: 'armored public key(s) to trust', valueName: 'PUB.asc' },
    channel: { type: 'string', multiple: true, description: 'channel to verify', valueName: 'NAME' },
    threshold: { type: 'string', description: 'distinct trusted keys that must have signed', default: '1', valueName: 'N' },
  },
  async run({ values, io, json }) {
    const repo = requireString(values, 'repo');
    const keyring = await loadKeyring(requireString(values, 'keyring'));
    let channels = stringList(values, 'channel');
    if (channels.length === 0) {
      if (/^https?:/.test(repo)) throw new LiveupError('INVALID_ARGUMENT', '--channel is required when --repo is a URL');
      channels = await listChannels(repo.replace(/^file:\/\//, ''));
      if (channels.length === 0) throw new LiveupError('NOT_FOUND', `${repo} holds no channel (no channels/<name> index)`);
    }
    const report = await verifyRepo(openSource(repo), {
      keyring,
      threshold: optInt(values, 'threshold', { min: 1 }) ?? 1,
      channels,
      log: json ? undefined : (l) => io.out(l),
    });
    if (json) io.out(JSON.stringify({ ok: report.problems.length === 0, ...report }));
    else {
      for (const p of report.problems) io.err(`${p.code} ${p.message.startsWith(p.path) ? p.message : `${p.path}: ${p.message}`}`);
      const total = report.channels.reduce((n, c) => n + c.artifacts, 0);
      const bytes = report.channels.reduce((n, c) => n + c.bytes, 0);
      io.out(report.problems.length === 0
        ? `OK: ${channels.length} channel(s), ${total} artifact(s), ${(bytes / 1e6).toFixed(1)} MB verified`
        : `FAILED: ${report.problems.length} problem(s)`);
    }
    return report.problems.length === 0 ? EXIT.OK : EXIT.FAILED;
  },
};

const serveCmd: Command = {
  path: ['serve'],
  summary: 'serve a channel repository over HTTP (development and tests)',
  usage: 'REPO [--listen 127.0.0.1:PORT]',
  description: 'A static server with Range support. Production uses any static server: see docs/serving.md.\nPrints the URL once listening; stops on SIGINT/SIGTERM.',
  positionals: { min: 1, max: 1 },
  options: {
    listen: { type: 'string', description: 'address and port (port 0 picks a free one)', default: '127.0.0.1:8080', valueName: 'ADDR:PORT' },
    quiet: { type: 'boolean', short: 'q', description: 'do not log requests' },
  },
  async run({ values, positionals, io, json }) {
    const listen = optString(values, 'listen') ?? '127.0.0.1:8080';
    const m = /^(.*):(\d+)$/.exec(listen);
    if (!m) throw new LiveupError('INVALID_ARGUMENT', `--listen must be ADDR:PORT, got "${listen}"`);
    const s = await serve({
      root: positionals[0]!,
      host: m[1]!.replace(/^\[|\]$/g, ''),
      port: Number(m[2]),
      log: values.quiet ? undefined : (l) => io.err(l),
    });
    io.out(json ? JSON.stringify({ ok: true, url: s.url, port: s.port }) : `serving ${positionals[0]} at ${s.url}`);
    await new Promise<void>((done) => {
      const stop = () => void s.close().then(done);
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
    return EXIT.OK;
  },
};

const buildCmd: Command = {
  path: ['build'],
  summary: 'build a generation directory from a profile (debootstrap, apt, squashfs)',
  usage: '--profile PROFILE.json --out GENDIR [--iso FILE.iso] [--cache DIR] [--force]',
  description:
    'Runs as root. Steps are printed with their durations. The build happens in GENDIR.tmp-<pid> and is\n' +
    'renamed to GENDIR at the end: a failed or interrupted build unmounts everything and leaves no GENDIR.\n' +
    'The profile format is described in docs/factory.md (example: profiles/example.json).',
  options: {
    profile: { type: 'string', description: 'build profile (JSON, or YAML when named *.yaml)', valueName: 'PROFILE' },
    out: { type: 'string', description: 'generation directory to write', valueName: 'GENDIR' },
    cache: { type: 'string', description: 'cache for base trees and .deb files', default: DEFAULT_CACHE, valueName: 'DIR' },
    force: { type: 'boolean', description: 'replace GENDIR if it exists (only once the new build is complete)' },
    iso: { type: 'string', description: 'also write a hybrid BIOS/UEFI ISO booting it (see `liveup iso --help`)', valueName: 'FILE' },
    'agent-deb': { type: 'string', description: 'the liveup-agent .deb to install (profile "agent": true) [default: the shipped or freshly built one]', valueName: 'FILE' },
  },
  async run({ values, io, json }) {
    const isoOut = optString(values, 'iso');
    const r = await build({
      profilePath: requireString(values, 'profile'),
      out: requireString(values, 'out'),
      cacheDir: optString(values, 'cache'),
      agentDeb: optString(values, 'agent-deb'),
      force: values.force === true,
      log: (l) => (json ? io.err(l) : io.out(l)),
    });
    if (json) io.out(JSON.stringify({ ok: true, ...r }));
    else {
      const total = Object.values(r.timings).reduce((a, b) => a + b, 0);
      io.out(`built ${r.name} into ${r.gendir}: kernel ${r.kernel ?? 'none'}, ${r.packages} packages, squashfs ${(r.squashfsBytes / 1e6).toFixed(1)} MB, ${total.toFixed(0)} s`);
      for (const [p, v] of Object.entries(r.resolved)) io.out(`  ${p} ${v}`);
    }
    if (isoOut) {
      const iso = await writeIso({ gendir: r.gendir, out: isoOut, force: values.force === true, log: (l) => io.err(l) });
      if (json) io.out(JSON.stringify({ ok: true, iso }));
      else io.out(`wrote ${iso.path}: ${(iso.bytes / 1e6).toFixed(1)} MB, boots with ${iso.firmware.map((f) => f.toUpperCase()).join(' and ')}`);
    }
    return EXIT.OK;
  },
};

const isoCmd: Command = {
  path: ['iso'],
  summary: 'write a hybrid ISO (BIOS and UEFI; CD, DVD or USB stick) that boots a generation',
  usage: '--gendir GENDIR --out FILE.iso [--version N] [--serial] [--append PARAMS] [--force]',
  description:
    'GENDIR is a generation directory (liveup build/derive) or a published one (REPO/generations/<v>/,\n' +
    'whose manifest gives the version). The image holds live/<version>/ and a GRUB menu rendered like the\n' +
    'agent\'s; write it to a stick with `dd if=FILE.iso of=/dev/sdX bs=4M conv=fsync`. Needs grub-pc-bin,\n' +
    'grub-efi-amd64-bin, xorriso and mtools. Written to a temporary name: a failed run leaves no FILE.',
  options: {
    gendir: { type: 'string', description: 'generation directory', valueName: 'GENDIR' },
    out: { type: 'string', description: 'ISO file to write', valueName: 'FILE' },
    version: { type: 'string', description: 'generation number to boot as [default: the manifest\'s, else 1]', valueName: 'N' },
    serial: { type: 'boolean', description: 'GRUB and kernel console also on ttyS0 (115200 baud)' },
    append: { type: 'string', description: 'extra kernel parameters (e.g. toram)', valueName: 'PARAMS' },
    force: { type: 'boolean', description: 'replace FILE if it exists' },
  },
  async run({ values, io, json }) {
    const r = await writeIso({
      gendir: requireString(values, 'gendir'),
      out: requireString(values, 'out'),
      version: optInt(values, 'version', { min: 1 }),
      serial: values.serial === true,
      append: optString(values, 'append'),
      force: values.force === true,
      log: (l) => io.err(l),
    });
    if (json) io.out(JSON.stringify({ ok: true, ...r }));
    else io.out(`wrote ${r.path}: generation ${r.version}, ${(r.bytes / 1e6).toFixed(1)} MB, boots with ${r.firmware.map((f) => f.toUpperCase()).join(' and ')} (${r.seconds.toFixed(0)} s)`);
    return EXIT.OK;
  },
};

/** `--size 8G`, `512M` → MiB. */
function parseMiB(s: string, what: string): number {
  const m = /^(\d+)\s*([MG])i?B?$/i.exec(s.trim());
  if (!m) throw new LiveupError('INVALID_ARGUMENT', `${what} ${s}: expected a size like 8G or 512M`);
  return Number(m[1]) * (m[2]!.toUpperCase() === 'G' ? 1024 : 1);
}

const diskCmd: Command = {
  path: ['disk'],
  summary: 'write a bootable disk image (BIOS and UEFI) for a new machine: boot and data partitions, GRUB, a generation',
  usage: '--gendir REPO/generations/N --out FILE.img [--keyring PUB.asc] [--size 8G] [--data-size 2G] [--serial] [--grub-verify sha512|signature [--boot-pubkey RSA.pub.asc]] [--bios-only] [--force]',
  description:
    'The layout the agent and the initramfs expect: LIVEUP-BOOT (live/<N>/, GRUB, grubenv), LIVEUP-DATA (the\n' +
    'machine\'s /var/lib/liveup) and an EFI system partition. GENDIR is a published generation; its artifacts are\n' +
    'checked against its manifest, and with --keyring the manifest\'s signature too. Write the image to the machine\'s\n' +
    'disk with `dd if=FILE.img of=/dev/sdX bs=4M conv=fsync`, then grow the data partition if you like.\n' +
    'Written to a temporary name: a failed run leaves no FILE.\n' +
    '--grub-verify signature (signed boot): GRUB carries the boot public key and check_signatures=enforce, and a\n' +
    'static menu that boots a generation only through its signed boot.cfg (publish it with --boot-key); set the\n' +
    'agent\'s grubVerify to "signature". The kernel command line is the signed one: --serial sets GRUB\'s console only.',
  options: {
    gendir: { type: 'string', description: 'published generation directory (REPO/generations/<N>)', valueName: 'GENDIR' },
    out: { type: 'string', description: 'disk image to write', valueName: 'FILE' },
    keyring: { type: 'string', description: 'check the manifest\'s signature against these key(s)', valueName: 'PUB.asc' },
    size: { type: 'string', description: 'image size [default: 8G]', valueName: 'SIZE' },
    'data-size': { type: 'string', description: 'data partition size; the agent downloads a generation there before staging it [default: 2G]', valueName: 'SIZE' },
    serial: { type: 'boolean', description: 'GRUB and kernel console also on ttyS0 (115200 baud)' },
    'grub-verify': { type: 'string', description: 'GRUB checks the SHA-512 of kernel, initrd and squashfs before booting (sha512), or their signatures by the boot key (signature); set the agent\'s grubVerify alike [default: off]', valueName: 'off|sha512|signature' },
    'boot-pubkey': { type: 'string', description: 'RSA boot public key built into GRUB (with --grub-verify signature)', valueName: 'RSA.pub.asc' },
    'bios-only': { type: 'boolean', description: 'no EFI system partition' },
    force: { type: 'boolean', description: 'replace FILE if it exists' },
  },
  async run({ values, io, json }) {
    const t0 = Date.now();
    const gendir = requireString(values, 'gendir');
    const out = requireString(values, 'out');
    if (values.force !== true && existsSync(out)) throw new LiveupError('ALREADY_EXISTS', `${out} exists; pass --force to replace it`, { file: out });
    const verify = optString(values, 'grub-verify') ?? 'off';
    if (!(GRUB_VERIFY_MODES as readonly string[]).includes(verify)) {
      throw new LiveupError('INVALID_ARGUMENT', `--grub-verify must be ${GRUB_VERIFY_MODES.join(', ')}, got ${JSON.stringify(verify)}`);
    }
    const pubPath = optString(values, 'boot-pubkey');
    if ((verify === 'signature') !== (pubPath !== undefined)) {
      throw new LiveupError('INVALID_ARGUMENT', verify === 'signature' ? '--grub-verify signature needs --boot-pubkey (the RSA boot public key)' : '--boot-pubkey goes with --grub-verify signature');
    }
    const bootPubkey = pubPath === undefined ? undefined : await loadBootPublicKey(pubPath);
    const g = await checkedGeneration(gendir, optString(values, 'keyring'), (l) => io.err(l));
    if (bootPubkey && !g.signedBoot) {
      throw new LiveupError('INVALID_ARGUMENT', `generation ${g.version} has no signed boot (boot.cfg and .sig files): publish it with \`liveup publish --boot-key\``);
    }
    const consoles = values.serial === true ? ` ${SERIAL_CONSOLES}` : '';
    const layout = {
      sizeMiB: parseMiB(optString(values, 'size') ?? '8G', '--size'),
      dataMiB: parseMiB(optString(values, 'data-size') ?? '2G', '--data-size'),
      espMiB: values['bios-only'] === true ? 0 : 64,
    };
    await makeDisk({
      out, layout, defaultVersion: g.version, serial: values.serial === true, verify: verify as GrubVerify, log: (l) => io.err(l),
      ...(bootPubkey ? { bootPubkey: { key: bootPubkey, source: pubPath ?? '' } } : {}),
      generations: [{ version: g.version, dir: gendir, name: g.name, kernelVersion: g.kernelVersion, cmdline: `${g.cmdline}${consoles}`.trim() }],
    });
    const firmware = layout.espMiB > 0 ? ['bios', 'uefi'] : ['bios'];
    if (json) io.out(JSON.stringify({ ok: true, path: out, version: g.version, firmware, sizeMiB: layout.sizeMiB, dataMiB: layout.dataMiB, seconds: (Date.now() - t0) / 1000 }));
    else io.out(`wrote ${out}: generation ${g.version}, ${layout.sizeMiB} MiB, boots with ${firmware.map((f) => f.toUpperCase()).join(' and ')} (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    return EXIT.OK;
  },
};

const deriveCmd: Command = {
  path: ['derive'],
  summary: 'derive a generation from the latest one by installing, removing or upgrading packages',
  usage: '--from REPO|GENDIR [--channel NAME] [--keyring PUB.asc] [--install P]… [--deb FILE]… [--remove P]… [--upgrade] --out GENDIR',
  description:
    'Unpacks the source generation, applies the changes with apt in a chroot and records exactly which\n' +
    '.deb files dpkg installed (in dpkg\'s order) and which packages it removed, into GENDIR/generation.json\n' +
    'and GENDIR/debs/. rebootRequired lists "kernel", "initrd" and "package:<name>" reasons.\n' +
    'From a repository, the latest generation of --channel is used; without --keyring its files are read\n' +
    'unverified (a warning says so). From an unpublished GENDIR, pass --parent N to name its published version.',
  options: {
    from: { type: 'string', description: 'channel repository or generation directory', valueName: 'REPO|GENDIR' },
    channel: { type: 'string', description: 'channel whose latest generation to start from (with a repository)', valueName: 'NAME' },
    keyring: { type: 'string', description: 'verify the repository with these pinned public keys', valueName: 'PUB.asc' },
    install: { type: 'string', multiple: true, description: 'package to install or upgrade (name or name=VERSION)', valueName: 'P' },
    remove: { type: 'string', multiple: true, description: 'package to remove', valueName: 'P' },
    deb: { type: 'string', multiple: true, description: 'local .deb file to install or upgrade to (with its dependencies from the sources)', valueName: 'FILE' },
    upgrade: { type: 'boolean', description: 'apt-get full-upgrade first' },
    out: { type: 'string', description: 'generation directory to write', valueName: 'GENDIR' },
    name: { type: 'string', description: 'generation name (default: source name + timestamp)' },
    parent: { type: 'string', description: 'parent version when --from is an unpublished GENDIR', valueName: 'N' },
    'reboot-packages': { type: 'string', description: 'packages whose change requires a reboot (comma-separated)', default: DEFAULT_REBOOT_PACKAGES.join(','), valueName: 'P,P' },
    cache: { type: 'string', description: 'cache for .deb files', default: DEFAULT_CACHE, valueName: 'DIR' },
    force: { type: 'boolean', description: 'replace GENDIR if it exists' },
  },
  async run({ values, io, json }) {
    const keyringPath = optString(values, 'keyring');
    const rebootList = optString(values, 'reboot-packages');
    const r = await derive({
      from: requireString(values, 'from'),
      channel: optString(values, 'channel'),
      keyring: keyringPath ? await loadKeyring(keyringPath) : undefined,
      install: stringList(values, 'install').flatMap((x) => x.split(',')).filter(Boolean),
      remove: stringList(values, 'remove').flatMap((x) => x.split(',')).filter(Boolean),
      debs: stringList(values, 'deb'),
      upgrade: values.upgrade === true,
      out: requireString(values, 'out'),
      name: optString(values, 'name'),
      parent: optInt(values, 'parent', { min: 1 }),
      rebootPackages: rebootList === undefined ? undefined : rebootList.split(',').map((x) => x.trim()).filter(Boolean),
      cacheDir: optString(values, 'cache'),
      force: values.force === true,
      log: (l) => (json ? io.err(l) : io.out(l)),
    });
    if (json) io.out(JSON.stringify({ ok: true, ...r }));
    else {
      io.out(`derived ${r.name} into ${r.gendir} (parent ${r.parent ?? 'none'}): ${r.changes.length} change(s)`);
      for (const c of r.changes) io.out(`  ${c.action.padEnd(7)} ${c.package} ${c.from ?? ''}${c.from && c.version ? ' → ' : ''}${c.version ?? ''}`);
      io.out(`reboot required: ${r.rebootRequired.required ? `yes (${r.rebootRequired.reasons.join(', ')})` : 'no'}`);
    }
    return EXIT.OK;
  },
};

const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

function problemLine(p: MirrorProblem): string {
  return `${p.kind} ${p.path}: ${p.detail}`;
}

/** A progress line on stderr when it is a terminal and the output is for people. */
function progressFor(io: { isTTY: boolean }, json: boolean): ProgressLine | null {
  return io.isTTY && !json ? new ProgressLine((s) => process.stderr.write(s)) : null;
}

const mirrorVerifyCmd: Command = {
  path: ['mirror', 'verify'],
  summary: 'verify a local apt mirror: signatures, every index, every .deb, unreferenced files',
  usage: 'PATH [--keyring K] [--jobs N] [--dist SUITE]… [--arch ARCH]… [--json]',
  description:
    'PATH holds dists/ and pool/ (or is a `mirror sync` destination; its current/ is checked).\n' +
    'Checks InRelease / Release.gpg against the keyring, every index file the signed Release lists\n' +
    '(size, SHA256), by-hash files, every file named by every Packages/Sources index (size, SHA256),\n' +
    'and reports files in pool/ that no index names. One line per problem, "KIND path: detail",\n' +
    'then a summary; exit 0 when all holds, 1 on any problem. See docs/mirror.md.',
  positionals: { min: 1, max: 1 },
  options: {
    keyring: { type: 'string', description: `armored or binary OpenPGP keyring [default: ${DEBIAN_KEYRING}]`, valueName: 'K' },
    jobs: { type: 'string', short: 'j', description: `files hashed in parallel [default: CPU count, ${defaultJobs()} here]`, valueName: 'N' },
    dist: { type: 'string', multiple: true, description: 'suite under dists/ to check (default: all; unreferenced files are then not checked)', valueName: 'SUITE' },
    arch: { type: 'string', multiple: true, description: 'architecture whose Packages index must be present', valueName: 'ARCH' },
  },
  async run({ values, positionals, io, json }) {
    const root = await resolveMirrorRoot(positionals[0]!);
    const keyring = await loadKeyring(optString(values, 'keyring') ?? DEBIAN_KEYRING);
    const progress = progressFor(io, json);
    const report = await verifyMirror(root, {
      keyring,
      jobs: optInt(values, 'jobs', { min: 1 }),
      dists: stringList(values, 'dist'),
      architectures: stringList(values, 'arch'),
      onProgress: progress ? (p) => progress.update(p) : undefined,
    }).finally(() => progress?.end());
    if (json) io.out(JSON.stringify({ ok: report.problems.length === 0, ...report }));
    else {
      for (const p of report.problems) io.out(problemLine(p));
      const secs = report.ms / 1000;
      const what = `${report.suites.length} suite(s), ${report.indices} index file(s), ${report.files} pool file(s), ` +
        `${formatBytes(report.bytes)} in ${secs.toFixed(1)} s (${formatBytes(report.bytes / Math.max(secs, 1e-3))}/s)` +
        (report.unreferencedChecked ? '' : '; unreferenced files not checked (not every suite and index was readable/selected)');
      io.out(report.problems.length === 0 ? `OK: ${what}` : `FAILED: ${report.problems.length} problem(s); ${what}`);
    }
    return report.problems.length === 0 ? EXIT.OK : EXIT.FAILED;
  },
};

const mirrorSyncCmd: Command = {
  path: ['mirror', 'sync'],
  summary: 'update a local apt mirror with debmirror, verify it, switch to it only if it verifies',
  usage: '--config FILE [--jobs N] [--json]',
  description:
    'FILE is JSON: {"upstream": URL, "suites": [...], "components": [...], "architectures": [...],\n' +
    '"keyring": PATH, "dest": DIR}. DEST/current points at the newest verified state; a sync that\n' +
    'fails (debmirror error or verification problem) is reported, exits 1 and leaves current as it was.',
  options: {
    config: { type: 'string', description: 'mirror configuration (JSON)', valueName: 'FILE' },
    jobs: { type: 'string', short: 'j', description: 'files hashed in parallel while verifying [default: CPU count]', valueName: 'N' },
    quiet: { type: 'boolean', short: 'q', description: 'do not print debmirror output' },
  },
  async run({ values, io, json }) {
    const cfg = await loadMirrorConfig(requireString(values, 'config'));
    const progress = progressFor(io, json);
    const r = await syncMirror(cfg, {
      jobs: optInt(values, 'jobs', { min: 1 }),
      log: json || values.quiet ? undefined : (l) => { progress?.end(); io.err(l); },
      onProgress: progress ? (p) => progress.update(p) : undefined,
    }).finally(() => progress?.end());
    if (json) io.out(JSON.stringify({ ok: r.ok, current: r.current, state: r.state, reason: r.reason ?? null, problems: r.problems }));
    else {
      for (const p of r.problems) io.out(problemLine(p));
      io.out(r.ok
        ? `OK: ${r.current} verified (${r.report?.files ?? 0} pool file(s), ${formatBytes(r.report?.bytes ?? 0)}) and is now current`
        : `FAILED: ${r.reason}; current is still ${r.current ?? '(none: no good state yet)'}; failed state kept in ${r.state}`);
    }
    return r.ok ? EXIT.OK : EXIT.FAILED;
  },
};

export const COMMANDS: Command[] = [keyGenerate, buildCmd, deriveCmd, isoCmd, diskCmd, ...FLEET_COMMANDS, rolloutCmd, publishCmd, verifyCmd, serveCmd, mirrorVerifyCmd, mirrorSyncCmd];

export const BLURB = 'liveup: build, sign and publish generations of live Debian systems.';

export async function main(argv: readonly string[]): Promise<number> {
  if (argv[0] === '--version') {
    const pkg = JSON.parse(await readFile(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
    process.stdout.write(`liveup ${pkg.version}\n`);
    return EXIT.OK;
  }
  return runCli('liveup', BLURB, COMMANDS, argv);
}
