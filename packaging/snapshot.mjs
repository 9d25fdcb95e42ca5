#!/usr/bin/env node
// Makes each named launcher's program a V8 startup snapshot entry and its
// launcher a /bin/sh script that runs the program from a snapshot when one
// matches (see packaging/README.md, "Startup snapshots"):
//
//   node packaging/snapshot.mjs --dir STAGED_LIB --libdir /usr/lib/liveup --launcher TEMPLATE --entry bin/agentctl [--entry …]
//
// Run on the staged tree after bundle.mjs (it reads dist/ and node_modules/)
// and before inline.mjs (which turns bin/X into an ES module launcher of
// app/X.js); the sh launcher written here replaces that one afterwards
// (--finish, same arguments): the bundle app/X.js stays the program, the
// snapshot only a faster way into it.
//
// Why: Debian's node has no built-in startup snapshot nor code cache, so every
// start compiles Node's own bootstrap and then the bundle; under QEMU TCG that
// is ~2.8 s per agentctl and ~4 s per daemon start, on each switch's critical
// path. Started from a snapshot (`node --snapshot-blob`), node deserializes a
// heap where both are done: ~1.2 s and ~2 s (bench/live has the figures).
//
// The snapshot holds the program's modules evaluated, not started: whatever a
// module computes at load (a constant, a default) is frozen at build time, so
// what depends on the machine or the moment must be computed when used (the
// CLI's isTTY, the journal's SQLite addon). The entry bundle (app/snapshot/X.cjs):
// - CommonJS, one file (the snapshot builder runs one script, whose require
//   loads built-ins only);
// - every require() goes through the real one once the snapshot runs
//   (globalThis.__liveupRequire, set by the deserialized main), so native
//   addons and optional packages load from /usr/lib/liveup/node_modules then;
// - node:http/https are not loaded at module load (the builder refuses them):
//   the agent imports them on first request (agent/src/adapters/http.ts).
// The blob itself is built on the machine that runs it, by liveup-agentd
// (agent/src/adapters/snapshots.ts) through the launcher: a blob loads only on
// the CPU features, node build and V8 flags that wrote it.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { EXTERNAL } from './externals.mjs';

const args = process.argv.slice(2);
const opt = { entries: [], finish: false };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--dir') opt.dir = resolve(args[++i]);
  else if (a === '--libdir') opt.libdir = args[++i];
  else if (a === '--launcher') opt.launcher = resolve(args[++i]);
  else if (a === '--entry') opt.entries.push(args[++i]);
  else if (a === '--finish') opt.finish = true;
  else { console.error(`snapshot: unknown argument ${a}`); process.exit(2); }
}
if (!opt.dir || !opt.libdir || !opt.launcher || opt.entries.length === 0) {
  console.error('usage: snapshot.mjs --dir DIR --libdir /usr/lib/X --launcher TEMPLATE --entry bin/X [--entry bin/Y…] [--finish]');
  process.exit(2);
}

/** bin/X's V8 flags (its shebang's, after `node`) and the dist module it runs. */
function launcherOf(entry) {
  const text = readFileSync(join(opt.dir, entry), 'utf8');
  const shebang = text.split('\n')[0];
  const m = /node((?:\s+--[\w-]+(?:=\S+)?)*)\s*$/.exec(shebang);
  if (!m) throw new Error(`snapshot: ${entry}: cannot read the node flags of its shebang: ${shebang}`);
  const main = /import\s*\{\s*main\s*\}\s*from\s*['"]([^'"]+)['"]/.exec(text);
  return { flags: m[1].trim(), main: main?.[1] };
}

if (opt.finish) {
  // bin/X becomes the sh launcher (inline.mjs has made app/X.js the program).
  const template = readFileSync(opt.launcher, 'utf8');
  for (const e of opt.entries) {
    const prog = basename(e);
    const { flags } = launcherOf(e); // inline.mjs kept bin/X's shebang
    writeFileSync(join(opt.dir, e), template.replaceAll('@PROG@', prog).replaceAll('@FLAGS@', flags).replaceAll('@LIBDIR@', opt.libdir));
    chmodSync(join(opt.dir, e), 0o755);
  }
  process.exit(0);
}

