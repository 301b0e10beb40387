import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../../', import.meta.url));

function verify(env: Record<string, string>) {
  return spawnSync(process.execPath, [`${root}apps/loadtest/dist/verify.js`], {
    cwd: root,
    env: { PATH: process.env.PATH!, ...env },
    encoding: 'utf8',
    timeout: 60_000,
  });
}

describe('npm run verify (the quick verification report)', () => {
  beforeAll(() => {
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}apps/loadtest/tsconfig.app.json`], {
      stdio: 'inherit',
    });
  });

  it("prints the three tests in the original script's format and exits 0 when every check passes", () => {
    const run = verify({ DATABASE_URL: process.env.DATABASE_URL!, DB_POOL_SIZE: '5', DB_MAX_OVERFLOW: '10' });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    const out = run.stdout;
    for (const line of [
      'TEST 1: Single Connection',
      '✅ Single connection works',
      'TEST 2: Sequential Connections (Pool Reuse)',
      '✅ All connections returned to pool',
      'TEST 3: Pool Monitoring',
      '  Size: 5',
      '  Max Overflow: 10',
      '  Total Capacity: 15',
      '  Timeout: 30.0s',
      '  Recycle: 3600s',
      '  Pre-ping: True',
      '  Checked Out: 0',
      '  Checked In: 5',
      '  Utilization: 0.0%',
      '  Health: healthy',
      '  - Pool is healthy. No action needed.',
      '✅ No connection leaks detected',
      '✅ Pool is healthy',
      'ALL CHECKS PASSED',
    ]) {
      expect(out.split('\n')).toContain(line);
    }
    expect(out).toMatch(/^50 sequential queries in \d+\.\d\ds$/m);
    expect(out).toMatch(/^Average: \d+\.\d\dms per query$/m);
    expect(out).not.toContain('❌');
  });

  it('exits non-zero with the reason when a check cannot pass', () => {
    const run = verify({ DATABASE_URL: 'postgres://nobody:secret@127.0.0.1:1/none', DB_POOL_SIZE: '2' });
    expect(run.status).toBe(1);
    expect(run.stdout).toContain('❌');
    expect(run.stdout).not.toContain('secret');
  });
});
