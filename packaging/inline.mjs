#!/usr/bin/env node
// Turns a staged program tree (what bundle.mjs copied: bin/, dist/,
// node_modules/) into one ES module per launcher plus shared chunks, with
// esbuild, and prunes what that made dead (see packaging/README.md):
//
//   node packaging/inline.mjs --dir STAGED_LIB --summary SUMMARY_JSON --entry bin/agentctl [--entry …]
//
// Why: Node's ES module loader pays per file (resolve, read, parse, link);
// the agent's programs load ~300 of them. The daemon and the boot check start
// on every boot's critical path and agentctl starts before each switch, all
// on machines that may be slow; bundled, each loads a handful of files.
//
// - Each launcher bin/X (a shebang and an import of ../dist/…) is bundled into
//   app/X.js; bin/X becomes its shebang (V8 flags kept) and `import '../app/X.js'`.
// - Dynamic imports (openpgp, execa: loaded on first use) stay separate chunks,
//   so what a program never needs is still never loaded.
// - Native addons and the packages that load them by path (better-sqlite3,
//   usocket) stay in node_modules/, with their dependency closure; every other
//   package is inlined, and of it only its licence files are kept, where they
//   were (the copyright file points there). dist/ goes.
// - The summary JSON bundle.mjs printed is rewritten: each package says whether
//   its code is inlined.
import { build } from 'esbuild';
import { chmodSync, existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join, relative, resolve, sep } from 'node:path';
import { EXTERNAL } from './externals.mjs';

const args = process.argv.slice(2);
const opt = { entries: [] };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--dir') opt.dir = resolve(args[++i]);
  else if (a === '--summary') opt.summary = resolve(args[++i]);
  else if (a === '--entry') opt.entries.push(args[++i]);
  else { console.error(`inline: unknown argument ${a}`); process.exit(2); }
}
if (!opt.dir || !opt.summary || opt.entries.length === 0) {
  console.error('usage: inline.mjs --dir DIR --summary FILE --entry bin/X [--entry bin/Y…]');
  process.exit(2);
}

const entryPoints = Object.fromEntries(opt.entries.map((e) => [basename(e), join(opt.dir, e)]));
const result = await build({
  absWorkingDir: opt.dir,
  entryPoints,
  outdir: join(opt.dir, 'app'),
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: EXTERNAL,
  // CommonJS packages inlined into ES modules still call require() for Node's
  // built-ins and the externals: give each output file a real one.
  banner: { js: "import { createRequire as __liveupCreateRequire } from 'node:module'; const require = __liveupCreateRequire(import.meta.url);" },
  legalComments: 'eof',
  metafile: true,
  logLevel: 'warning',
});
if (result.errors.length > 0) process.exit(1);

// Packages whose code went into app/: node_modules/<name>/… (or @scope/name) among the inputs.
const inlined = new Set();
for (const input of Object.keys(result.metafile.inputs)) {
  const parts = input.split(/[/\\]/);
  const at = parts.lastIndexOf('node_modules');
  if (at < 0) continue;
  const name = parts[at + 1].startsWith('@') ? `${parts[at + 1]}/${parts[at + 2]}` : parts[at + 1];
  inlined.add(parts.slice(0, at + 1).join('/') + '/' + name);
}

// The externals' closure stays whole: resolved like Node, from the tree's root.
const keep = new Set();
const pending = EXTERNAL.map((n) => join(opt.dir, 'node_modules', n));
while (pending.length) {
  const dir = pending.pop();
  if (keep.has(dir) || !existsSync(join(dir, 'package.json'))) continue;
  keep.add(dir);
  const pj = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  for (const d of [...Object.keys(pj.dependencies ?? {}), ...Object.keys(pj.optionalDependencies ?? {})]) {
    const nested = join(dir, 'node_modules', d);
    pending.push(existsSync(nested) ? nested : join(opt.dir, 'node_modules', d));
  }
}

// Every other package: only its licence files remain.
const LICENCE = /^(licen[cs]e|copying|notice|authors)/i;
function packageDirs(nm) {
  if (!existsSync(nm)) return [];
  const out = [];
  for (const e of readdirSync(nm, { withFileTypes: true })) {
    if (!e.isDirectory() || e.name.startsWith('.')) continue;
    const p = join(nm, e.name);
    if (e.name.startsWith('@')) out.push(...packageDirs(p));
    else out.push(p, ...packageDirs(join(p, 'node_modules')));
  }
  return out;
}
const summary = JSON.parse(readFileSync(opt.summary, 'utf8'));
const byPath = new Map(summary.packages.map((p) => [join(opt.dir, p.path), p]));
for (const dir of packageDirs(join(opt.dir, 'node_modules'))) {
  if (keep.has(dir)) continue;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules') continue; // nested packages are visited on their own
    if (!(e.isFile() && LICENCE.test(e.name))) rmSync(join(dir, e.name), { recursive: true, force: true });
  }
  const p = byPath.get(dir);
  if (p) p.inlined = inlined.has(relative(opt.dir, dir).split(sep).join('/'));
}
// Directories left with nothing (no licence file, no nested package).
function pruneEmpty(d) {
  for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) pruneEmpty(join(d, e.name));
  if (readdirSync(d).length === 0) rmSync(d, { recursive: true });
}
if (existsSync(join(opt.dir, 'node_modules'))) pruneEmpty(join(opt.dir, 'node_modules'));
rmSync(join(opt.dir, 'dist'), { recursive: true, force: true });

for (const e of opt.entries) {
  // esbuild copies the entry's shebang into app/X.js: only the launcher runs, so only it keeps one.
  const bundled = join(opt.dir, 'app', `${basename(e)}.js`);
  writeFileSync(bundled, readFileSync(bundled, 'utf8').replace(/^#![^\n]*\n/, ''));
  chmodSync(bundled, 0o644); // esbuild made it executable for its shebang
  const shebang = readFileSync(join(opt.dir, e), 'utf8').split('\n')[0];
  writeFileSync(join(opt.dir, e), `${shebang}\n// The bundled program (packaging/inline.mjs); its source is liveup's ${e}.\nimport '../app/${basename(e)}.js';\n`);
}
writeFileSync(opt.summary, JSON.stringify(summary, null, 2) + '\n');
const outputs = Object.keys(result.metafile.outputs).filter((o) => o.endsWith('.js'));
process.stderr.write(`inline: ${opt.entries.length} program(s) → ${outputs.length} file(s) in app/, ${inlined.size} package(s) inlined, ${keep.size} kept in node_modules/\n`);
