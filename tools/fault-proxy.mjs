// A small fault-injecting TCP proxy for the fault suite: it sits between a pool and PostgreSQL
// and, on command, delays, refuses, blackholes, freezes or resets traffic.
//
//   pass       forward everything
//   latency    forward everything, each chunk delayed by `latencyMs`
//   refuse     stop listening: new connections get ECONNREFUSED (open ones keep working)
//   blackhole  accept new connections and never answer them (open ones keep working)
//   freeze     stop moving bytes on every open connection, both ways, sockets left open
//              (new connections are blackholed too)
//   reset      destroy every open connection at once (RST), then pass
//
// It also counts what passes: connections accepted, and statements (the protocol's Query and
// Parse messages) forwarded to the server — "no statement reached the old server" is a count.
import { createServer, connect } from 'node:net';

/**
 * @param {{ host?: string, port: number }} target
 * @returns {Promise<FaultProxy>}
 */
export async function startFaultProxy(target) {
  const host = target.host ?? '127.0.0.1';
  /** @type {Set<{ client: import('node:net').Socket, upstream?: import('node:net').Socket }>} */
  const links = new Set();
  let mode = 'pass';
  let latencyMs = 0;
  let port = 0;
  let listening = false;
  let accepted = 0;
  let statements = 0;

  const server = createServer((client) => {
    const link = { client, upstream: undefined };
    links.add(link);
    accepted++;
    client.on('error', () => {});
    client.on('close', () => {
      links.delete(link);
      link.upstream?.destroy();
    });
    if (mode === 'blackhole' || mode === 'freeze') return; // held open, never answered
    const upstream = connect(target.port, host);
    link.upstream = upstream;
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
    pipe(client, upstream, statementCounter());
    pipe(upstream, client);
  });

  /**
   * Reads the frontend's message stream as it passes: the start-up packet (and an SSLRequest)
   * has no type byte, every later message is a type byte and a 4-byte length.
   */
  function statementCounter() {
    let buffered = Buffer.alloc(0);
    let started = false;
    return (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        if (!started) {
          if (buffered.length < 8) return;
          const length = buffered.readUInt32BE(0);
          if (buffered.length < length) return;
          const code = buffered.readUInt32BE(4);
          buffered = buffered.subarray(length);
          if (code !== 80877103 && code !== 80877104) started = true; // not SSLRequest / GSSENCRequest
          continue;
        }
        if (buffered.length < 5) return;
        const length = buffered.readUInt32BE(1);
        if (buffered.length < 1 + length) return;
        const type = String.fromCharCode(buffered[0]);
        if (type === 'Q' || type === 'P') statements++;
        buffered = buffered.subarray(1 + length);
      }
    };
  }

  function pipe(from, to, observe) {
    from.on('data', (chunk) => {
      if (mode === 'freeze') return; // dropped: the connection looks alive and says nothing
      observe?.(chunk);
      if (mode === 'latency' && latencyMs > 0) setTimeout(() => to.writable && to.write(chunk), latencyMs);
      else if (to.writable) to.write(chunk);
    });
  }

  const listen = () =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.removeListener('error', reject);
        port = server.address().port;
        listening = true;
        resolve();
      });
    });
  await listen();

  const proxy = {
    get port() {
      return port;
    },
    get mode() {
      return mode;
    },
    /** Connections currently open through the proxy. */
    get connections() {
      return links.size;
    },
    /** Connections accepted since the proxy started (blackholed ones included). */
    get accepted() {
      return accepted;
    },
    /** Statements (Query and Parse messages) forwarded to the server since the proxy started. */
    get statements() {
      return statements;
    },
    /** The same URL, pointed at the proxy. */
    url(databaseUrl) {
      const u = new URL(databaseUrl);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    /** @param {'pass'|'latency'|'refuse'|'blackhole'|'freeze'|'reset'} next */
    async setMode(next, options = {}) {
      latencyMs = options.latencyMs ?? latencyMs;
      if (next === 'reset') {
        for (const link of links) {
          if (link.client.resetAndDestroy) link.client.resetAndDestroy();
          else link.client.destroy();
          link.upstream?.destroy();
        }
        links.clear();
        next = 'pass';
      }
      if (next === 'refuse' && listening) {
        listening = false;
        server.close(); // stops accepting now; open connections stay as they are
      } else if (next !== 'refuse' && !listening) {
        await listen();
      }
      mode = next;
    },
    async close() {
      for (const link of links) {
        link.client.destroy();
        link.upstream?.destroy();
      }
      if (listening) server.close();
      listening = false;
    },
  };
  return proxy;
}
