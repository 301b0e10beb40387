import { eventually, poolFixture, proxyFixture } from './support/db.js';

describe('a connection whose socket died is dropped when it is released', () => {
  const { proxy, url } = proxyFixture();
  const { admin, pool } = poolFixture();

  it('reset mid-query, then released from a finally without the error: its slot is free at once', async () => {
    // A long validation timeout: if the release waited for a ReadyForQuery, the slot would stay taken.
    const p = await pool({ url: url(), poolSize: 1, maxOverflow: 0, validationTimeoutMs: 30_000 });
    await p.warmUp();
    const client = await p.connect();
    let failure: unknown;
    try {
      const running = client.query('SELECT pg_sleep(30)');
      await eventually(
        async () =>
          (await admin().query("SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'", [p.settings.name]))
            .rowCount === 1,
      );
      await proxy().setMode('reset');
      await running;
    } catch (err) {
      failure = err;
    } finally {
      client.release();
    }
    expect(String(failure)).toMatch(/ECONNRESET|Connection terminated/);
    // Removed by the release itself, not by a timer.
    expect(p.state()).toEqual({ total: 0, active: 0, idle: 0, waiting: 0 });
    // The next caller gets a working connection straight away.
    const next = await p.connect();
    expect((await next.query<{ n: number }>('SELECT 1 AS n')).rows[0].n).toBe(1);
    next.release();
  });

  it('the same when the server ended the connection (backend terminated while checked out)', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, validationTimeoutMs: 30_000 });
    await p.warmUp();
    const client = await p.connect();
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    await admin().query('SELECT pg_terminate_backend($1)', [pid]);
    await expect(client.query('SELECT 1')).rejects.toThrow();
    client.release();
    expect(p.state()).toEqual({ total: 0, active: 0, idle: 0, waiting: 0 });
  });
});
