import type { DbPool, DbPoolLogger } from '../src/index.js';
import { CheckoutLeakTracker, type LeakRecord } from '../src/pool/leak-tracker.js';
import { createTestPool, eventually } from './support/db.js';

/** Collects what a tracker or pool logs, one string per line, prefixed with its level. */
function recorder(): { logger: DbPoolLogger; lines: string[] } {
  const lines: string[] = [];
  return { lines, logger: { log: (m) => lines.push(`log ${m}`), warn: (m) => lines.push(`warn ${m}`) } };
}

describe('leak tracking: the stack budget (DB_POOL_LEAK_STACK_RATE), with a fake clock', () => {
  let now = 0;
  const clock = () => now;
  /** The connections the tracker watches, as a pool keeps them. */
  let records: LeakRecord[] = [];
  const connection = (): LeakRecord => {
    const record: LeakRecord = { checkedOutAt: -1, leakSite: undefined, leakSpan: undefined, leakReported: false };
    records.push(record);
    return record;
  };
  /** A checkout as the pool makes one: the time on the record, then the tracker. */
  const checkout = (tracker: CheckoutLeakTracker, record: LeakRecord, site: LeakRecord['leakSite']) => {
    record.checkedOutAt = now;
    tracker.checkout(record, site, undefined);
  };
  const checkin = (tracker: CheckoutLeakTracker, record: LeakRecord) => {
    tracker.checkin(record);
    record.checkedOutAt = -1;
  };
  const takeConnection = function takeConnection(tracker: CheckoutLeakTracker, record: LeakRecord) {
    checkout(tracker, record, tracker.capture(takeConnection));
  };

  function tracker(stackRate: number, thresholdMs = 10_000) {
    now = 0;
    records = [];
    const rec = recorder();
    return {
      rec,
      tracker: new CheckoutLeakTracker({
        poolName: 't',
        thresholdMs,
        stackRate,
        logger: rec.logger,
        records: () => records,
        now: clock,
        timer: false,
      }),
    };
  }

  it("captures at most the rate per second, a tenth of a second's worth at once: a burst after a quiet spell does not spend a whole second's budget", () => {
    const { tracker: t } = tracker(100);
    for (let i = 0; i < 1_000; i++) t.capture(takeConnection);
    expect(t.stackStats()).toEqual({ captured: 10, skipped: 990, armed: false });

    now = 250; // a quarter of a second: 25 earned, 10 held at most
    t.refill();
    for (let i = 0; i < 1_000; i++) t.capture(takeConnection);
    expect(t.stackStats().captured).toBe(20);

    // Refilled every 100 ms, a busy second spends the whole rate, and no more.
    for (let step = 1; step <= 10; step++) {
      now = 250 + step * 100;
      t.refill();
      for (let i = 0; i < 100; i++) t.capture(takeConnection);
    }
    expect(t.stackStats().captured).toBe(120);

    now = 60_000; // a long idle spell refills a tenth of a second's worth, not more
    t.refill();
    for (let i = 0; i < 1_000; i++) t.capture(takeConnection);
    expect(t.stackStats().captured).toBe(130);
  });

  it('a leak taken past the budget is reported without a stack, says why, and arms capture for the next one', () => {
    const { tracker: t, rec } = tracker(1, 10_000);
    const quick = connection();
    takeConnection(t, quick); // uses the one stack, and comes back
    checkin(t, quick);
    const leaked = connection();
    takeConnection(t, leaked);
    expect(t.stackStats()).toMatchObject({ captured: 1, skipped: 1, armed: false });

    now = 5_000; // held for half the threshold: armed, every checkout gets a stack
    t.sweep();
    expect(t.stackStats().armed).toBe(true);
    const stacksBefore = t.stackStats().captured;
    for (let i = 0; i < 50; i++) expect(t.capture(t.capture)?.stack).toContain('leak-tracking.spec');
    expect(t.stackStats().captured).toBe(stacksBefore + 50);
    const second = connection();
    takeConnection(t, second);

    now = 10_000;
    t.sweep();
    const first = rec.lines.filter((l) => l.startsWith('warn'));
    expect(first).toHaveLength(1);
    expect(first[0]).toContain('checked out for 10.0 s (DB_POOL_LEAK_THRESHOLD=10 s)');
    expect(first[0]).toContain('its stack was not captured: checkouts were coming faster than DB_POOL_LEAK_STACK_RATE=1 stacks per second');

    now = 15_000;
    t.sweep();
    const warnings = rec.lines.filter((l) => l.startsWith('warn'));
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toMatch(
      /checked out for 10\.0 s \(DB_POOL_LEAK_THRESHOLD=10 s\); it was checked out at:\n\s+at .*leak-tracking\.spec/,
    );
    expect(warnings[1]).not.toContain('at takeConnection'); // the frames from `above` down are left out

    checkin(t, leaked);
    checkin(t, second);
    expect(t.outstanding()).toBe(0);
    expect(rec.lines.filter((l) => l.includes('possibly leaked was returned'))).toHaveLength(2);
  });

  it('disarms one threshold after the last checkout held past half of it', () => {
    const { tracker: t } = tracker(1, 10_000);
    const held = connection();
    checkout(t, held, undefined);
    now = 5_000;
    t.sweep();
    expect(t.stackStats().armed).toBe(true);
    checkin(t, held);
    now = 14_999;
    t.sweep();
    expect(t.stackStats().armed).toBe(true);
    now = 15_000;
    t.sweep();
    expect(t.stackStats().armed).toBe(false);
  });

  it('a reported checkout that stays out does not keep capture armed', () => {
    const { tracker: t } = tracker(1, 10_000);
    checkout(t, connection(), undefined); // never comes back
    now = 10_000;
    t.sweep(); // reported
    now = 20_001;
    t.sweep();
    expect(t.outstanding()).toBe(1);
    expect(t.stackStats().armed).toBe(false);
  });

  it('DB_POOL_LEAK_STACK_RATE=0 captures nothing, armed or not, and the report says so', () => {
    const { tracker: t, rec } = tracker(0, 10_000);
    takeConnection(t, connection());
    now = 5_000;
    t.sweep();
    expect(t.stackStats().armed).toBe(true);
    expect(t.capture(takeConnection)).toBeUndefined();
    now = 10_000;
    t.sweep();
    expect(rec.lines.find((l) => l.startsWith('warn'))).toContain('no stack was captured (DB_POOL_LEAK_STACK_RATE=0)');
    expect(t.stackStats()).toEqual({ captured: 0, skipped: 2, armed: true });
  });
});

