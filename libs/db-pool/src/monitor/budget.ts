/**
 * The connection budget (`DB_POOL_SIZE=auto`): each process sizes its pool to its share of the
 * server's connections, from the server's own view — PostgreSQL is the coordinator, and nothing
 * else is. Every process of the application holds one presence connection whose
 * `application_name` is `<application_name>~<claim>`: the server counts the live processes (a
 * process that dies takes its presence with it) and shows what each claims, the capacity it may
 * open. At every headroom sample, on that connection, a process reads `max_connections`, the
 * reserved connections, everyone else's connections and the other processes' claims, and takes
 *
 *   fair share = (available − other applications' connections − 2 spare) / processes − 1
 *
 * (the spare leaves room for a process that is starting; the 1 is its own presence connection),
 * within `DB_POOL_MIN` / `DB_POOL_MAX`. It shrinks to it at once; it grows only into what nobody
 * claims, in proportion to what it lacks among those below their share, so processes that have
 * not yet shrunk are never overrun, and those growing together take no more than is unclaimed.
 * Then it writes its new claim. Shrinking closes idle connections first and fails no checkout
 * (`DbPool.resize`); a claim stays as high as the connections still open until they come back.
 *
 * The processes do not wait for their intervals to hear of each other: every presence LISTENs on
 * {@link BUDGET_CHANNEL}, and a process that arrives, changes its claim (its connections above a
 * new capacity drained included) or leaves NOTIFYs it with the application's prefix; the others
 * sample at once. A process that starts takes no connection the server does not have: until
 * what nobody claims gives it `DB_POOL_MIN`, it waits for those notices (the others shrinking),
 * at most two headroom intervals.
 */
import type pg from 'pg';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { budgetSplit } from '../config/resolve-config.js';
import { backendKeyOf } from '../pool/pg-internals.js';
import { SampleConnection } from '../pool/sample-connection.js';
import { pgbouncerDatabase, samplePgBouncerClients } from './pgbouncer-stats.js';
import { CLIENT_BACKEND } from './server-headroom.js';

/** Connections left free for a process that is starting (its presence and its first pooled one). */
export const BUDGET_SPARE = 2;

/** The channel the presences LISTEN on; a notice's payload is the application's presence prefix. */
export const BUDGET_CHANNEL = 'db_pool_budget';

/** What took a budget sample: the start-up, the headroom interval, another process's notice, this pool's connections drained to a smaller capacity. */
export type BudgetTrigger = 'start' | 'interval' | 'notified' | 'drained';

/** What the server said at the last budget sample. */
export interface BudgetInputs {
  max_connections: number;
  superuser_reserved_connections: number;
  /** `reserved_connections` (PostgreSQL 16 and later; 0 before). */
  reserved_connections: number;
  /** Live processes of the application, this one included: presence connections. */
  processes: number;
  /** What the other processes claim (each one's capacity, or the connections it still has open if more). */
  claims: number[];
  /** Client connections of the application's pools, every process's (its application_name). */
  application_connections: number;
  /** Client connections of everyone else. */
  other_connections: number;
  /** Client connections open on the server, all of them (behind PgBouncer: PgBouncer's clients of the database). */
  in_use: number;
  /**
   * Where the processes were counted: the server's `pg_stat_activity`, or behind PgBouncer
   * (DB_PGBOUNCER_ADMIN_URL) its `SHOW CLIENTS`, the share then of its server pool for the
   * database (`max_connections` is its `pool_size`; the presences and the spare cost nothing there).
   */
  counted_by: 'pg_stat_activity' | 'pgbouncer';
}

/** What the budget decided at its last sample, and why. */
export interface BudgetDecision {
  /** The capacity this process took: `pool_size + max_overflow`. */
  capacity: number;
  pool_size: number;
  max_overflow: number;
  /** The fair share before the bounds: what every process would have, were all equal. */
  fair_share: number;
  /** Connections nobody claims: what this process may grow into, with the others below their share. */
  unclaimed: number;
  /** `DB_POOL_MIN` / `DB_POOL_MAX`. */
  min: number;
  max: number;
  /** What set the capacity: `fair_share`, `unclaimed` (growing, held to what nobody claims), `min`, `max`. */
  limited_by: 'fair_share' | 'unclaimed' | 'min' | 'max';
  inputs: BudgetInputs;
  /** What took the sample. */
  trigger: BudgetTrigger;
  decided_at: string;
}

