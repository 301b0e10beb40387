import { describeConfig } from '../src/config/resolve-config.js';
import { dbPoolConfig, DbPoolConfigError, OPTION_KEYS, resolveDbPoolConfig } from '../src/index.js';

const URL_OK = 'postgres://app:s3cr%40t:pw@db.internal:5432/app';

function problemsOf(env: Record<string, string>, options: Record<string, unknown> = {}): string[] {
  try {
    resolveDbPoolConfig({ env: { DATABASE_URL: URL_OK, ...env }, ...options });
  } catch (err) {
    expect(err).toBeInstanceOf(DbPoolConfigError);
    return [...(err as DbPoolConfigError).problems];
  }
  return [];
}

describe('configuration: defaults', () => {
  it('applies the documented defaults (DB_POOL_SIZE 20, DB_MAX_OVERFLOW 40, DB_POOL_TIMEOUT 30, DB_POOL_RECYCLE 3600, …)', () => {
    const config = resolveDbPoolConfig({ env: { DATABASE_URL: URL_OK } });
    expect(config).toMatchObject({
      name: 'default',
      poolSize: 20,
      maxOverflow: 40,
      poolTimeoutMs: 30_000,
      recycleMs: 3_600_000,
      prePing: true,
      prePingBypassMs: 500,
      overflowIdleTimeoutMs: 10_000,
      connectTimeoutMs: 10_000,
      applicationName: 'db-pool',
      leakThresholdMs: 0,
      leakStackRate: 100,
      warnUtilization: 70,
      criticalUtilization: 90,
      expectedReplicas: 1,
      healthTimeoutMs: 1_000,
      headroomIntervalMs: 30_000,
    });
  });

  it('treats an empty value as unset, so the default applies', () => {
    const config = resolveDbPoolConfig({ env: { DATABASE_URL: URL_OK, DB_POOL_SIZE: '', DB_POOL_PRE_PING: '' } });
    expect(config.poolSize).toBe(20);
    expect(config.prePing).toBe(true);
  });

  it('lets code options override the environment', () => {
    const config = resolveDbPoolConfig({ env: { DATABASE_URL: URL_OK, DB_POOL_SIZE: '7' }, poolSize: 3, maxOverflow: '0' });
    expect(config.poolSize).toBe(3);
    expect(config.maxOverflow).toBe(0);
  });

  it('takes option names with their unit', () => {
    const env = { DATABASE_URL: URL_OK, DB_POOL_TIMEOUT: '9' };
    expect(resolveDbPoolConfig({ env, poolTimeoutSeconds: 3, warnUtilizationPercent: 50 })).toMatchObject({
      poolTimeoutMs: 3_000,
      warnUtilization: 50,
    });
  });

  it('refuses a key that is not an option, naming the option it probably meant and never its value', () => {
    // A unit-less name (poolTimeout), another unit (connectTimeoutMs), a typo, another case, pg's and TypeORM's names.
    const options = {
      poolTimeout: 4,
      connectTimeoutMs: 'hunter2',
      leakStackRate: 10,
      shutdownGrace: 1,
      databse: 'app',
      envprefix: 'X_',
      max: 10,
      entities: [],
      notAnOption: undefined,
    };
    expect(problemsOf({}, options)).toEqual([
      'poolTimeout: not an option of db-pool; did you mean poolTimeoutSeconds?',
      'connectTimeoutMs: not an option of db-pool; did you mean connectTimeoutSeconds?',
      'leakStackRate: not an option of db-pool; did you mean leakStacksPerSecond?',
      'shutdownGrace: not an option of db-pool; did you mean shutdownGraceSeconds?',
      'databse: not an option of db-pool; did you mean database?',
      'envprefix: not an option of db-pool; did you mean envPrefix?',
      "max: not an option of db-pool; TypeORM's options go under typeorm, and pg's under typeorm.extra",
      "entities: not an option of db-pool; TypeORM's options go under typeorm, and pg's under typeorm.extra",
    ]);
  });

  it('reads a named pool from its own prefixed variables', () => {
    const config = resolveDbPoolConfig({
      name: 'reporting',
      envPrefix: 'REPORTING_',
      env: { REPORTING_DATABASE_URL: URL_OK, REPORTING_DB_POOL_SIZE: '4', DB_POOL_SIZE: '9' },
    });
    expect(config.poolSize).toBe(4);
    expect(config.applicationName).toBe('db-pool:reporting');
  });

  it('accepts the boolean words', () => {
    for (const [word, value] of [
      ['true', true],
      ['FALSE', false],
      ['1', true],
      ['0', false],
      ['yes', true],
      ['no', false],
      ['on', true],
      ['off', false],
    ] as const) {
      expect(resolveDbPoolConfig({ env: { DATABASE_URL: URL_OK, DB_POOL_PRE_PING: word } }).prePing).toBe(value);
    }
  });

  it('shortens the default connect timeout to a shorter pool timeout instead of refusing it', () => {
    expect(resolveDbPoolConfig({ env: { DATABASE_URL: URL_OK, DB_POOL_TIMEOUT: '3' } }).connectTimeoutMs).toBe(3_000);
  });

  it('prints the effective configuration in one line with the password redacted', () => {
    const line = describeConfig(resolveDbPoolConfig({ env: { DATABASE_URL: URL_OK } }));
    expect(line).toBe(
      'db-pool "default" configured: url=postgres://app:***@db.internal:5432/app, pool_size=20, max_overflow=40, total_max=60, ' +
        'timeout=30s, recycle=3600s, pre_ping=true, connect_timeout=10s, overflow_idle_timeout=10s, leak_threshold=off, reset_session=auto, application_name=db-pool',
    );
    expect(line).not.toContain('s3cr');
  });
});

