import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { eventually } from '../../../tools/wait.mjs';
import { databaseUrl, itemsFixture } from './support/items-fixture.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked by the assertions
const json = async (res: Response): Promise<any> => res.json();

/** POST /items with an Idempotency-Key: a client's retry of a write whose answer it never got writes it once. */
describe('api over real HTTP: POST /items with an Idempotency-Key', () => {
  const tag = `idem-${process.pid}-${Date.now()}`;
  const applicationName = `api-${tag}`;
  const fixture = itemsFixture(tag, { poolSize: 2, maxOverflow: 4, applicationName });
  let base: string;
  let admin: pg.Client;
  beforeAll(() => {
    base = fixture.base();
    admin = fixture.admin();
  });

  const post = (body: unknown, key?: string, headers: Record<string, string> = {}, signal?: AbortSignal) =>
    fetch(`${base}/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(key === undefined ? {} : { 'idempotency-key': key }), ...headers },
      body: JSON.stringify(body),
      signal,
    });
  const rowsWithKey = async (key: string) =>
    (await admin.query<{ id: number; name: string }>('SELECT id, name FROM items WHERE idempotency_key = $1', [key])).rows;
  const countNamed = async (name: string) =>
    (await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM items WHERE name = $1', [name])).rows[0].n;
  /** The api's statements waiting on a lock (a row another transaction holds). */
  const waitingOnLock = async () =>
    (
      await admin.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        [applicationName],
      )
    ).rows[0].n;
  /** Another transaction holds the key's row, uncommitted: a POST with that key waits on it. */
  const holdKey = async (key: string) => {
    const holder = new pg.Client({ connectionString: databaseUrl() });
    await holder.connect();
    await holder.query('BEGIN');
    await holder.query('INSERT INTO items (name, idempotency_key) VALUES ($1, $2)', [`${tag}-holder`, key]);
    return {
      release: async () => {
        await holder.query('ROLLBACK');
        await holder.end();
      },
    };
  };

  it('a second POST with the same key creates nothing and answers 201 with the stored row', async () => {
    const key = randomUUID();
    const first = await post({ name: `${tag}-twice` }, key);
    expect(first.status).toBe(201);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    const stored = await json(first);

    const second = await post({ name: `${tag}-twice` }, key);
    expect(second.status).toBe(201);
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(await json(second)).toEqual(stored);
    expect(await rowsWithKey(key)).toEqual([{ id: stored.id, name: `${tag}-twice` }]);
    expect(await countNamed(`${tag}-twice`)).toBe(1);
  });

  it('concurrent POSTs with the same key create one row, and each answers 201 with it', async () => {
    const key = randomUUID();
    // Every request is in the database, waiting on the key, before any can insert.
    const held = await holdKey(key);
    const requests = Array.from({ length: 4 }, () => post({ name: `${tag}-concurrent` }, key));
    try {
      expect(await eventually(async () => (await waitingOnLock()) === 4, 10_000)).toBe(true);
    } finally {
      await held.release();
    }
    const responses = await Promise.all(requests);
    expect(responses.map((r) => r.status)).toEqual([201, 201, 201, 201]);
    const bodies = await Promise.all(responses.map(json));
    expect(new Set(bodies.map((b) => JSON.stringify(b))).size).toBe(1);
    expect(responses.filter((r) => r.headers.get('idempotent-replayed') === null)).toHaveLength(1);
    expect(await rowsWithKey(key)).toEqual([{ id: bodies[0].id, name: `${tag}-concurrent` }]);
  });

  it('the same key with a different body is refused with 422 and writes nothing', async () => {
    const key = randomUUID();
    expect((await post({ name: `${tag}-original` }, key)).status).toBe(201);
    const res = await post({ name: `${tag}-different` }, key);
    expect(res.status).toBe(422);
    expect((await json(res)).message).toBe('this Idempotency-Key was already used for a different request; send a new key for a new item');
    expect(await countNamed(`${tag}-different`)).toBe(0);
    expect(await rowsWithKey(key)).toEqual([{ id: expect.any(Number), name: `${tag}-original` }]);
  });

  it('a body that validates to the same item (surrounding spaces trimmed) is the same request', async () => {
    const key = randomUUID();
    const first = await json(await post({ name: `${tag}-trimmed` }, key));
    const again = await post({ name: `  ${tag}-trimmed ` }, key);
    expect(again.status).toBe(201);
    expect(await json(again)).toEqual(first);
    expect(await countNamed(`${tag}-trimmed`)).toBe(1);
  });

  it('a write whose answer the client never got is retried with its key and creates no duplicate', async () => {
    const key = randomUUID();
    const held = await holdKey(key);
    const gaveUp = new AbortController();
    const lost = post({ name: `${tag}-lost-answer` }, key, {}, gaveUp.signal).catch((err: unknown) => err);
    try {
      expect(await eventually(async () => (await waitingOnLock()) === 1, 10_000)).toBe(true);
      // The client gives up (a timeout, a dropped connection); the server goes on and commits.
      gaveUp.abort();
      expect(await lost).toMatchObject({ name: 'AbortError' });
    } finally {
      await held.release();
    }
    expect(await eventually(async () => (await rowsWithKey(key)).length === 1, 10_000)).toBe(true);

    const retry = await post({ name: `${tag}-lost-answer` }, key);
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(await json(retry)).toMatchObject({ id: (await rowsWithKey(key))[0].id, name: `${tag}-lost-answer` });
    expect(await countNamed(`${tag}-lost-answer`)).toBe(1);
  });

  it('a write cancelled by its deadline (503 deadline_exceeded) was rolled back: its retry with the key writes it once', async () => {
    const key = randomUUID();
    const held = await holdKey(key);
    let res: Response;
    try {
      res = await post({ name: `${tag}-deadline` }, key, { 'x-request-deadline-ms': '300' });
      // The cancel has reached the server once the statement no longer waits on the key.
      expect(await eventually(async () => (await waitingOnLock()) === 0, 10_000)).toBe(true);
    } finally {
      await held.release();
    }
    expect(res.status).toBe(503);
    expect(await json(res)).toMatchObject({ condition: 'deadline_exceeded', retry_after: 1 });
    expect(await rowsWithKey(key)).toEqual([]);

    const retry = await post({ name: `${tag}-deadline` }, key);
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(await countNamed(`${tag}-deadline`)).toBe(1);
  });

  it('takes the key in the Structured Fields form too ("…" quoted): the same key', async () => {
    const key = randomUUID();
    const first = await json(await post({ name: `${tag}-quoted` }, key));
    const again = await post({ name: `${tag}-quoted` }, `"${key}"`);
    expect(again.status).toBe(201);
    expect(await json(again)).toEqual(first);
    expect(await countNamed(`${tag}-quoted`)).toBe(1);
  });

  it.each([
    ['empty', ''],
    ['too short (a key is global to the api: a random one, such as a UUID)', 'abc123'],
    ['too long', 'k'.repeat(129)],
    ['with a space', 'abcdefgh ijklmnop'],
    ['with a character outside the set', 'abcdefgh;ijklmnop'],
    ['sent twice (joined with a comma)', 'abcdefghijklmnop, abcdefghijklmnop'],
  ])('an Idempotency-Key %s is a 400 with a clear message and writes nothing', async (_case, key) => {
    const name = `${tag}-bad-key`;
    const res = await post({ name }, key);
    expect(res.status).toBe(400);
    expect((await json(res)).message).toEqual([
      'Idempotency-Key must be 16 to 128 characters: letters, digits and - _ . : ~ + / = (a UUID, for example)',
    ]);
    expect(await countNamed(name)).toBe(0);
  });

  it('GET /items/:id does not show the key: another client could replay it', async () => {
    const key = randomUUID();
    const created = await json(await post({ name: `${tag}-hidden` }, key));
    const res = await fetch(`${base}/items/${created.id}`);
    expect(JSON.stringify(await json(res))).not.toContain(key);
  });
});
