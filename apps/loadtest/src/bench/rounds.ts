import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Contender } from './contenders.js';
import type { SliceResult } from './measure.js';
import type { Progress } from './progress.js';

/** Every slice of every round, per contender, at one number of callers. */
export interface LevelResult {
  callers: number;
  slices: Record<string, SliceResult[]>;
}

export interface RoundsOptions {
  rounds: number;
  durationMs: number;
  warmupMs: number;
  /**
   * The sizes of the groups of contenders compared with each other, in list order (what is left
   * after them is one more group): odd rounds reverse each group in place. The default, one group,
   * reverses the whole list.
   */
  groups?: number[];
  /** Called as a contender's slice starts; the function it returns is called as the slice ends. */
  observe?: (contender: Contender, callers: number, round: number) => (() => void) | undefined;
}

/**
 * A young-generation collection (a scavenge) between slices, so one contender's short-lived
 * garbage is not collected on the next one's time. Not a full collection: V8 drops optimized code
 * at a forced full one, so each slice after it began interpreted and re-optimized the functions
 * on its path (55 optimizations per 100 ms slice with pg.Pool and db-pool alternating, none with
 * a scavenge). That cost grows with the number of functions on a path, not with the work per
 * operation, and a running server never pays it (docs/benchmarks.md, "Why the sweep missed at 50
 * and 200 callers"). `--expose-gc` cannot be passed through the nx target, so it is switched on here.
 */
const collectGarbage: () => void = (() => {
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as (options?: { type: 'minor' | 'major' }) => void;
    return () => gc({ type: 'minor' });
  } catch {
    return () => {};
  }
})();

/**
 * The pause before each slice, in which the machine settles: what the last slice set going (its
 * server process's work after a burst, the client's background compiling) ends before the next
 * is timed. Without it, at 1 caller a slice that followed its own contender's ran at about half
 * the speed of one that followed another's, so the order of the round, not the pool, set the
 * ratio (docs/benchmarks.md, "Why the sweep missed at 50 and 200 callers"; see also
 * {@link roundOrder}).
 */
export const SETTLE_MS = 50;

/**
 * The order of round `round`: the list on even rounds; on odd ones each group reversed in place,
 * the groups in list order. So the two sides of a ratio, listed next to each other in a group,
 * each go first in half the rounds; and with two groups or more no contender runs twice in a row
 * (the whole list reversed makes the last of a round the first of the next, and the first of the
 * list ran its second slice in a row in every other round, always on the same side of its ratio).
 */
export function roundOrder<T>(list: readonly T[], round: number, groups: readonly number[] = []): readonly T[] {
  if (round % 2 === 0) return list;
  const out: T[] = [];
  let start = 0;
  for (const size of groups) {
    out.push(...list.slice(start, start + size).reverse());
    start += size;
  }
  out.push(...list.slice(start).reverse());
  return out;
}

/**
 * Interleaves the contenders in many short rounds at one number of callers, in list order on even
 * rounds and each group reversed on odd ones (see {@link roundOrder}): the two sides of a ratio,
 * listed next to each other, are always measured back to back, and each goes first as often as the
 * other, so a drift in machine speed cancels out. A warm-up slice per contender comes first and is
 * thrown away: JIT, connection caches, the server's plan cache.
 */
export async function runRounds(
  label: string,
  contenders: Contender[],
  callers: number,
  options: RoundsOptions,
  progress: Progress,
): Promise<LevelResult> {
  for (const contender of contenders) {
    progress.activity(`${label} · warm-up · ${contender.name}`);
    await contender.run(callers, options.warmupMs);
    progress.advance(options.warmupMs);
  }
  const slices: Record<string, SliceResult[]> = Object.fromEntries(contenders.map((c) => [c.name, []]));
  for (let round = 0; round < options.rounds; round++) {
    const order = roundOrder(contenders, round, options.groups);
    for (const contender of order) {
      collectGarbage();
      await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
      progress.activity(`${label} · round ${round + 1}/${options.rounds} · ${contender.name}`);
      const stop = options.observe?.(contender, callers, round);
      let result: SliceResult;
      try {
        result = await contender.run(callers, options.durationMs);
      } catch (err) {
        throw new Error(`${label}: ${contender.name} failed with ${callers} caller(s): ${(err as Error).message}`, { cause: err });
      } finally {
        stop?.();
      }
      slices[contender.name].push(result);
      progress.advance(options.durationMs + SETTLE_MS);
    }
  }
  return { callers, slices };
}
