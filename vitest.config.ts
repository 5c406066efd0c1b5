import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'packages/client/test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Spawned Kiln processes and PGlite instances are heavy on a 2-core machine.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
