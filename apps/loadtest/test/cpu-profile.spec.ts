// Reading a .cpuprofile: self time per function, and the package each belongs to (the pool's and the api's profiles).
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { packageOf, selfTimes, type CpuProfile } from '../src/bench/cpu-profile.js';

const file = (path: string) => pathToFileURL(join(process.cwd(), path)).href;

describe('a CPU profile read by function and by package', () => {
  const profile: CpuProfile = {
    nodes: [
      { id: 1, callFrame: { functionName: '(root)', url: '', lineNumber: -1 } },
      { id: 2, callFrame: { functionName: 'admitOrQueue', url: file('libs/db-pool/dist/pool/core/resource-pool.js'), lineNumber: 78 } },
      {
        id: 3,
        callFrame: { functionName: 'query', url: file('node_modules/typeorm/driver/postgres/PostgresQueryRunner.js'), lineNumber: 183 },
      },
      { id: 4, callFrame: { functionName: 'get busy', url: file('libs/db-pool/dist/pool/core/resource-pool.js'), lineNumber: 51 } },
      {
        id: 5,
        callFrame: {
          functionName: 'reply',
          url: file('node_modules/@nestjs/platform-express/adapters/express-adapter.js'),
          lineNumber: 90,
        },
      },
      { id: 6, callFrame: { functionName: '(garbage collector)', url: '', lineNumber: -1 } },
      { id: 7, callFrame: { functionName: 'writeHead', url: 'node:_http_server', lineNumber: 339 } },
    ],
    // µs between samples: each sample's time goes to the function it landed in.
    samples: [2, 3, 3, 4, 5, 6, 6, 7, 2],
    timeDeltas: [100, 200, 200, 50, 300, 400, 400, 25, 100],
  };

  it('sums the self time of each function, in ms, keyed by name, file and line', () => {
    const times = selfTimes(profile);
    expect(times.get('admitOrQueue libs/db-pool/dist/pool/core/resource-pool.js:79')).toBeCloseTo(0.2, 9);
    expect(times.get('query node_modules/typeorm/driver/postgres/PostgresQueryRunner.js:184')).toBeCloseTo(0.4, 9);
    expect(times.get('(garbage collector)')).toBeCloseTo(0.8, 9);
    expect(times.get('writeHead node:_http_server:340')).toBeCloseTo(0.025, 9);
  });

  it('names the package of each: scoped ones whole, ours apart, a name with a space read right, V8 entries as they are', () => {
    const byPackage = new Map<string, number>();
    for (const [key, ms] of selfTimes(profile)) byPackage.set(packageOf(key), (byPackage.get(packageOf(key)) ?? 0) + ms);
    expect(Object.fromEntries([...byPackage].map(([k, v]) => [k, Math.round(v * 1000)]))).toEqual({
      'db-pool (ours)': 250,
      typeorm: 400,
      '@nestjs/platform-express': 300,
      '(garbage collector)': 800,
      node: 25,
    });
  });
});
