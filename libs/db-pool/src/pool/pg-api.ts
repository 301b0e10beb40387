/**
 * pg's calling conventions, as the drop-in keeps them: the dual callback-or-promise API, secrets
 * kept out of enumerable options, and callbacks run in their caller's async context.
 */
import { AsyncResource } from 'node:async_hooks';
import type pg from 'pg';

/**
 * `fn`, run in the async context it was made in (the caller's AsyncLocalStorage stores: a request's
 * deadline, a span) wherever it is called from. An AsyncResource of its own rather than
 * `AsyncResource.bind`, which also defines deprecated accessors on every bound function (twice the
 * cost, in profile); no destroy hook is wanted, so none is registered.
 */
export function callersContext<A, B, C>(fn: (a: A, b: B, c: C) => void): (a: A, b: B, c: C) => void {
  const resource = new AsyncResource('db-pool.callback', { requireManualDestroy: true });
  return (a, b, c) => resource.runInAsyncScope(fn, undefined, a, b, c);
}

/** Copies `password` and `connectionString` from `source` onto `target` as non-enumerable, as pg-pool hides the password. */
export function hideSecrets<T extends object>(target: T, source: pg.PoolConfig): T {
  for (const key of ['password', 'connectionString'] as const) {
    if (key in source) Object.defineProperty(target, key, { value: source[key], enumerable: false, writable: true, configurable: true });
  }
  return target;
}

/** pg's dual API: a callback when one is given, else a promise. */
export function promised<T>(
  P: PromiseConstructor,
  callback: ((err: Error | undefined, value?: T) => void) | undefined,
  run: (done: (err?: Error, value?: T) => void) => void,
): Promise<T> | undefined {
  if (callback) {
    run((err, value) => callback(err, value));
    return undefined;
  }
  return new P<T>((resolve, reject) => run((err, value) => (err ? reject(err) : resolve(value as T))));
}
