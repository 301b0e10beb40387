import { PoolClosedError } from '../src/index.js';
import { eventually, poolFixture, proxyFixture } from './support/db.js';

describe('shutdown never strands a caller', () => {
  const { proxy, url } = proxyFixture();
  const { pool } = poolFixture();

  it('a caller whose connection is still being opened when the grace ends is failed then, not at its own deadline', async () => {
    // Deadlines far beyond the grace: had the caller been left to them, the test would time out.
    const p = pool({ url: url(), poolSize: 1, maxOverflow: 1, poolTimeout: 50, connectTimeout: 50, shutdownGrace: 1 });
    await p.warmUp();
    const held = await p.connect();
    await proxy().setMode('blackhole'); // new connections are accepted and never answered
    const waiting = p.connect().catch((e: unknown) => e);
    expect(await eventually(() => p.totalCount === 2)).toBe(true); // the second is being opened
    const ending = p.end();
    const err = await waiting;
    expect(err).toBeInstanceOf(PoolClosedError);
    await ending;
    expect(p.counters.connectErrors).toBe(0);
    expect(() => held.release()).not.toThrow(); // released after the end: harmless
  }, 20_000);
});