describe('configuration: validation', () => {
  const invalid: [string, string, RegExp][] = [
    ['DB_POOL_SIZE', 'abc', /^DB_POOL_SIZE="abc": must be auto or an integer from 1 to 10000$/],
    ['DB_POOL_SIZE', '0', /^DB_POOL_SIZE="0": must be auto or an integer from 1 to 10000$/],
    ['DB_POOL_SIZE', '-1', /^DB_POOL_SIZE="-1": must be auto or an integer/],
    ['DB_POOL_SIZE', '1.5', /^DB_POOL_SIZE="1.5": must be auto or an integer/],
    ['DB_POOL_SIZE', '1e9', /^DB_POOL_SIZE="1e9": must be auto or an integer/],
    ['DB_POOL_SIZE', 'Infinity', /^DB_POOL_SIZE="Infinity": must be auto or an integer/],
    ['DB_POOL_SIZE', '0x10', /^DB_POOL_SIZE="0x10": must be auto or an integer/],
    ['DB_MAX_OVERFLOW', '-1', /^DB_MAX_OVERFLOW="-1": must be auto or an integer from 0 to 10000$/],
    ['DB_POOL_TIMEOUT', '0', /^DB_POOL_TIMEOUT="0": must be an integer from 1 to 3600$/],
    ['DB_POOL_RECYCLE', 'soon', /^DB_POOL_RECYCLE="soon": must be an integer from 0 to 604800$/],
    ['DB_POOL_PRE_PING', 'maybe', /^DB_POOL_PRE_PING="maybe": must be one of true, 1, yes, on, false, 0, no, off$/],
    ['DB_POOL_PRE_PING_BYPASS_MS', '-5', /^DB_POOL_PRE_PING_BYPASS_MS="-5": must be an integer from 0 to 60000$/],
    ['DB_POOL_OVERFLOW_IDLE_TIMEOUT', '0', /^DB_POOL_OVERFLOW_IDLE_TIMEOUT="0": must be an integer from 1 to 3600$/],
    ['DB_CONNECT_TIMEOUT', 'abc', /^DB_CONNECT_TIMEOUT="abc": must be an integer from 1 to 600$/],
    ['DB_POOL_RECYCLE_JITTER', '80', /^DB_POOL_RECYCLE_JITTER="80": must be an integer from 0 to 50$/],
    ['DB_VALIDATION_TIMEOUT_MS', '1', /^DB_VALIDATION_TIMEOUT_MS="1": must be an integer from 100 to 60000$/],
    ['DB_STATEMENT_TIMEOUT_MS', '-1', /^DB_STATEMENT_TIMEOUT_MS="-1": must be an integer/],
    [
      'DB_APPLICATION_NAME',
      'x'.repeat(64),
      /^DB_APPLICATION_NAME=".*": must be printable ASCII \(space to ~\) of 1 to 63 characters: the server truncates/,
    ],
    ['DB_APPLICATION_NAME', 'caf\u00e9', /^DB_APPLICATION_NAME="caf\u00e9": must be printable ASCII/],
    ['DB_APPLICATION_NAME', 'tab\there', /^DB_APPLICATION_NAME="tab\\there": must be printable ASCII/],
    ['DB_POOL_LEAK_THRESHOLD', '1', /^DB_POOL_LEAK_THRESHOLD="1": must be 0 \(off\) or an integer from 2 to 86400$/],
    ['DB_POOL_LEAK_THRESHOLD', '-1', /^DB_POOL_LEAK_THRESHOLD="-1": must be 0 \(off\) or an integer/],
    ['DB_POOL_LEAK_STACK_RATE', 'all', /^DB_POOL_LEAK_STACK_RATE="all": must be an integer from 0 to 1000000$/],
    ['DB_POOL_WARN_UTILIZATION', '101', /^DB_POOL_WARN_UTILIZATION="101": must be an integer from 1 to 98$/],
    ['DB_POOL_CRITICAL_UTILIZATION', '0', /^DB_POOL_CRITICAL_UTILIZATION="0": must be an integer from 2 to 99$/],
    // Health is critical above the threshold, and utilization is never above 100.
    ['DB_POOL_CRITICAL_UTILIZATION', '100', /^DB_POOL_CRITICAL_UTILIZATION="100": must be an integer from 2 to 99$/],
    ['DB_POOL_EXPECTED_REPLICAS', '0', /^DB_POOL_EXPECTED_REPLICAS="0": must be an integer from 1 to 10000$/],
    ['DB_POOL_HEALTH_TIMEOUT_MS', '10', /^DB_POOL_HEALTH_TIMEOUT_MS="10": must be an integer from 100 to 60000$/],
    ['DB_POOL_HEADROOM_INTERVAL', '1.5', /^DB_POOL_HEADROOM_INTERVAL="1.5": must be 0 \(off\) or an integer from 1 to 86400$/],
    [
      'DATABASE_URL',
      'mysql://root@localhost/db',
      /^DATABASE_URL="mysql:\/\/root@localhost\/db": must be a postgres:\/\/ or postgresql:\/\/ URL/,
    ],
    ['DATABASE_URL', 'not a url', /^DATABASE_URL="not a url": must be a postgres/],
  ];

  it.each(invalid)('%s=%s is refused, naming the key, the value and what is allowed', (key, value, expected) => {
    const problems = problemsOf({ [key]: value });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(expected);
  });

  it('lists every bad key in one error', () => {
    const problems = problemsOf({ DB_POOL_SIZE: 'abc', DB_MAX_OVERFLOW: '-1', DB_POOL_PRE_PING: 'maybe', DB_POOL_TIMEOUT: '1.5' });
    expect(problems.map((p) => p.split('=')[0])).toEqual(['DB_POOL_SIZE', 'DB_MAX_OVERFLOW', 'DB_POOL_TIMEOUT', 'DB_POOL_PRE_PING']);
  });

  it('names the code option and its variable when the bad value came from code', () => {
    expect(problemsOf({}, { poolSize: 0 })).toEqual(['poolSize (DB_POOL_SIZE)="0": must be auto or an integer from 1 to 10000']);
  });

  it('takes application_name from the URL when it is there (pg lets it win), and refuses two names that disagree', () => {
    expect(resolveDbPoolConfig({ env: { DATABASE_URL: 'postgres://app@db/app?application_name=shop-api' } }).applicationName).toBe(
      'shop-api',
    );
    expect(problemsOf({ DATABASE_URL: 'postgres://app@db/app?application_name=shop-api', DB_APPLICATION_NAME: 'other' })).toEqual([
      'DB_APPLICATION_NAME="other" disagrees with application_name="shop-api" in DATABASE_URL: give one of them',
    ]);
    expect(
      resolveDbPoolConfig({ env: { DATABASE_URL: 'postgres://app@db/app?application_name=same', DB_APPLICATION_NAME: 'same' } })
        .applicationName,
    ).toBe('same');
  });

  it('refuses a pool name whose derived application_name the server would truncate, and asks for DB_APPLICATION_NAME', () => {
    const name = 'reporting-analytics-warehouse-replica-eu-west-1-readonly-pool';
    expect(() => resolveDbPoolConfig({ name, env: { DATABASE_URL: 'postgres://app@db/app' } })).toThrow(
      `DB_APPLICATION_NAME: not set, and the default derived from the pool name ("db-pool:${name}") is not printable ASCII of at most 63 characters; set DB_APPLICATION_NAME`,
    );
    expect(
      resolveDbPoolConfig({ name, env: { DATABASE_URL: 'postgres://app@db/app', DB_APPLICATION_NAME: 'reporting' } }).applicationName,
    ).toBe('reporting');
  });

  it('refuses cross-field conflicts', () => {
    expect(problemsOf({ DB_POOL_TIMEOUT: '5', DB_CONNECT_TIMEOUT: '20' })).toEqual([
      'DB_CONNECT_TIMEOUT=20 exceeds DB_POOL_TIMEOUT=5: a connection that takes that long to open could never be handed out in time; make DB_CONNECT_TIMEOUT ≤ DB_POOL_TIMEOUT',
    ]);
    expect(problemsOf({ DB_POOL_SIZE: '9000', DB_MAX_OVERFLOW: '2000' })).toEqual([
      'DB_POOL_SIZE + DB_MAX_OVERFLOW = 11000: the total capacity must be at most 10000',
    ]);
    expect(problemsOf({ DB_POOL_WARN_UTILIZATION: '90', DB_POOL_CRITICAL_UTILIZATION: '80' })).toEqual([
      'DB_POOL_WARN_UTILIZATION=90 is not below DB_POOL_CRITICAL_UTILIZATION=80: the warning threshold must be lower than the critical one',
    ]);
  });

  it('refuses a missing DATABASE_URL with an example', () => {
    expect(() => resolveDbPoolConfig({ env: {} })).toThrow(/DATABASE_URL: not set; give a postgres:\/\/ URL/);
  });

  it('never shows the password: not in the message, not in the problems, not for a malformed URL', () => {
    const secret = 'pa ss"w@rd:/?#';
    const urls = [
      `postgres://app:${encodeURIComponent(secret)}@db:5432/app`,
      `postgres://app:${encodeURIComponent(secret)}@db:notaport/app`,
      `postgresql://app:${secret}@db/app`,
      `mysql://app:${encodeURIComponent(secret)}@db/app`,
      `postgres://db/app?password=${encodeURIComponent(secret)}&sslmode=require`,
    ];
    for (const url of urls) {
      let message = '';
      try {
        resolveDbPoolConfig({ env: { DATABASE_URL: url, DB_POOL_SIZE: 'abc' } });
      } catch (err) {
        message = `${(err as Error).message}\n${JSON.stringify(err)}`;
      }
      expect(message).toContain('DB_POOL_SIZE');
      expect(message).not.toContain(secret);
      expect(message).not.toContain(encodeURIComponent(secret));
      expect(message).not.toContain('ss"w');
    }
  });

  it('has a rule for every key, and every key is documented in the README', async () => {
    const { readFile } = await import('node:fs/promises');
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    for (const key of OPTION_KEYS) {
      expect(readme).toContain(`| \`${key.env}\` | \`${key.option}\` |`);
    }
  });
});

