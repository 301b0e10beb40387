/**
 * Connections outside the pools, one per server, for background samples: the replica router's
 * lag samples and the connection budget's presence. A server whose pool is busy (every connection
 * running a report, callers queued) is not one that cannot be sampled, and a read spike must not
 * take every replica out of rotation at once.
 */
import type pg from 'pg';
import type { DbPoolConfig } from '../config/db-pool.options.js';
import { Connector } from './connector.js';
import { toPgPoolOptions } from './pg-options.js';
import { destroySocket, localEndpointOf } from './pg-internals.js';

/** How long closing a sample connection waits for the server's goodbye before the socket is destroyed. */
const CLOSE_WAIT_MS = 1_000;

/** A lag sample that did not answer within its bound. Its text is the router's own: it names no host. */
export class SampleTimeoutError extends Error {
  override name = 'SampleTimeoutError';
  constructor(readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms (DB_POOL_HEALTH_TIMEOUT_MS), connect included`);
  }
}

/**
 * The sampler's connection to one server: opened as that server's pool opens its own (its host
 * list, `target_session_attrs`, pg's options and `application_name`, `DB_CONNECT_TIMEOUT`) but
 * outside the pool, so that a sample never queues behind the pool's callers. One sample at a
 * time (the router's rounds do not overlap). A sample that fails or does not answer in time
 * closes the connection and the next opens another; a connect still under way when a sample
 * gives up goes on, bounded by its own timeout, and serves the next sample.
 */
export class SampleConnection {
  private client: pg.Client | undefined;
  private opening: Promise<pg.Client> | undefined;
  /** The client of the connect under way (a shutdown ends it). */
  private connecting: pg.Client | undefined;
  private closed = false;
  private readonly dropped = new WeakSet<pg.Client>();
  private readonly connector: Connector;
  private readonly onOpen: ((client: pg.Client) => Promise<unknown>) | undefined;
  /** What a sample after {@link close} is told: its owner has ended. */
  private readonly endedMessage: string;

  /**
   * `owner` names who samples, for the error a sample after {@link close} gets ("the replica
   * router"). `onOpen` runs on every connection it opens, before the first query on it (the
   * budget's presence listens for the other processes' notices there); a failure closes the connection.
   */
  constructor(
    config: DbPoolConfig,
    Client: typeof pg.Client,
    options: { owner: string; onOpen?: (client: pg.Client) => Promise<unknown> },
  ) {
    this.onOpen = options.onOpen;
    this.endedMessage = `${options.owner} has ended`;
    const clientConfig = toPgPoolOptions(config);
    clientConfig.connectionTimeoutMillis = config.connectTimeoutMs;
    this.connector = new Connector({ Client, clientConfig });
  }

  /** The first row `query` answers (a text, or a config with values), within `timeoutMs` in all, connect included. */
  async queryRow<R>(query: string | pg.QueryConfig, timeoutMs: number): Promise<R> {
    let timer: NodeJS.Timeout | undefined;
    let client: pg.Client | undefined;
    let timedOut = false;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        timedOut = true;
        // A query on the wire with no answer: the connection goes (the server ends the backend on
        // the Terminate, or when the socket is destroyed). A connect under way goes on.
        if (client) this.drop(client);
        reject(new SampleTimeoutError(timeoutMs));
      }, timeoutMs);
      timer.unref();
    });
    const run = async (): Promise<R> => {
      const opened = await this.connected();
      if (timedOut) throw new SampleTimeoutError(timeoutMs); // nobody waits for it: kept for the next sample
      client = opened;
      try {
        return (await opened.query<R & pg.QueryResultRow>(query)).rows[0];
      } catch (err) {
        this.drop(opened);
        throw err;
      }
    };
    try {
      return await Promise.race([timeout, run()]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The open connection's own address and port (undefined while none is open, or over a Unix socket). */
  get localEndpoint(): { address: string; port: number } | undefined {
    return this.client ? localEndpointOf(this.client) : undefined;
  }

  /** Whether a connection is open now (a query would not open one). */
  get open(): boolean {
    return this.client !== undefined;
  }

  /** Closes the connection, and ends a connect under way; later samples fail. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.connecting) destroySocket(this.connecting);
    const client = this.client;
    this.client = undefined;
    if (client) await closeClient(client);
  }

  private connected(): Promise<pg.Client> {
    if (this.closed) return Promise.reject(new Error(this.endedMessage));
    if (this.client) return Promise.resolve(this.client);
    this.opening ??= new Promise<pg.Client>((resolveOpen, rejectOpen) => {
      // `opening` stands until the connection is ready (its onOpen done), so a sample meanwhile waits for it.
      const resolve = (client: pg.Client) => {
        this.opening = undefined;
        resolveOpen(client);
      };
      const reject = (err: Error) => {
        this.opening = undefined;
        rejectOpen(err);
      };
      this.connector.open(
        {
          attempt: (client) => {
            this.connecting = client;
            // An error on a socket nobody queries (the server went away between samples) must not go unheard.
            client.on('error', () => this.drop(client));
          },
          proceed: () => !this.closed,
          internal: true,
        },
        (err, opened) => {
          const attempted = this.connecting;
          this.connecting = undefined;
          if (err || !opened) {
            if (attempted) destroySocket(attempted);
            return reject(err ?? new Error('no connection'));
          }
          if (this.closed) {
            void closeClient(opened.client);
            return reject(new Error(this.endedMessage));
          }
          const client = opened.client;
          client.once('end', () => this.drop(client));
          if (!this.onOpen) {
            this.client = client;
            return resolve(client);
          }
          this.onOpen(client).then(
            () => {
              if (this.closed || this.dropped.has(client)) {
                this.drop(client);
                return reject(new Error(this.endedMessage));
              }
              this.client = client;
              resolve(client);
            },
            (failed: unknown) => {
              this.drop(client);
              reject(failed as Error);
            },
          );
        },
      );
    });
    return this.opening;
  }

  private drop(client: pg.Client): void {
    if (this.client === client) this.client = undefined;
    if (this.dropped.has(client)) return;
    this.dropped.add(client);
    void closeClient(client);
  }
}

/** Ends a client: its Terminate, then its socket destroyed if the server has not closed it within {@link CLOSE_WAIT_MS}. */
function closeClient(client: pg.Client): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      destroySocket(client);
      resolve();
    }, CLOSE_WAIT_MS);
    timer.unref();
    client.end().then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      () => {
        clearTimeout(timer);
        destroySocket(client);
        resolve();
      },
    );
  });
}
