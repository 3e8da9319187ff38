import { defineConfig } from 'vitest/config';

// The cluster-mode fault run (see test/cluster.faults.test.ts).
export default defineConfig({
  test: {
    include: ['test/**/*.faults.test.ts'],
    testTimeout: 240_000,
    hookTimeout: 120_000,
    fileParallelism: false,
  },
});