/**
 * The budget's arithmetic, on a sample: pure, so the tests read it line by line. `ownClaim` is
 * this process's claim as it stands (its capacity, or its open connections if more). A process
 * below `DB_POOL_MIN` (one starting, claiming nothing) that what nobody claims does not bring to
 * it gets what is unclaimed, below the bound, and `createDbPool` waits for more (not behind
 * PgBouncer, which queues what it cannot serve rather than refuse it).
 */
export function decideBudget(
  inputs: BudgetInputs,
  ownClaim: number,
  bounds: { min: number; max: number },
): Pick<BudgetDecision, 'capacity' | 'fair_share' | 'unclaimed' | 'limited_by'> {
  const available = inputs.max_connections - inputs.superuser_reserved_connections - inputs.reserved_connections;
  const processes = Math.max(1, inputs.processes);
  // Behind PgBouncer a presence is a client connection, which holds no server connection, and a
  // process that starts is queued by PgBouncer, not refused: neither presence nor spare is set aside.
  const direct = inputs.counted_by === 'pg_stat_activity';
  const spare = direct ? BUDGET_SPARE : 0;
  const presence = direct ? 1 : 0;
  const fair = Math.floor((available - inputs.other_connections - spare) / processes) - presence;
  const claimed = inputs.claims.reduce((n, c) => n + c, 0);
  // What nobody claims, this process included: less the presences (each process's one) and the spare set aside.
  const unclaimed = Math.max(0, available - inputs.other_connections - spare - processes * presence - claimed - ownClaim);
  // What is free on the server now, less the spare: a connection nobody shows a claim for (a
  // process whose presence was lost, one closing) is not free however the claims add up.
  const free = direct ? Math.max(0, available - inputs.in_use - spare) : Infinity;
  let target = fair;
  let limitedBy: BudgetDecision['limited_by'] = 'fair_share';
  if (fair > ownClaim) {
    // Growing: a part of what is unclaimed, in proportion to what it lacks among all those below
    // the share (their claims are in view), so those growing at the same time fit together.
    const lacking = fair - ownClaim;
    const lackingAll = lacking + inputs.claims.reduce((n, c) => n + Math.max(0, fair - c), 0);
    const grow = Math.min(lacking, Math.floor((unclaimed * lacking) / lackingAll), free);
    if (grow < lacking) {
      target = ownClaim + grow;
      limitedBy = 'unclaimed';
    }
  }
  if (target < bounds.min) {
    if (limitedBy === 'unclaimed' && ownClaim < bounds.min && direct)
      return { capacity: target, fair_share: fair, unclaimed, limited_by: limitedBy };
    return { capacity: bounds.min, fair_share: fair, unclaimed, limited_by: 'min' };
  }
  if (target > bounds.max) return { capacity: bounds.max, fair_share: fair, unclaimed, limited_by: 'max' };
  return { capacity: target, fair_share: fair, unclaimed, limited_by: limitedBy };
}

/** The prefix of the presence connections' application_name: the application's, marked, leaving room for a claim within 63 characters. */
export function presencePrefix(applicationName: string): string {
  return `${applicationName.slice(0, 63 - '~'.length - 5)}~`;
}

const SAMPLE = `
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce((SELECT setting::int FROM pg_settings WHERE name = 'reserved_connections'), 0) AS reserved_connections,
       count(*) FILTER (WHERE left(application_name, length($1)) = $1)::int AS processes,
       coalesce(array_agg(substr(application_name, length($1) + 1))
                FILTER (WHERE left(application_name, length($1)) = $1 AND pid <> pg_backend_pid()), '{}') AS claims,
       count(*) FILTER (WHERE application_name = $2)::int AS application_connections,
       count(*)::int AS in_use
  FROM pg_stat_activity WHERE ${CLIENT_BACKEND}`;