describe("configuration: variables that look like the pool's but are not read", () => {
  const HEAD = "db-pool: environment variables that look like db-pool's are not read and change nothing: ";
  const TAIL = '; if another program reads them, ignore this warning';

  it('starts, and warns once of each, naming the key each probably meant and never its value', () => {
    const warned: string[] = [];
    const logger = { log() {}, warn: (m: string) => warned.push(m) };
    const env = {
      DATABASE_URL: URL_OK,
      DB_POOL_MAX_OVERFLOW: '0',
      DB_POOL_SIZ: '5',
      DB_POOL_FROBNICATE: 'S3cretValue',
      DB_CONECT_TIMEOUT: '3',
      DB_QUERY_TIMEOUT: '100',
      DATABSE_URL: 'postgres://u:S3cretValue@h/db',
      // Other programs' variables, not like any of the pool's: nothing to say.
      DB_HOST: 'db',
      DB_PASSWORD: 'S3cretValue',
      REPORTING_DB_POOL_SIZE: '4',
    };
    const config = resolveDbPoolConfig({ env, logger });
    expect(config.maxOverflow).toBe(40);
    const warning =
      HEAD +
      'DATABSE_URL (did you mean DATABASE_URL?), DB_CONECT_TIMEOUT (did you mean DB_CONNECT_TIMEOUT?), ' +
      'DB_POOL_FROBNICATE, DB_POOL_MAX_OVERFLOW (did you mean DB_MAX_OVERFLOW?), DB_POOL_SIZ (did you mean DB_POOL_SIZE?), ' +
      'DB_QUERY_TIMEOUT (did you mean DB_QUERY_TIMEOUT_MS?)' +
      TAIL;
    expect(config.warnings).toEqual([warning]);
    // createDbPool, the module and a replica's pool resolve the same environment again: one line.
    resolveDbPoolConfig({ env, logger });
    resolveDbPoolConfig({ env, logger, name: 'default-replica-1' });
    expect(warned).toEqual([warning]);
    expect(warning).not.toContain('S3cret');
  });

  it("a pool with an envPrefix is warned of its own prefix's look-alikes, and the default pool of DB_POOL_ ones", () => {
    const env = { DATABASE_URL: URL_OK, REPORTING_DATABASE_URL: URL_OK, REPORTING_DB_POOL_MAX_OVERFLOW: '0', DB_POOL_PREPING: 'false' };
    expect(resolveDbPoolConfig({ name: 'reporting', envPrefix: 'REPORTING_', env }).warnings).toEqual([
      `${HEAD}REPORTING_DB_POOL_MAX_OVERFLOW (did you mean REPORTING_DB_MAX_OVERFLOW?)${TAIL}`,
    ]);
    expect(resolveDbPoolConfig({ env }).warnings).toEqual([`${HEAD}DB_POOL_PREPING (did you mean DB_POOL_PRE_PING?)${TAIL}`]);
  });

  it("says nothing when every variable is read or unlike the pool's", () => {
    const env = Object.fromEntries(OPTION_KEYS.map((k) => [k.env, undefined as string | undefined]));
    expect(
      resolveDbPoolConfig({ env: { ...env, DATABASE_URL: URL_OK, DB_POOL_SIZE: '3', DB_USER: 'app', PGHOST: 'db' } }).warnings,
    ).toEqual([]);
  });

  it("the @nestjs/config namespace (dbPoolConfig) hands the look-alikes on, so the module's start-up warns of them too", () => {
    process.env.DB_POOL_MAX_OVERFLOW = '0';
    try {
      const options = dbPoolConfig();
      expect(options.env).toMatchObject({ DB_POOL_MAX_OVERFLOW: '0' });
      expect(resolveDbPoolConfig({ ...options, url: URL_OK }).warnings).toEqual([
        `${HEAD}DB_POOL_MAX_OVERFLOW (did you mean DB_MAX_OVERFLOW?)${TAIL}`,
      ]);
    } finally {
      delete process.env.DB_POOL_MAX_OVERFLOW;
    }
  });

  it('warns that pg does not read connect_timeout in the URL, and names the key that sets the connect timeout', () => {
    expect(resolveDbPoolConfig({ env: { DATABASE_URL: `${URL_OK}?connect_timeout=3` } }).warnings).toEqual([
      'db-pool: connect_timeout=3 in DATABASE_URL is not read (pg does not read it): connections are given DB_CONNECT_TIMEOUT=10 s to open',
    ]);
  });
});
