import { defineConfig } from 'vitest/config';

/** Unit tests of the console's logic (no browser, no server). */
export default defineConfig({
  resolve: { alias: { '@scalechat/client': new URL('../clients/typescript/src/index.ts', import.meta.url).pathname } },
  test: { include: ['src/**/*.test.ts'] },
});
