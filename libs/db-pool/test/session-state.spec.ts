import type pg from 'pg';
import { poolFixture } from './support/db.js';

/** What the next borrower of a connection sees of the session. */
async function sessionOf(client: pg.PoolClient) {
  const { rows } = await client.query<{ role: string; tz: string; chars: number; tenant: string | null; listening: number }>(
    "SELECT current_user AS role, current_setting('TimeZone') AS tz, length('café') AS chars, current_setting('app.tenant_id', true) AS tenant, (SELECT count(*)::int FROM pg_listening_channels()) AS listening",
  );
  return rows[0];
}
const CLEAN = { role: 'postgres', tz: expect.any(String), chars: 4, listening: 0 };

describe('session state a borrower leaves is reset before the next one', () => {
  const { admin, pool } = poolFixture();
  let role = '';
  beforeAll(async () => {
    role = (await admin().query<{ u: string }>('SELECT current_user AS u')).rows[0].u;
    CLEAN.role = role;
  });

  it('auto (the default): SET ROLE, SET client_encoding, SET TimeZone and LISTEN are undone on return', async () => {
    // One connection: the next borrower gets the very one that was handed back.
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const fresh = await p.connect();
    const before = await sessionOf(fresh);
    fresh.release();

    const a = await p.connect();
    await a.query('SET ROLE pg_read_all_data');
    await a.query("SET client_encoding = 'LATIN1'");
    await a.query("SET TimeZone = 'Asia/Tokyo'");
    await a.query('LISTEN tenant_42_events');
    a.release();

    const b = await p.connect();
    let notified = false;
    b.on('notification', () => (notified = true));
    expect(await sessionOf(b)).toMatchObject({ ...CLEAN, tz: before.tz });
    await admin().query("NOTIFY tenant_42_events, 'meant for tenant 42'");
    await b.query('SELECT 1');
    expect(notified).toBe(false);
    b.removeAllListeners('notification');
    b.release();
    expect(p.counters.sessionResets).toBe(1);
  });

  it('auto: a reported setting changed by set_config() is undone too; a checkout that changes nothing costs no reset', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0 });
    const a = await p.connect();
    const tz = (await sessionOf(a)).tz;
    await a.query("SELECT set_config('TimeZone', 'Asia/Tokyo', false)");
    a.release();
    const b = await p.connect();
    expect((await sessionOf(b)).tz).toBe(tz);
    b.release();
    expect(p.counters.sessionResets).toBe(1);
    const c = await p.connect();
    await c.query('SELECT 1');
    c.release();
    expect(p.counters.sessionResets).toBe(1);
  });

  it('always: a custom setting from set_config() and a session advisory lock are undone as well', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, resetSession: 'always' });
    const a = await p.connect();
    await a.query("SELECT set_config('app.tenant_id', '42', false)");
    await a.query('SELECT pg_advisory_lock(424242)');
    a.release();
    const b = await p.connect();
    expect(await sessionOf(b)).toMatchObject({ ...CLEAN, tenant: expect.not.stringContaining('42') });
    expect((await admin().query<{ ok: boolean }>('SELECT pg_try_advisory_lock(424242) AS ok')).rows[0].ok).toBe(true);
    await admin().query('SELECT pg_advisory_unlock_all()');
    b.release();
  });

  it('a named prepared statement keeps working after a session reset (the reset is not DISCARD ALL)', async () => {
    const p = await pool({ poolSize: 1, maxOverflow: 0, resetSession: 'always' });
    const a = await p.connect();
    expect((await a.query({ name: 'reset-probe', text: 'SELECT $1::int AS n', values: [1] })).rows[0].n).toBe(1);
    a.release();
    const b = await p.connect();
    expect((await b.query({ name: 'reset-probe', text: 'SELECT $1::int AS n', values: [2] })).rows[0].n).toBe(2);
    b.release();
  });
});