describe('leak tracking on a pool under load (real PostgreSQL)', () => {
  const pools: DbPool[] = [];
  afterEach(async () => {
    await Promise.all(pools.splice(0).map((p) => p.end()));
  });

  async function pool(options: Parameters<typeof createTestPool>[0], logger: DbPoolLogger): Promise<DbPool> {
    const created = await createTestPool(options, logger);
    pools.push(created);
    return created;
  }

  it('a burst of checkouts stays within the stack rate; a held connection arms capture; the leak it reports carries the stack of the code that took it', async () => {
    const rec = recorder();
    const p = await pool({ poolSize: 3, maxOverflow: 0, leakThresholdSeconds: 2, leakStacksPerSecond: 5 }, rec.logger);
    await p.warmUp();

    const started = Date.now();
    for (let i = 0; i < 200; i++) await p.query('SELECT 1');
    const elapsedS = (Date.now() - started) / 1000;
    const burst = p.leakStackStats();
    expect(burst.captured + burst.skipped).toBe(200);
    // The bucket holds a tenth of a second's worth (at least one stack) and earns 5 a second.
    expect(burst.captured).toBeLessThanOrEqual(1 + Math.ceil(elapsedS * 5) + 1);
    expect(burst.armed).toBe(false);

    const held = await p.connect(); // held past half the threshold: capture arms
    expect(await eventually(() => p.leakStackStats().armed, 3_000)).toBe(true);
    const before = p.leakStackStats();
    for (let i = 0; i < 100; i++) await p.query('SELECT 1');
    expect(p.leakStackStats().captured - before.captured).toBe(100);
    expect(p.leakStackStats().skipped).toBe(before.skipped);

    const leaked = await p.connect(); // taken while armed: its report has the stack
    expect(await eventually(() => rec.lines.filter((l) => l.startsWith('warn')).length === 2, 5_000)).toBe(true);
    const [, second] = rec.lines.filter((l) => l.startsWith('warn'));
    expect(second).toMatch(
      /possible connection leak: a connection has been checked out for [23]\.\d s \(DB_POOL_LEAK_THRESHOLD=2 s\); it was checked out at:\n\s+at .*leak-tracking\.spec/,
    );
    held.release();
    leaked.release();
    expect(p.leaksOutstanding()).toBe(0);
  });
});
