import { defineConfig } from 'vitest/config';

// Runs against a real chat-local process (see test/chat-local.integration.test.ts).
export default defineConfig({
  test: {
    include: ['test/**/*.integration.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    fileParallelism: false,
  },
});
