import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'test/**/*.test.tsx'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // one shared `agentcast serve --demo` (test/global-setup.ts); some files start their own
    globalSetup: ['test/global-setup.ts'],
    // two files at a time on a 2-core machine
    maxWorkers: 2,
  },
});
