// Writes the build's manifest.json: the sha256 of every source file that sources.json
// lists (directories expanded, sorted, '/'-separated paths relative to dashboard/) and of
// every file of the build. tests/unit/test_dashboard_build.py recomputes both.
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const out = join(root, '..', 'src', 'agentcast', 'dashboard', 'static');

function files(path) {
  if (statSync(path).isDirectory()) return readdirSync(path).flatMap((name) => files(join(path, name)));
  return [path];
}
const sha = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');
const rel = (base, path) => relative(base, path).split(sep).join('/');

const { sources: listed } = JSON.parse(readFileSync(join(root, 'sources.json'), 'utf8'));
const sources = {};
for (const path of listed.flatMap((p) => files(join(root, p))).sort()) sources[rel(root, path)] = sha(path);
const build = {};
for (const path of files(out).sort()) {
  const name = rel(out, path);
  if (name !== 'manifest.json') build[name] = sha(path);
}
const sorted = (o) => Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]]));
writeFileSync(join(out, 'manifest.json'), JSON.stringify({ sources: sorted(sources), build: sorted(build) }, null, 2) + '\n');
console.log(`manifest.json: ${Object.keys(sources).length} sources, ${Object.keys(build).length} built files`);
