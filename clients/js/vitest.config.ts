import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'test/**/*.test.tsx'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // each file starts its own agentcast servers: two at a time on a 2-core machine
    maxWorkers: 2,
  },
});
