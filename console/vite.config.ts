/**
 * Build of the console. The output in `dist/` is committed: the API server
 * embeds it at compile time, so a fresh clone serves the console without
 * Node. The build must therefore be a pure function of the sources and the
 * lockfile (content-hashed names, no timestamps); `npm run check-dist`
 * rebuilds into a temporary directory and compares.
 *
 * The SDK is taken from its TypeScript sources (`../clients/typescript/src`)
 * rather than its `dist/`, which is not committed: the console is built on
 * exactly the SDK that sits beside it.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const sdk = fileURLToPath(new URL('../clients/typescript/src/index.ts', import.meta.url));
/** `vite dev` forwards the API to this server (the page and the API then share an origin). */
const devApi = process.env['CONSOLE_DEV_API'] ?? 'http://127.0.0.1:8080';

export default defineConfig({
  base: '/',
  resolve: { alias: { '@scalechat/client': sdk } },
  build: {
    outDir: process.env['CONSOLE_OUT_DIR'] ?? 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    // One small bundle: nothing is worth a second request.
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
  server: {
    proxy: { '/v1': devApi, '/openapi.json': devApi },
  },
});
