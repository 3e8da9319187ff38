// Fails when src/generated/openapi.ts is not what `npm run generate` writes
// from openapi.json: the generated wire types must never drift or be edited.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'scalechat-openapi-'));
const fresh = join(dir, 'openapi.ts');
try {
  execFileSync(join(root, 'node_modules', '.bin', 'openapi-typescript'), ['openapi.json', '-o', fresh], {
    cwd: root,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const committed = readFileSync(join(root, 'src', 'generated', 'openapi.ts'), 'utf8');
  if (readFileSync(fresh, 'utf8') !== committed) {
    console.error('src/generated/openapi.ts differs from what openapi.json generates: run `npm run generate` and commit');
    process.exit(1);
  }
  console.log('src/generated/openapi.ts matches openapi.json');
} finally {
  rmSync(dir, { recursive: true, force: true });
}
