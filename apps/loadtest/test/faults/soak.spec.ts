/** 20. Soak (short run; `npx nx run loadtest:soak` runs the long one). */
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../../../', import.meta.url));

describe('fault scenarios: soak', () => {
  it('mixed load with periodic backend kills: heap growth bounded, pool back at size, the process exits by itself', () => {
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}apps/loadtest/tsconfig.app.json`], {
      stdio: 'inherit',
    });
    const started = Date.now();
    const run = spawnSync(process.execPath, ['--expose-gc', `${root}apps/loadtest/dist/soak.js`, '--duration-s', '8'], {
      cwd: root,
      env: { PATH: process.env.PATH!, DATABASE_URL: process.env.DATABASE_URL! },
      encoding: 'utf8',
      timeout: 40_000, // a process that does not end by itself is killed here, and fails below
    });
    expect(run.error).toBeUndefined();
    expect(run.signal).toBeNull();
    // It ended by itself (the script never calls process.exit) soon after its 8 s of load.
    expect(Date.now() - started).toBeLessThan(25_000);
    expect(run.stderr).toBe('');
    // No line at all means the process ended with work still pending (an empty event loop).
    expect(run.stdout).toMatch(/^\{.*\}$/m);
    const result = JSON.parse(run.stdout.trim().split('\n').pop()!);
    expect(result).toMatchObject({ gc: true, heap_ok: true, pool_back_at_size: true, served: true, ok: true });
    expect(result.kills).toBeGreaterThan(5);
    expect(run.status).toBe(0);
  }, 60_000);
});
