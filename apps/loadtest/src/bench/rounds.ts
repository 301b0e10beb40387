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
 * is timed. Without it, at 1 and 10 callers a slice ran at up to twice the speed after another
 * contender's slice that it ran after its own, and ABBA's round boundary (the last contender of
 * one round is the first of the next) gave the first contender of the list, db-pool, the slow
 * slot in every other round (docs/benchmarks.md, "Why the sweep missed at 50 and 200 callers").
 */
export const SETTLE_MS = 50;

/**
 * Interleaves the contenders in many short rounds at one number of callers, in list order on even
 * rounds and reversed on odd ones (ABBA): the two sides of a ratio, listed next to each other, are
 * always measured back to back, and each goes first as often as the other, so a drift in machine
 * speed cancels out. A warm-up slice per contender comes first and is thrown away: JIT,
 * connection caches, the server's plan cache.
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
    const order = round % 2 === 0 ? contenders : [...contenders].reverse();
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
