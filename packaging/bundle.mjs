#!/usr/bin/env node
// Copies one program's runtime into a package tree, offline, from the repo's
// already-installed node_modules (see packaging/README.md):
//
//   node packaging/bundle.mjs --repo DIR --dest DIR --entry bin/agentctl [--entry …]
//
// - Follows the static imports of the entries through dist/ (relative
//   specifiers) and collects the bare ones (npm packages, `node:` excluded);
//   a `require('x')` (a createRequire'd one: a module loaded on first use) counts.
// - Copies dist/ files reached, the entries and package.json into DEST.
// - Copies each reached npm package and its `dependencies` /
//   present `optionalDependencies`, resolved the way Node does (nested
//   node_modules first), into DEST/node_modules, keeping npm's layout.
//   Install-time-only dependencies are left out (INSTALL_ONLY below); so are
//   tests, docs, source maps and build intermediates (see `skip`).
// - Prints a JSON summary: packages with version and licence, native addons.
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';

const args = process.argv.slice(2);
const opt = { entries: [] };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--repo') opt.repo = resolve(args[++i]);
  else if (a === '--dest') opt.dest = resolve(args[++i]);
  else if (a === '--entry') opt.entries.push(args[++i]);
  else { console.error(`bundle: unknown argument ${a}`); process.exit(2); }
}
if (!opt.repo || !opt.dest || opt.entries.length === 0) {
  console.error('usage: bundle.mjs --repo DIR --dest DIR --entry FILE [--entry FILE…]');
  process.exit(2);
}

// Needed only while npm installs a package, never when it runs.
const INSTALL_ONLY = { 'better-sqlite3': ['prebuild-install'], usocket: ['node-gyp', 'nan'] };

const IMPORT_RE = /(?:^|[\s;}])(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]|(?:^|[\s;}])import\s*['"]([^'"]+)['"]|\b(?:import|require)\(\s*['"]([^'"]+)['"]\s*\)/gm;

// 1. Source closure.
const files = new Set();
const bare = new Set();
const queue = opt.entries.map((e) => resolve(opt.repo, e));
while (queue.length) {
  const file = queue.pop();
  if (files.has(file)) continue;
  if (!existsSync(file)) { console.error(`bundle: missing ${relative(opt.repo, file)} (run npx tsc -p tsconfig.build.json)`); process.exit(1); }
  files.add(file);
  const text = readFileSync(file, 'utf8');
  for (const m of text.matchAll(IMPORT_RE)) {
    const spec = m[1] ?? m[2] ?? m[3];
    if (spec.startsWith('node:')) continue;
    if (spec.startsWith('.') || spec.startsWith('/')) queue.push(resolve(dirname(file), spec));
    else bare.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]);
  }
}
for (const f of files) {
  const rel = relative(opt.repo, f);
  mkdirSync(dirname(join(opt.dest, rel)), { recursive: true });
  cpSync(f, join(opt.dest, rel));
}
cpSync(join(opt.repo, 'package.json'), join(opt.dest, 'package.json'));

// 2. npm package closure, resolved like Node: from `fromDir` upwards.
function resolvePkg(name, fromDir) {
  let dir = fromDir;
  for (;;) {
    const cand = join(dir, 'node_modules', name);
    if (existsSync(join(cand, 'package.json'))) return cand;
    if (dir === opt.repo || dir === dirname(dir)) return null;
    dir = dirname(dir);
  }
}
const pkgs = new Map(); // abs dir → package.json
const pending = [...bare].map((n) => [n, opt.repo, false]);
while (pending.length) {
  const [name, from, optional] = pending.pop();
  const dir = resolvePkg(name, from);
  if (!dir) {
    if (optional) continue;
    console.error(`bundle: ${name} (needed from ${relative(opt.repo, from) || '.'}) is not installed; run scripts/setup.sh`);
    process.exit(1);
  }
  if (pkgs.has(dir)) continue;
  const pj = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  pkgs.set(dir, pj);
  const skip = new Set(INSTALL_ONLY[pj.name] ?? []);
  for (const d of Object.keys(pj.dependencies ?? {})) if (!skip.has(d)) pending.push([d, dir, false]);
  for (const d of Object.keys(pj.optionalDependencies ?? {})) if (!skip.has(d)) pending.push([d, dir, true]);
}

// Files no program reads at run time. Native build intermediates go; only
// build/Release/*.node stays (and test addons go too).
function skip(src, pkgDir) {
  const rel = relative(pkgDir, src);
  if (rel === '') return false;
  const parts = rel.split(sep);
  const base = parts[parts.length - 1];
  if (parts[0] === 'node_modules') return true; // nested packages are copied on their own
  if (existsSync(join(pkgDir, 'binding.gyp'))) {
    // A native addon: only build/Release/*.node runs (test addons go too).
    if (parts[0] === 'build') {
      if (parts.length === 1 || (parts.length === 2 && parts[1] === 'Release')) return false;
      return !(parts.length === 3 && parts[1] === 'Release' && base.endsWith('.node') && !base.startsWith('test_'));
    }
    if (parts.length === 1 && ['deps', 'src'].includes(base) && statSync(src).isDirectory()) return true;
  }
  if (parts.length === 1 && base.startsWith('.') && statSync(src).isDirectory()) return true; // .husky, .github, …
  if (parts.length === 1 && ['test', 'tests', '__tests__', 'example', 'examples', 'benchmark', 'benchmarks', '.github'].includes(base)
      && statSync(src).isDirectory()) return true;
  // Docs, source maps, TypeScript sources and declarations, C sources; licence files stay.
  if (/\.(md|markdown|map|ts|mts|cts|gyp|gypi|cc|cpp|c|h|hpp|tsbuildinfo)$/i.test(base) && !/^licen[cs]e/i.test(base)) return true;
  if (/\.html?$/i.test(base)) return true; // project web pages (pino's pull scripts from CDNs)
  if (/^(\.gitattributes|\.gitignore|\.npmignore|\.eslintrc.*|\.prettierrc.*|\.editorconfig|\.travis\.yml|\.nycrc.*|tsconfig.*\.json)$/.test(base)) return true;
  return false;
}

const summary = { packages: [], native: [] };
for (const [dir, pj] of [...pkgs].sort(([a], [b]) => a.localeCompare(b))) {
  const rel = relative(opt.repo, dir);
  cpSync(dir, join(opt.dest, rel), { recursive: true, filter: (src) => !skip(src, dir), dereference: false });
  const lic = typeof pj.license === 'string' ? pj.license : (pj.license?.type ?? (pj.licenses ?? []).map((l) => l.type).join(' or ')) || 'UNKNOWN';
  summary.packages.push({ path: rel, name: pj.name, version: pj.version, license: lic, author: typeof pj.author === 'string' ? pj.author : pj.author?.name ?? '' });
}
function findNative(d) {
  for (const e of readdirSync(d, { withFileTypes: true })) {
    const p = join(d, e.name);
    if (e.isDirectory()) findNative(p);
    else if (e.name.endsWith('.node')) summary.native.push(relative(opt.dest, p));
  }
}
if (existsSync(join(opt.dest, 'node_modules'))) findNative(join(opt.dest, 'node_modules'));
process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
