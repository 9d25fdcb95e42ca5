import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Real mounts, servers, dbus-daemons and child processes: forks isolate them best.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // VM tests opt in with LIVEUP_VM_TESTS; one QEMU per slot (test/vm/qemu.ts, docs/testing.md).
    exclude: ['node_modules/**', 'dist/**'],
  },
});
