import { capturingLogger, eventually, poolFixture, proxyFixture } from './support/db.js';

describe('refill after connections are lost', () => {
  const { proxy, url } = proxyFixture();
  const { pool } = poolFixture();

  it('backs off per failed round, not per failed connection: 250, 500, 1000 ms with five connections missing', async () => {
    const logger = capturingLogger();
    const p = await pool({ url: url(), poolSize: 5, maxOverflow: 0 }, logger);
    await p.warmUp();
    await proxy().setMode('reset'); // every connection dies…
    await proxy().setMode('refuse'); // …and no new one can be opened
    const rounds = () => logger.lines.filter((l) => l.includes('refill failed'));
    expect(await eventually(() => rounds().length >= 3, 10_000)).toBe(true);
    const delays = rounds().map((l) => Number(/next round in (\d+) ms/.exec(l)![1]));
    expect(delays.slice(0, 3)).toEqual([250, 500, 1000]);
    expect(rounds()[0]).toMatch(/refill failed for 5 of 5 connection\(s\): connect ECONNREFUSED/);

    await proxy().setMode('pass');
    expect(await eventually(() => p.idleCount === 5, 10_000)).toBe(true);
  });
});