/** The presence connection, the samples taken on it, the claim it shows and the notices it hears. */
export class BudgetSampler {
  private readonly presence: SampleConnection;
  private readonly prefix: string;
  private readonly waiters = new Set<() => void>();
  /** Another process of the application arrived, changed its claim or left (the monitor samples). */
  onNotice: (() => void) | undefined;
  /** The presence listens, and notifies (not on a standby, nor through PgBouncer). */
  private notices = false;
  /** DB_PGBOUNCER_ADMIN_URL: the processes are counted in PgBouncer's SHOW CLIENTS. */
  private readonly viaPgBouncer: boolean;
  private heard = 0;
  /** The claim shown last (undefined before the first). */
  claimed: number | undefined;

  constructor(
    private readonly config: DbPoolConfig,
    Client: typeof pg.Client,
  ) {
    this.prefix = presencePrefix(config.applicationName);
    this.viaPgBouncer = config.pgbouncerAdminUrl !== undefined;
    // A copy with every property, the hidden ones (the URL, the password) too, under the presence's name.
    const named = Object.defineProperties({}, Object.getOwnPropertyDescriptors(config)) as DbPoolConfig;
    named.applicationName = `${this.prefix}0`;
    const onOpen = async (client: pg.Client) => {
      const own = backendKeyOf(client)?.processID;
      client.on('notification', (notice: pg.Notification) => {
        if (notice.channel !== BUDGET_CHANNEL || notice.payload !== this.prefix || notice.processId === own) return;
        this.heard++;
        for (const wake of this.waiters) wake();
        this.onNotice?.();
      });
      // A standby (a read replica's budget) can neither LISTEN nor NOTIFY, and through PgBouncer a
      // session's LISTEN is not kept: their processes meet at their intervals.
      const standby = async () => (await client.query<{ standby: boolean }>('SELECT pg_is_in_recovery() AS standby')).rows[0].standby;
      this.notices = !this.viaPgBouncer && !(await standby());
      if (this.notices) await client.query(`LISTEN ${BUDGET_CHANNEL}`);
      // A presence opened again (the last one lost) shows the claim the last one showed, and the
      // others hear of it (while it was gone they counted one process fewer).
      if (this.claimed !== undefined) await client.query(this.claimQuery(this.claimed, this.notices));
    };
    this.presence = new SampleConnection(named, Client, { owner: 'the connection budget (DB_POOL_SIZE=auto)', onOpen });
  }

  /** One sample on the presence connection (opened on first use, and again after a failure), within `timeoutMs`. */
  async sample(timeoutMs: number): Promise<BudgetInputs> {
    if (this.viaPgBouncer) return this.sampleThroughPgBouncer(timeoutMs);
    const row = await this.presence.queryRow<Omit<BudgetInputs, 'other_connections' | 'claims'> & { claims: string[] }>(
      { text: SAMPLE, values: [this.prefix, this.config.applicationName] },
      timeoutMs,
    );
    return {
      ...row,
      claims: row.claims.map((c) => this.claimOf(c)),
      other_connections: Math.max(0, row.in_use - row.application_connections - row.processes),
      counted_by: 'pg_stat_activity',
    };
  }

  /** Behind PgBouncer: the presence opened (a client PgBouncer lists), then its SHOW DATABASES and SHOW CLIENTS. */
  private async sampleThroughPgBouncer(timeoutMs: number): Promise<BudgetInputs> {
    if (!this.presence.open) await this.presence.queryRow('SELECT 1', timeoutMs);
    const { pool_size, clients } = await samplePgBouncerClients(this.config.pgbouncerAdminUrl!, pgbouncerDatabase(this.config), timeoutMs);
    const application_names = clients.map((c) => c.application_name);
    // Its own presence is among them: the client at its presence's address and port (PgBouncer
    // keeps no backend pid to tell it by), else, with the address translated on the way, the one
    // showing its claim.
    const at = this.presence.localEndpoint;
    const mine = at === undefined ? -1 : clients.findIndex((c) => c.port === at.port && c.addr === at.address);
    const presences = clients
      .filter((c, i) => i !== mine && c.application_name.startsWith(this.prefix))
      .map((c) => c.application_name.slice(this.prefix.length));
    if (mine < 0) {
      const own = presences.indexOf(String(this.claimed ?? 0));
      if (own >= 0) presences.splice(own, 1);
    }
    return {
      max_connections: pool_size,
      superuser_reserved_connections: 0,
      reserved_connections: 0,
      processes: presences.length + 1,
      claims: presences.map((c) => this.claimOf(c)),
      application_connections: application_names.filter((name) => name === this.config.applicationName).length,
      // PgBouncer's other clients hold a server connection only for a transaction: none is set aside for them.
      other_connections: 0,
      in_use: application_names.length,
      counted_by: 'pgbouncer',
    };
  }

