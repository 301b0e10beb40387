// The connect circuit breaker's probe is bounded even where pg's options set no connect timeout:
// a server that accepts and never answers (a blackhole in the fault proxy) holds it only until
// INTERNAL_CONNECT_TIMEOUT_MS, and a readiness probe may send a fresh one before that.
import { performance } from 'node:perf_hooks';
import { DbPool, PoolUnavailableError } from '../src/index.js';
import { STALE_PROBE_MS } from '../src/pool/breaker.js';
import { INTERNAL_CONNECT_TIMEOUT_MS } from '../src/pool/connector.js';
import { eventually, proxyFixture } from './support/db.js';

const { proxy, url } = proxyFixture();
const pools: DbPool[] = [];
afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => (p.ending ? undefined : p.end())));
});

/** A drop-in pool as pg users build one: no connectionTimeoutMillis, so pg sets no connect bound. */
async function dropIn(): Promise<DbPool> {
  const p = new DbPool({ connectionString: url(), max: 2 });
  pools.push(p);
  await p.query('SELECT 1');
  return p;
}

const succeeds = (p: DbPool) =>
  p.query('SELECT 1').then(
    () => true,
    () => false,
  );

/** The server refuses until the breaker opens, then accepts and never answers while the breaker's probe goes out. */
async function probeStuckOnBlackhole(p: DbPool): Promise<void> {
  await proxy().setMode('reset');
  await proxy().setMode('refuse');
  expect(await eventually(async () => (await p.query('SELECT 1').catch((e: Error) => e)) instanceof PoolUnavailableError)).toBe(true);
  await proxy().setMode('blackhole');
  const accepted = proxy().accepted;
  // The breaker's own probe goes after its back-off, into the blackhole, and stays there.
  expect(await eventually(() => p.breakerState().state === 'half-open' && proxy().accepted > accepted)).toBe(true);
}

describe('the breaker probe against a server that accepts and never answers', () => {
  it('ends within INTERNAL_CONNECT_TIMEOUT_MS, so queries succeed within that bound plus one back-off after the server is back', async () => {
    const p = await dropIn();
    await probeStuckOnBlackhole(p);
    await proxy().setMode('pass');
    const back = performance.now();
    // Until the stuck probe ends, every query is refused at once: none waits for it.
    expect(await eventually(() => succeeds(p), INTERNAL_CONNECT_TIMEOUT_MS + 3_000, 20)).toBe(true);
    const tookMs = performance.now() - back;
    expect(tookMs).toBeLessThan(INTERNAL_CONNECT_TIMEOUT_MS + 800 + 500);
    expect(p.breakerState().state).toBe('closed');
  });

  it('a readiness probe sends a fresh probe past a stuck one, and the breaker closes at once', async () => {
    const p = await dropIn();
    await probeStuckOnBlackhole(p);
    await proxy().setMode('pass');
    // The stuck probe has been out longer than STALE_PROBE_MS: readiness may send another.
    await new Promise((resolve) => setTimeout(resolve, STALE_PROBE_MS));
    const started = performance.now();
    await p.ping(1_000);
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(p.breakerState().state).toBe('closed');
    expect(await succeeds(p)).toBe(true);
  });
});
