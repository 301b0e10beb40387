/**
 * #21 item 6: work stops when the caller is gone. Under `withSignal`, an abort fails an acquire
 * still waiting, refuses a statement not yet sent, and cancels a running one on the server; the
 * connection goes back to the pool clean and is reused. The api wires a request's disconnect to
 * it (apps/api/test/disconnect.e2e.spec.ts).
 */
import pg from 'pg';
import { PoolAbortedError, PoolDeadlineError, withDeadline, withSignal } from '../src/index.js';
import { backendPids, eventually, poolFixture } from './support/db.js';

/** The pool's sessions running `text` on the server now. */
async function running(admin: pg.Client, applicationName: string, text: string): Promise<number> {
  const { rows } = await admin.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query = $2",
    [applicationName, text],
  );
  return rows[0].n;
}

describe('withSignal: an abort stops the caller’s work', () => {
  const { admin, pool } = poolFixture();
  const SLOW = 'SELECT pg_sleep(30) AS slept';

  it.each([
    ['pool.query', 'query'],
    ['a lease taken before the abort', 'lease'],
  ])(
    '%s: a running statement is cancelled on the server, fails with PoolAbortedError (sent), and its connection is reused',
    async (_, how) => {
      const p = await pool({ poolSize: 1, maxOverflow: 0 });
      const name = p.settings.name;
      const [pid] = await backendPids(admin(), name);
      const controller = new AbortController();
      const result = withSignal(controller.signal, async () => {
        if (how === 'query') return p.query(SLOW);
        const lease = await p.connect();
        try {
          return await lease.query(SLOW);
        } finally {
          lease.release();
        }
      }).catch((e: unknown) => e);
      expect(await eventually(async () => (await running(admin(), name, SLOW)) === 1)).toBe(true);
      controller.abort(new Error('client gone'));
      const err = await result;
      expect(err).toBeInstanceOf(PoolAbortedError);
      expect(err).toBeInstanceOf(PoolDeadlineError); // handled wherever a passed deadline is
      expect(err).toMatchObject({ sent: true, reason: new Error('client gone') });
      expect((err as Error).message).toMatch(/the caller's signal aborted while the statement ran \(it was cancelled on the server\)/);
      // The error reaches us just before the backend reports itself idle: wait for that, briefly.
      expect(await eventually(async () => (await running(admin(), name, SLOW)) === 0)).toBe(true);
      // Back in the pool, the same server session, clean: no transaction left open.
      expect(await eventually(() => p.idleCount === 1)).toBe(true);
      expect(await backendPids(admin(), name)).toEqual([pid]);
      expect((await p.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect(p.counters.removed).toBe(0);
    },
  );

  it('an acquire waiting for a connection leaves the queue at the abort, failing with PoolAbortedError (not sent)', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, poolTimeoutSeconds: 30 });
    const held = await p.connect();
    const controller = new AbortController();
    const waiting = withSignal(controller.signal, () => p.connect()).catch((e: unknown) => e);
    expect(await eventually(() => p.waitingCount === 1)).toBe(true);
    controller.abort();
    const err = await waiting;
    expect(err).toBeInstanceOf(PoolAbortedError);
    expect(err).toMatchObject({ sent: false });
    expect(p.waitingCount).toBe(0);
    held.release();
    // The connection was not handed to the caller that left.
    expect(await eventually(() => p.idleCount === 1)).toBe(true);
    expect(p.counters.timeouts).toBe(0);
  });

  it('with the signal already aborted, nothing is sent', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const lease = await p.connect();
    const controller = new AbortController();
    controller.abort();
    try {
      const onLease = await withSignal(controller.signal, () => lease.query('SELECT 1')).catch((e: unknown) => e);
      expect(onLease).toBeInstanceOf(PoolAbortedError);
      expect(onLease).toMatchObject({ sent: false });
    } finally {
      lease.release();
    }
    const onPool = await withSignal(controller.signal, () => p.query('SELECT 1')).catch((e: unknown) => e);
    expect(onPool).toMatchObject({ name: 'PoolAbortedError', sent: false });
    expect(p.counters.acquired).toBe(1); // the lease's; the aborted pool.query never took one
  });

  it('a deadline in force still applies under a signal, and a signal under a deadline is kept', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const never = new AbortController();
    const byDeadline = await withSignal(never.signal, () => withDeadline(200, () => p.query(SLOW))).catch((e: unknown) => e);
    expect(byDeadline).toBeInstanceOf(PoolDeadlineError);
    expect(byDeadline).not.toBeInstanceOf(PoolAbortedError);

    const controller = new AbortController();
    const bySignal = withDeadline(60_000, () => withSignal(controller.signal, () => p.query(SLOW))).catch((e: unknown) => e);
    expect(await eventually(async () => (await running(admin(), p.settings.name, SLOW)) === 1)).toBe(true);
    controller.abort();
    expect(await bySignal).toBeInstanceOf(PoolAbortedError);
    expect(await eventually(() => p.idleCount === 1)).toBe(true);
  });

  it('refuses what is not an AbortSignal, in withSignal and in withDeadline’s options, before running anything', () => {
    let ran = false;
    expect(() => withSignal({} as AbortSignal, () => (ran = true))).toThrow(/withSignal: the first argument must be an AbortSignal/);
    expect(() => withDeadline(100, () => (ran = true), { signal: 'soon' as unknown as AbortSignal })).toThrow(
      /withDeadline: options\.signal must be an AbortSignal/,
    );
    expect(ran).toBe(false);
  });
});
