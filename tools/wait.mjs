// Waiting in tests: for a state or an event, never for a time that happens to be long enough
// (a FATAL message, a restart, a process's start-up take what they take on a busy machine).
// One copy for the tests of every project: apps/api, apps/loadtest and libs/db-pool.

/** A pause that paces a loop (a probe's rate, a retry after a failure); never a wait for something to happen. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until the predicate holds or the time is up; resolves whether it held, for the test to assert on. */
export async function eventually(predicate, timeoutMs = 5_000, stepMs = 25) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await predicate()) return true;
    await sleep(stepMs);
  }
  return predicate();
}

/**
 * What a child process prints, stdout and stderr together, and a wait for a text in it. The wait
 * ends on the output that brings the text (at once if it is there already); it fails, with the
 * output so far, when the process closes its output first or the time is up.
 */
export function outputOf(child) {
  let text = '';
  let closed = false;
  const waiters = new Set();
  const onData = (chunk) => {
    text += chunk;
    for (const waiter of waiters) if (text.includes(waiter.needle)) waiter.settle();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  child.on('close', (code, signal) => {
    closed = true;
    for (const waiter of waiters)
      waiter.settle(new Error(`the process ended (${signal ?? code}) without printing "${waiter.needle}":\n${text}`));
  });
  return {
    text: () => text,
    waitFor(needle, timeoutMs = 20_000) {
      if (text.includes(needle)) return Promise.resolve();
      if (closed) return Promise.reject(new Error(`the process has ended without printing "${needle}":\n${text}`));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => waiter.settle(new Error(`"${needle}" not printed within ${timeoutMs} ms:\n${text}`)), timeoutMs);
        const waiter = {
          needle,
          settle(err) {
            clearTimeout(timer);
            waiters.delete(waiter);
            if (err) reject(err);
            else resolve();
          },
        };
        waiters.add(waiter);
      });
    },
  };
}
