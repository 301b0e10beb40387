/**
 * Failover: what the pool does when a server goes away or changes role. It decides which signals
 * to trust and acts only through the core (destroy-where, and marking the connections out): a
 * host gone loses its idle connections and is marked down; a host whose role changed is evicted
 * (its connections refuse further statements); a host with a cancel request unconfirmed is
 * suspect, and its idle connections are pinged before they are handed out. See
 * docs/high-availability.md.
 */
import { scrubSecrets } from '../redact.js';
import { type Connector, sessionMatches } from './connector.js';
import type { SlotOwner } from './core/resource-pool.js';
import type { HostAddress } from './hosts.js';
import type { DbPoolLogger } from './logger.js';
import type { PoolEntry } from './pool-entry.js';
import type { PoolStats } from './tracker.js';

/** Errors by which a server says it is going away (SQLSTATE class 57, operator intervention). */
export const FAILOVER_CODES = new Map([
  ['57P01', 'admin_shutdown'],
  ['57P02', 'crash_shutdown'],
  ['57P03', 'cannot_connect_now'],
]);

export interface FailoverOptions {
  name: string;
  logger: DbPoolLogger;
  connector: Connector;
  stats: PoolStats;
}

export class Failover {
  /** Hosts with cancel requests not yet confirmed, and how many. */
  /** Hosts with a cancel request unconfirmed, and how many (read by the checkout's check: empty, it costs nothing). */
  readonly suspects = new Map<HostAddress, number>();
  /** Hosts whose role is being checked on a connection of its own. */
  private readonly checkingRole = new Set<HostAddress>();
  private core!: SlotOwner<PoolEntry>;

  constructor(private readonly options: FailoverOptions) {}

  /** The core it acts on (built after it: the core's driver needs this module). */
  attach(core: SlotOwner<PoolEntry>): void {
    this.core = core;
  }

  /**
   * A connection failed or ended without the pool closing it (a reset, a crash, a 57P0x), seen
   * once per connection whichever of pg's 'error', its 'end' or the release comes first: its host
   * may be gone. A FATAL the server sent for this session alone (idle_session_timeout,
   * idle_in_transaction_session_timeout, …) says why it ended: its host is fine.
   */
  connectionEnded(entry: PoolEntry, why: string): void {
    if (entry.endSeen) return;
    entry.endSeen = true;
    if (entry.fatalCode !== undefined && !FAILOVER_CODES.has(entry.fatalCode)) return;
    this.hostGone(entry, why);
  }

  /**
   * A server signalled it is going away (a FATAL 57P01/57P02/57P03), one of its connections was
   * lost, or it left a cancel request or a ping unanswered: its idle connections are closed now,
   * so no caller is handed one and nothing more is sent there; new connections walk the host
   * list. Checked-out ones are left to their callers (PostgreSQL sends the same 57P01 for
   * `pg_terminate_backend()` of a single backend, whose siblings then just reconnect) and are
   * closed on return if they died.
   */
  hostGone(entry: PoolEntry, why: string): void {
    const host = entry.host;
    if (!host || this.core.ending) return;
    const closed = this.core.destroyWhere((other) => other.host === host && other !== entry, 'failover');
    if (closed > 0) this.options.stats.evicted(closed);
    // With one host and no session requirement there is nothing to fail over to: a terminated
    // backend is not a failover there (its alert would fire for a DBA's pg_terminate_backend).
    if (this.options.connector.highAvailability) this.options.connector.mark(host.address, 'down', why);
    if (closed > 0)
      this.options.logger.debug?.(`db-pool "${this.options.name}": ${host.address}: ${why}; closed its ${closed} idle connection(s)`);
  }

  /** A connection refused at the host's address: its idle connections are dead too. */
  hostRefused(err: Error): void {
    const errors = (err as { errors?: { address: string; error: Error }[] }).errors ?? [];
    const refused = new Set(errors.filter((e) => (e.error as { code?: string }).code === 'ECONNREFUSED').map((e) => e.address));
    const hosts = this.options.connector.target.hosts;
    if ((err as { code?: string }).code === 'ECONNREFUSED' && hosts.length === 1) refused.add(hosts[0].address);
    if (refused.size === 0) return;
    const closed = this.core.destroyWhere((entry) => entry.host !== undefined && refused.has(entry.host.address), 'failover');
    if (closed > 0) this.options.stats.evicted(closed);
  }

  /**
   * One session said it became read-only, which its own statement may have done: a new
   * connection to its host says whether the server did. Evicts the host only then; one check per
   * host at a time (a reload reaches every connection of the host).
   */
  checkRole(host: HostAddress | undefined, why: string): void {
    if (!host || this.core.ending || this.checkingRole.has(host)) return;
    this.checkingRole.add(host);
    const { connector, stats, logger, name } = this.options;
    connector.checkSession(host, (err, session) => {
      this.checkingRole.delete(host);
      stats.roleChecked();
      if (err) {
        // Unreachable: the host's own failures will show (its connections end, connects fail).
        logger.debug?.(`db-pool "${name}": ${host.address}: ${why}; its role could not be checked: ${scrubSecrets(err.message)}`);
        return;
      }
      if (!sessionMatches(connector.target.targetSessionAttrs, session!)) this.evictHost(host, `${why} (a new session confirms it)`);
    });
  }

  /**
   * The server at `host` no longer has the session the pool needs (promoted, demoted, made
   * read-only): every connection to it leaves — idle ones now, checked-out ones refuse any
   * further statement (PoolFailoverError) and close when they come back. New connections walk
   * the host list again.
   */
  evictHost(host: HostAddress | undefined, why: string): void {
    if (!host || this.core.ending) return;
    let evicted = 0;
    for (const entry of [...this.core.slots()]) {
      if (entry.host !== host || entry.evicted !== undefined || entry.removed) continue;
      entry.evicted = why;
      evicted++;
    }
    if (evicted === 0) return;
    this.core.destroyWhere((entry) => entry.host === host, 'failover');
    this.options.stats.evicted(evicted);
    this.options.connector.mark(host.address, 'evicted', why);
    this.options.logger.warn(
      `db-pool "${this.options.name}": evicted ${evicted} connection(s) to ${host.address}: ${scrubSecrets(why)}; new connections walk the host list again`,
    );
  }

  /**
   * A cancel request to `host` is out: until the server confirms it the host is suspect (a
   * statement that timed out and a cancel that is not even accepted are what a partition looks
   * like). Returns the end of the suspicion, which `failed` turns into the host being gone.
   */
  suspect(entry: PoolEntry): (failed: Error | undefined) => void {
    const host = entry.host;
    if (!host) return () => {};
    this.suspects.set(host, (this.suspects.get(host) ?? 0) + 1);
    return (failed) => {
      const left = this.suspects.get(host)! - 1;
      if (left === 0) this.suspects.delete(host);
      else this.suspects.set(host, left);
      if (failed) this.hostGone(entry, `a cancel request got no answer (${scrubSecrets(failed.message)})`);
    };
  }

  /** Its host has a cancel request unconfirmed: pinged before it is handed out. */
  isSuspect(entry: PoolEntry): boolean {
    return this.suspects.size > 0 && entry.host !== undefined && this.suspects.has(entry.host);
  }

  /**
   * A connection served a checkout: a host marked down (one of its connections ended) is up — a
   * terminated backend is not a server gone, and nothing else would say so while the pool opens
   * no connection there.
   */
  serving(entry: PoolEntry): void {
    if (entry.host !== undefined && this.options.connector.highAvailability) this.options.connector.serving(entry.host.address);
  }
}
