import { defineConfig } from 'vitest/config';

/**
 * The browser tests: real servers, real Chromium. One file at a time (a
 * 2-core CI machine runs Chromium and the servers), each with its own
 * servers on free ports.
 */
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 90_000,
    hookTimeout: 120_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