  /** A claim as shown; one that is not a number (a process of another version) counts as the most a process may take. */
  private claimOf(shown: string): number {
    return /^\d{1,5}$/.test(shown) ? Number(shown) : this.config.budget!.max;
  }

  /** A sample and what it decides for a pool whose claim stands at `ownClaim`. */
  async decide(ownClaim: number, timeoutMs: number, trigger: BudgetTrigger): Promise<BudgetDecision> {
    const bounds = this.config.budget!;
    const inputs = await this.sample(timeoutMs);
    const decided = decideBudget(inputs, ownClaim, bounds);
    const { poolSize, maxOverflow } = budgetSplit(Math.max(1, decided.capacity));
    return {
      ...decided,
      pool_size: poolSize,
      max_overflow: maxOverflow,
      min: bounds.min,
      max: bounds.max,
      inputs,
      trigger,
      decided_at: new Date().toISOString(),
    };
  }

  /**
   * Runs `fn` (a sample and the claim it decides) holding the application's budget lock, a
   * transaction-level advisory lock on the presence connection: the processes take their samples
   * and show their claims one at a time, so two that start together do not each count the other's
   * connections as free. Notices sent meanwhile go out as the lock is let go (at the COMMIT).
   */
  async locked<T>(timeoutMs: number, fn: () => Promise<T>): Promise<T> {
    await this.presence.queryRow('BEGIN', timeoutMs);
    let done = false;
    try {
      await this.presence.queryRow(
        { text: 'SELECT pg_advisory_xact_lock(hashtext($1))', values: [`db_pool_budget:${this.prefix}`] },
        timeoutMs,
      );
      const result = await fn();
      await this.presence.queryRow('COMMIT', timeoutMs);
      done = true;
      return result;
    } finally {
      if (!done && this.presence.open) await this.presence.queryRow('ROLLBACK', timeoutMs).catch(() => {});
    }
  }

  /** Shows `claim` to the other processes (their next samples read it); with `notify`, they sample at once. */
  async claim(claim: number, timeoutMs: number, notify: boolean): Promise<void> {
    this.claimed = claim;
    await this.presence.queryRow(this.claimQuery(claim, notify && this.notices), timeoutMs);
  }

  /** The statement that shows `claim` as the presence's application_name, with a notice to the others if `notify`. */
  private claimQuery(claim: number, notify: boolean): pg.QueryConfig {
    return notify
      ? {
          text: "SELECT set_config('application_name', $1, false), pg_notify($2, $3)",
          values: [`${this.prefix}${claim}`, BUDGET_CHANNEL, this.prefix],
        }
      : { text: "SELECT set_config('application_name', $1, false)", values: [`${this.prefix}${claim}`] };
  }

  /** Notices heard so far, from the other processes of the application. */
  get noticesHeard(): number {
    return this.heard;
  }

  /**
   * Resolves at the next notice from another process of the application, or after `timeoutMs`; at
   * once if one came after `heard` ({@link noticesHeard} when the caller took its sample), so none
   * that came meanwhile is missed.
   */
  notice(timeoutMs: number, heard: number): Promise<void> {
    if (this.heard > heard) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, timeoutMs);
      timer.unref();
      this.waiters.add(wake);
    });
  }

  /**
   * Leaves: the presence stops counting as a process and a claim (it takes the application's own
   * name) and the others hear of it, then it closes. The pool calls it once its own connections are closed.
   */
  async close(): Promise<void> {
    if (this.presence.open && this.notices) {
      await this.presence
        .queryRow(
          {
            text: "SELECT set_config('application_name', $1, false), pg_notify($2, $3)",
            values: [this.config.applicationName, BUDGET_CHANNEL, this.prefix],
          },
          LEAVE_TIMEOUT_MS,
        )
        .catch(() => {});
    }
    for (const wake of this.waiters) wake();
    await this.presence.close();
  }
}

/** How long a leaving process waits for its goodbye notice to be taken before it closes all the same. */
const LEAVE_TIMEOUT_MS = 1_000;