for (const e of opt.entries) {
  const prog = basename(e);
  const { flags, main } = launcherOf(e);
  if (!main) throw new Error(`snapshot: ${e} does not import { main } from its program`);
  const installed = `${opt.libdir}/app/snapshot/${prog}.cjs`;
  const entry = [
    `import { main } from ${JSON.stringify(resolve(opt.dir, 'bin', main))};`,
    "import { startupSnapshot } from 'node:v8';",
    "import { createRequire } from 'node:module';",
    'startupSnapshot.setDeserializeMainFunction(() => {',
    `  globalThis.__liveupRequire = createRequire(${JSON.stringify(installed)});`,
    '  globalThis.__liveupStartup = "snapshot";',
    // `node --snapshot-blob B -- ARGS` gives [node, ...ARGS]: the usual shape has the program at [1].
    `  process.argv.splice(1, 0, ${JSON.stringify(`${opt.libdir}/${e}`)});`,
    '  main(process.argv.slice(2)).then((code) => { process.exitCode = code; });',
    '});',
  ].join('\n');
  const result = await build({
    stdin: { contents: entry, resolveDir: opt.dir, sourcefile: `${prog}-snapshot-entry.mjs` },
    absWorkingDir: opt.dir,
    outfile: join(opt.dir, 'app', 'snapshot', `${prog}.cjs`),
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    // Loaded at run time through the real require (native addons, optional).
    external: EXTERNAL,
    banner: {
      js: [
        '// liveup: a V8 startup snapshot entry (packaging/snapshot.mjs), built into a blob by the launcher beside.',
        'const __liveupBuilderRequire = require;',
        'var require = (id) => (globalThis.__liveupRequire ?? __liveupBuilderRequire)(id);',
        `const __liveupMetaUrl = ${JSON.stringify(`file://${installed}`)};`,
      ].join('\n'),
    },
    define: { 'import.meta.url': '__liveupMetaUrl' },
    legalComments: 'eof',
    logLevel: 'warning',
    metafile: true,
  });
  // A dynamic import() left in the entry (of an external: esbuild inlines the
  // others) fails at run time, after the snapshot was built and declared good:
  // code deserialized from a snapshot has no dynamic import callback.
  const dynamic = Object.values(result.metafile.outputs).flatMap((o) => o.imports)
    .filter((i) => i.kind === 'dynamic-import').map((i) => i.path);
  if (dynamic.length > 0) {
    console.error(`snapshot: ${prog}: import() of ${[...new Set(dynamic)].join(', ')} cannot run from a startup snapshot; load it with a createRequire()'d require`);
    process.exit(1);
  }
  // The entry builds into a blob and runs from it (here with this node, on the
  // machine with its own): a module that cannot be snapshotted fails the build.
  const tmp = mkdtempSync(join(tmpdir(), 'liveup-snapshot-'));
  let failed = null;
  try {
    const node = (more) => execFileSync(process.execPath, [...flags.split(/\s+/).filter(Boolean), '--snapshot-blob', join(tmp, 'blob'), ...more],
      { cwd: join(opt.dir, 'app', 'snapshot'), stdio: ['ignore', 'ignore', 'pipe'] });
    node(['--build-snapshot', `${prog}.cjs`]);
    node(['--', '--help']);
  } catch (err) {
    failed = err;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  // Exited after the finally: process.exit() inside the try skipped it and left the blob's directory.
  if (failed) {
    console.error(`snapshot: ${prog}'s startup snapshot entry does not build or run:\n${failed.stderr ?? failed.message}`);
    process.exit(1);
  }
}
process.stderr.write(`snapshot: ${opt.entries.length} snapshot entr${opt.entries.length === 1 ? 'y' : 'ies'} in app/snapshot/\n`);
