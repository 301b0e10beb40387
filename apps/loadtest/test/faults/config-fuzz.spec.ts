/** 19. Configuration fuzz: every key, every hostile value; bad values refuse to start, empty means the default. */
import 'reflect-metadata';
import { Test } from '@nestjs/testing';
import { DbPoolConfigError, DbPoolModule, OPTION_KEYS, resolveDbPoolConfig } from '@db-pool/db-pool';

const URL_OK = 'postgres://app:pw@127.0.0.1:5432/app';
const HOSTILE = ['0', '-1', 'abc', '1.5', '1e9', 'Infinity'];

function outcome(env: Record<string, string>): { ok: true } | { ok: false; problems: readonly string[] } {
  try {
    resolveDbPoolConfig({ env: { DATABASE_URL: URL_OK, ...env } });
    return { ok: true };
  } catch (err) {
    if (!(err instanceof DbPoolConfigError)) throw err;
    return { ok: false, problems: err.problems };
  }
}

/** What the key's own rule says of a value, written independently of the implementation. */
function allowed(key: (typeof OPTION_KEYS)[number], raw: string): boolean {
  if (!/^[+-]?\d+$/.test(raw)) return false; // fractions, exponents, words, Infinity are never integers here
  const n = Number(raw);
  return n === key.off || (n >= key.min! && n <= key.max!);
}

describe('fault scenarios: configuration fuzz', () => {
  const numeric = OPTION_KEYS.filter((k) => k.kind === 'int');

  it('covers every numeric key', () => {
    expect(numeric.map((k) => k.env)).toEqual(
      expect.arrayContaining(['DB_POOL_SIZE', 'DB_MAX_OVERFLOW', 'DB_POOL_TIMEOUT', 'DB_POOL_RECYCLE']),
    );
    expect(numeric.length).toBeGreaterThanOrEqual(15);
  });

  for (const key of numeric) {
    for (const raw of HOSTILE) {
      const valid = allowed(key, raw);
      it(`${key.env}=${raw} is ${valid ? 'accepted' : 'refused, naming the key, the value and the range'}`, () => {
        const result = outcome({ [key.env]: raw });
        if (valid) {
          // accepted on its own; any refusal must be a cross-field rule, naming other keys too
          if (!result.ok) for (const p of result.problems) expect(p).not.toMatch(new RegExp(`^${key.env}="`));
          return;
        }
        expect(result.ok).toBe(false);
        const mine = (result as { problems: readonly string[] }).problems.filter((p) => p.startsWith(`${key.env}=`));
        expect(mine).toEqual([
          expect.stringMatching(
            new RegExp(
              `^${key.env}="${raw.replace('.', '\\.')}": must be ${key.auto ? 'auto or ' : key.off !== undefined ? `${key.off} \\(off\\) or ` : ''}an integer from ${key.min} to ${key.max}$`,
            ),
          ),
        ]);
      });
    }
  }

  it('DB_MAX_OVERFLOW=0 is valid and DB_POOL_SIZE=0 is not', () => {
    expect(outcome({ DB_MAX_OVERFLOW: '0' }).ok).toBe(true);
    expect(outcome({ DB_POOL_SIZE: '0' }).ok).toBe(false);
  });

  it('a boolean of "maybe" is refused with the allowed words', () => {
    expect(outcome({ DB_POOL_PRE_PING: 'maybe' })).toEqual({
      ok: false,
      problems: ['DB_POOL_PRE_PING="maybe": must be one of true, 1, yes, on, false, 0, no, off'],
    });
  });

  it('every bad key at once is listed in one message', () => {
    const env = Object.fromEntries(numeric.filter((k) => !allowed(k, 'abc')).map((k) => [k.env, 'abc']));
    const result = outcome({ ...env, DB_POOL_PRE_PING: 'maybe' });
    expect(result.ok).toBe(false);
    expect((result as { problems: readonly string[] }).problems).toHaveLength(Object.keys(env).length + 1);
  });

  it('cross-field conflicts are refused', () => {
    expect(outcome({ DB_POOL_TIMEOUT: '5', DB_CONNECT_TIMEOUT: '10' }).ok).toBe(false);
    expect(outcome({ DB_POOL_WARN_UTILIZATION: '95', DB_POOL_CRITICAL_UTILIZATION: '90' }).ok).toBe(false);
    expect(outcome({ DB_POOL_SIZE: '6000', DB_MAX_OVERFLOW: '6000' }).ok).toBe(false);
  });

  it('a misspelt key (DB_POOL_MAX_OVERFLOW) starts the module with the default and one start-up warning naming the key it probably meant', async () => {
    const lines: string[] = [];
    const warnings: string[] = [];
    const app = await Test.createTestingModule({
      imports: [DbPoolModule.forRoot({ env: { DATABASE_URL: process.env.DATABASE_URL!, DB_POOL_SIZE: '1', DB_POOL_MAX_OVERFLOW: '0' } })],
    })
      .setLogger({
        log: (m: unknown) => lines.push(String(m)),
        error() {},
        warn: (m: unknown) => warnings.push(String(m)),
        debug() {},
        verbose() {},
      })
      .compile();
    await app.init();
    await app.close();
    expect(lines.join('\n')).toMatch(/db-pool "default" configured: .* max_overflow=40,/);
    expect(warnings.filter((w) => w.includes('DB_POOL_MAX_OVERFLOW'))).toEqual([
      "db-pool: environment variables that look like db-pool's are not read and change nothing: " +
        'DB_POOL_MAX_OVERFLOW (did you mean DB_MAX_OVERFLOW?); if another program reads them, ignore this warning',
    ]);
  });

  it('an empty value means unset: the module starts with the default and its start-up log shows it', async () => {
    const lines: string[] = [];
    const env = Object.fromEntries(OPTION_KEYS.filter((k) => k.env !== 'DATABASE_URL').map((k) => [k.env, '']));
    const app = await Test.createTestingModule({
      imports: [
        DbPoolModule.forRoot({
          env: { ...env, DATABASE_URL: process.env.DATABASE_URL!, DB_POOL_SIZE: '', DB_MAX_OVERFLOW: '' },
          poolSize: undefined,
        }),
      ],
    })
      .setLogger({ log: (m: unknown) => lines.push(String(m)), error() {}, warn() {}, debug() {}, verbose() {} })
      .compile();
    await app.init();
    await app.close();
    expect(lines.join('\n')).toMatch(
      /db-pool "default" configured: url=postgres:\/\/[^ ]*, pool_size=20, max_overflow=40, total_max=60, timeout=30s, recycle=3600s, pre_ping=true/,
    );
  });
});
