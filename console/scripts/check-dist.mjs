#!/usr/bin/env node
/**
 * Proves that the committed `dist/` is the build of the committed sources:
 * builds again into a temporary directory and compares every file, byte for
 * byte. Exits 1 (listing the differences) when they differ: run
 * `npm run build` and commit `dist/`.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'vite';

const root = fileURLToPath(new URL('..', import.meta.url));
const committed = join(root, 'dist');

function files(dir) {
  const out = [];
  const walk = (d) => {
    for (const name of readdirSync(d).sort()) {
      const path = join(d, name);
      if (statSync(path).isDirectory()) walk(path);
      else out.push(relative(dir, path));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out;
}

const fresh = mkdtempSync(join(tmpdir(), 'console-dist-'));
try {
  await build({ root, logLevel: 'warn', build: { outDir: fresh, emptyOutDir: true } });
  const want = files(fresh);
  const have = files(committed);
  const problems = [];
  for (const f of want) {
    if (!have.includes(f)) problems.push(`missing from dist/: ${f}`);
    else if (!readFileSync(join(fresh, f)).equals(readFileSync(join(committed, f)))) problems.push(`differs: dist/${f}`);
  }
  for (const f of have) if (!want.includes(f)) problems.push(`not built from the sources (stale): dist/${f}`);
  if (problems.length > 0) {
    console.error(`console/dist/ does not match its sources:\n  ${problems.join('\n  ')}`);
    console.error('Run `npm run build` in console/ and commit dist/.');
    process.exit(1);
  }
  console.log(`console/dist/ matches its sources (${want.length} files).`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
