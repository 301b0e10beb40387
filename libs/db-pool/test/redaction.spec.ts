import { DbPool, DbPoolConfigError, PoolConnectError, redactUrl, resolveDbPoolConfig } from '../src/index.js';
import { scrubSecrets } from '../src/redact.js';
import { createTestPool, databaseUrl } from './support/db.js';

/** Every piece of three characters or more of a secret: none may show. */
function fragments(secret: string): string[] {
  const out: string[] = [];
  for (let i = 0; i + 3 <= secret.length; i++) out.push(secret.slice(i, i + 3));
  return out;
}
function expectNoFragment(text: string, secret: string): void {
  for (const piece of fragments(secret)) {
    const at = text.indexOf(piece);
    expect(at === -1 ? '' : `"${piece}" in: ${text}`).toBe('');
  }
}

// Each holds a character that ends a URL's user-info early if read naively.
const PASSWORDS = ['Zq9/xW7kP', 'Zq9@xW7kP', 'Zq9:xW7kP', 'Zq9#xW7kP', 'Zq9%xW7kP', 'Zq9 xW7kP', 'Zq9?xW7kP', 'Zq/9@x:W#7%k P?v'];

describe('secrets: passwords are masked where credentials stand', () => {
  it.each(PASSWORDS)('redactUrl masks %j written raw into a URL, and keeps the user, host and database', (password) => {
    const url = `postgres://app:${password}@db.internal:5432/app?sslmode=require`;
    const shown = redactUrl(url);
    expect(shown).toBe('postgres://app:***@db.internal:5432/app?sslmode=require');
    expectNoFragment(shown, password);
  });

  it.each(PASSWORDS)('redactUrl masks %j percent-encoded too', (password) => {
    const url = `postgresql://app:${encodeURIComponent(password)}@db:5432/app`;
    expect(redactUrl(url)).toBe('postgresql://app:***@db:5432/app');
  });

  it('masks secret query parameters (password, sslpassword), whatever they hold', () => {
    expect(redactUrl('postgres://app@db/app?sslmode=verify-full&sslpassword=k3y#p@ss&password=Zq9/x W&application_name=a')).toBe(
      'postgres://app@db/app?sslmode=verify-full&sslpassword=***&password=***&application_name=a',
    );
  });

  it('a value that is not a URL at all is masked too: libpq keyword form, a missing slash', () => {
    expect(redactUrl('host=db.internal port=5432 user=app password=Tr0ub4dor dbname=shop')).toBe(
      'host=db.internal port=5432 user=app password=*** dbname=shop',
    );
    expect(redactUrl("host=db password='Tr0 ub4dor' dbname=shop")).toBe('host=db password=*** dbname=shop');
    expect(redactUrl('postgres:/app:Tr0ub4dor@db.internal:5432/shop')).toBe('postgres:***@db.internal:5432/shop');
    expect(redactUrl('app:Tr0ub4dor@db.internal/shop')).toBe('app:***@db.internal/shop');
  });

  it('a URL with an @ in its query masks more than the password, never less', () => {
    const shown = redactUrl('postgres://app:Zq9/xW@db/app?application_name=me@host');
    expect(shown.startsWith('postgres://app:***@')).toBe(true);
    expectNoFragment(shown, 'Zq9/xW');
  });

  it('in free text, masks the credential positions only: a one-letter password leaves "database "x" does not exist" alone', () => {
    expect(scrubSecrets('database "x" does not exist')).toBe('database "x" does not exist');
    expect(scrubSecrets('could not connect to postgres://app:x@db/x: database "x" does not exist')).toBe(
      'could not connect to postgres://app:***@db/x: database "x" does not exist',
    );
    expect(scrubSecrets('host=db user=app password=Zq9xW7 dbname=app')).toBe('host=db user=app password=*** dbname=app');
    expect(scrubSecrets("host=db password='Zq9 xW7' dbname=app")).toBe('host=db password=*** dbname=app');
    // A password with a space, in a URL inside a sentence.
    const text = 'failed for postgres://app:Zq9 xW7@db/app today';
    expect(scrubSecrets(text)).toBe('failed for postgres://app:***@db/app today');
  });

  it('a connect error under a one-letter password keeps the server message whole', async () => {
    // "a" is in both answers the server may give: a wrong password (where it checks one) or
    // the database that does not exist (where it trusts).
    const url = new URL(databaseUrl());
    url.password = 'a';
    url.pathname = '/a';
    const err = await createTestPool({ url: url.toString(), poolSize: 1, maxOverflow: 0 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PoolConnectError);
    const message = (err as Error).message;
    expect(message).toMatch(/database "a" does not exist|password authentication failed for user/);
    expect(message).not.toContain('***');
  });

  it.each([
    ['DATABASE_URL', 'url'],
    ['DB_PGBOUNCER_ADMIN_URL', 'pgbouncerAdminUrl'],
  ] as const)('%s: a raw password with / @ : # % and a space is refused, the error shows no fragment of it', (env, option) => {
    const password = 'Zq/9@x:W#7%k Pv';
    const url = `postgres://app:${password}@db.internal:5432/app`;
    const cases = [
      { given: { env: { DATABASE_URL: databaseUrl(), [env]: url } }, label: `${env}=` },
      { given: { env: { DATABASE_URL: databaseUrl() }, [option]: url }, label: `${option} (${env})=` },
    ];
    for (const { given, label } of cases) {
      let message = '';
      try {
        resolveDbPoolConfig(given);
      } catch (err) {
        expect(err).toBeInstanceOf(DbPoolConfigError);
        message = (err as Error).message;
      }
      expect(message).toContain(`${label}"postgres://app:***@db.internal:5432/app"`);
      expect(message).toContain("percent-encode '/', '@', ':', '#', '?', '%' and spaces");
      expectNoFragment(message, password);
    }
  });

  it('a password whose "/" was not encoded, yet parses as a URL (app:123/x@db), is refused rather than sent to host "app"', () => {
    expect(() => resolveDbPoolConfig({ env: {}, url: 'postgres://app:123/x@db/app' })).toThrow(
      /\(DATABASE_URL\)="postgres:\/\/app:\*\*\*@db\/app": an '@' after the host: percent-encode/,
    );
    // The drop-in, the same: pg would connect to host "app", port 123.
    expect(() => new DbPool({ connectionString: 'postgres://app:123/x@db/app' })).toThrow(
      /- connectionString: an '@' after the host: percent-encode/,
    );
  });

  it('a password with a stray % (not percent-encoding) is refused at start-up rather than at every connect', () => {
    expect(() => resolveDbPoolConfig({ env: {}, url: 'postgres://app:50%off@db/app' })).toThrow(
      /\(DATABASE_URL\)="postgres:\/\/app:\*\*\*@db\/app": must be a postgres.*percent-encode/,
    );
  });
});
