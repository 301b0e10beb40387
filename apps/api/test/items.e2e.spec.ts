import 'reflect-metadata';
import type pg from 'pg';
import { itemsFixture } from './support/items-fixture.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked by the assertions
const body = async (res: Response): Promise<any> => res.json();

describe('api over real HTTP: items and liveness', () => {
  const tag = `e2e-${process.pid}-${Date.now()}`;
  const fixture = itemsFixture(tag);
  let base: string;
  let admin: pg.Client;
  beforeAll(() => {
    base = fixture.base();
    admin = fixture.admin();
  });

  const post = (body: unknown, raw = false) =>
    fetch(`${base}/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: raw ? (body as string) : JSON.stringify(body),
    });

  it('GET /health/live answers 200 with the Terminus envelope', async () => {
    const res = await fetch(`${base}/health/live`);
    expect(res.status).toBe(200);
    expect(await body(res)).toEqual({ status: 'ok', info: {}, error: {}, details: {} });
  });

  it('POST /items writes the row and returns it with 201', async () => {
    const res = await post({ name: `${tag}-first` });
    expect(res.status).toBe(201);
    const item = await body(res);
    expect(item).toEqual({ id: expect.any(Number), name: `${tag}-first`, createdAt: expect.any(String) });
    const { rows } = await admin.query('SELECT name FROM items WHERE id = $1', [item.id]);
    expect(rows).toEqual([{ name: `${tag}-first` }]);
  });

  it('GET /items/:id returns the item, 404 when absent, 400 for a bad id', async () => {
    const created = await body(await post({ name: `${tag}-second` }));
    const res = await fetch(`${base}/items/${created.id}`);
    expect(res.status).toBe(200);
    expect(await body(res)).toMatchObject({ id: created.id, name: `${tag}-second` });

    const missing = await fetch(`${base}/items/2147483000`);
    expect(missing.status).toBe(404);
    expect((await body(missing)).message).toBe('item 2147483000 not found');
    expect((await fetch(`${base}/items/abc`)).status).toBe(400);
  });

  it('PATCH /items/:id renames the item and returns it as read back; 404 when absent, 400 for a bad body or id, 415 for a body that is not JSON', async () => {
    const created = await body(await post({ name: `${tag}-to-rename` }));
    const patch = (id: unknown, payload: unknown, type = 'application/json') =>
      fetch(`${base}/items/${String(id)}`, { method: 'PATCH', headers: { 'content-type': type }, body: JSON.stringify(payload) });
    const res = await patch(created.id, { name: `${tag}-renamed` });
    expect(res.status).toBe(200);
    expect(await body(res)).toEqual({ id: created.id, name: `${tag}-renamed`, createdAt: created.createdAt });
    const { rows } = await admin.query('SELECT name FROM items WHERE id = $1', [created.id]);
    expect(rows).toEqual([{ name: `${tag}-renamed` }]);
    // No read-your-writes in use (no replicas): no token.
    expect(res.headers.get('x-db-lsn')).toBeNull();

    const missing = await patch(2147483000, { name: 'x' });
    expect(missing.status).toBe(404);
    expect((await body(missing)).message).toBe('item 2147483000 not found');
    expect((await patch(created.id, { name: '' })).status).toBe(400);
    expect((await patch(created.id, { name: 'x', extra: 1 })).status).toBe(400);
    expect((await patch('abc', { name: 'x' })).status).toBe(400);
    expect((await patch(created.id, { name: 'x' }, 'text/plain')).status).toBe(415);
    expect((await admin.query('SELECT name FROM items WHERE id = $1', [created.id])).rows).toEqual([{ name: `${tag}-renamed` }]);
  });

  it('GET /items/stats totals the table', async () => {
    await post({ name: `${tag}-stats` });
    const count = async () => (await admin.query<{ n: number }>('SELECT count(*)::int AS n FROM items')).rows[0].n;
    const before = await count();
    const res = await fetch(`${base}/items/stats`);
    const after = await count();
    expect(res.status).toBe(200);
    const stats = await body(res);
    expect(stats).toMatchObject({ distinct_names: expect.any(Number), longest_name: expect.any(Number) });
    expect(stats.distinct_names).toBeGreaterThanOrEqual(1);
    // Nothing else writes during a test here; should something, the total lies between the two counts.
    expect(stats.items).toBeGreaterThanOrEqual(before);
    expect(stats.items).toBeLessThanOrEqual(after);
  });

  it('GET /items?limit= lists the newest items, and refuses a bad limit', async () => {
    for (const n of [1, 2, 3]) await post({ name: `${tag}-list-${n}` });
    const res = await fetch(`${base}/items?limit=2`);
    expect(res.status).toBe(200);
    const items = await body(res);
    expect(items).toHaveLength(2);
    expect(items[0].id).toBeGreaterThan(items[1].id);
    expect(items.map((i: { name: string }) => i.name)).toEqual([`${tag}-list-3`, `${tag}-list-2`]);
    for (const bad of ['0', '101', 'abc', '1.5']) expect((await fetch(`${base}/items?limit=${bad}`)).status).toBe(400);
  });

  it.each([
    ['a missing name', {}, 'name must be a string'],
    ['a non-string name', { name: 42 }, 'name must be a string'],
    ['an empty name', { name: '   ' }, 'name must not be empty'],
    ['a too long name', { name: 'x'.repeat(201) }, 'name must be at most 200 characters'],
    ['an unknown field', { name: 'ok', admin: true }, 'unknown field(s): admin'],
  ])('POST /items with %s is a 400 with a clear message and writes nothing', async (_case, payload, message) => {
    const before = (await admin.query('SELECT count(*)::int AS n FROM items')).rows[0].n;
    const res = await post(payload);
    expect(res.status).toBe(400);
    expect((await body(res)).message).toContain(message);
    expect((await admin.query('SELECT count(*)::int AS n FROM items')).rows[0].n).toBe(before);
  });

  it.each([
    ['a NUL character (PostgreSQL text cannot hold U+0000)', '{"name":"a\\u0000b"}', 'name must not contain the character U+0000'],
    [
      'a lone high surrogate (it would be stored as U+FFFD)',
      '{"name":"a\\ud800b"}',
      'name must be well-formed Unicode (no lone surrogate code units)',
    ],
    ['a lone low surrogate', '{"name":"\\udc00"}', 'name must be well-formed Unicode (no lone surrogate code units)'],
  ])('POST /items with %s is a 400 and writes nothing', async (_case, raw, message) => {
    const before = (await admin.query('SELECT count(*)::int AS n FROM items')).rows[0].n;
    const res = await post(raw, true);
    expect(res.status).toBe(400);
    expect((await body(res)).message).toContain(message);
    expect((await admin.query('SELECT count(*)::int AS n FROM items')).rows[0].n).toBe(before);
  });

  it('POST /items keeps a name with a surrogate pair (an emoji) as sent', async () => {
    const name = `${tag}-\u{1F600}-ok`;
    const res = await post({ name });
    expect(res.status).toBe(201);
    const created = await body(res);
    expect(created.name).toBe(name);
    expect((await admin.query('SELECT name FROM items WHERE id = $1', [created.id])).rows[0].name).toBe(name);
  });

  it.each([
    ['text/plain', 'name=x'],
    ['application/x-www-form-urlencoded', 'name=x'],
    [undefined, undefined],
  ])('POST /items with a %s body is 415 and writes nothing', async (type, payload) => {
    const before = (await admin.query('SELECT count(*)::int AS n FROM items')).rows[0].n;
    const res = await fetch(`${base}/items`, { method: 'POST', headers: type ? { 'content-type': type } : {}, body: payload });
    expect(res.status).toBe(415);
    expect((await body(res)).message).toBe('the body must be JSON, sent with Content-Type: application/json');
    expect((await admin.query('SELECT count(*)::int AS n FROM items')).rows[0].n).toBe(before);
  });

  it('POST /items takes application/json with a charset', async () => {
    const res = await fetch(`${base}/items`, {
      method: 'POST',
      headers: { 'content-type': 'application/json; charset=utf-8' },
      body: JSON.stringify({ name: `${tag}-charset` }),
    });
    expect(res.status).toBe(201);
  });

  it.each(['0x1', '1.0', '1e3', '+1', '01', ' 1', '-1', '0', '2147483648', '1,2'])(
    'GET /items/%s is a 400: ids are canonical decimal integers from 1',
    async (id) => {
      const res = await fetch(`${base}/items/${encodeURIComponent(id)}`);
      expect(res.status).toBe(400);
    },
  );

  it('GET /items?limit= (empty) is the default limit, as if absent; a repeated or non-decimal limit is a 400', async () => {
    const absent = await body(await fetch(`${base}/items`));
    const empty = await fetch(`${base}/items?limit=`);
    expect(empty.status).toBe(200);
    expect(await body(empty)).toEqual(absent);
    for (const bad of ['0x10', '1e1', '+5', '05', '5&limit=6']) expect((await fetch(`${base}/items?limit=${bad}`)).status).toBe(400);
  });

  it('POST /items with malformed JSON is a 400', async () => {
    const res = await post('{"name":', true);
    expect(res.status).toBe(400);
  });
});
