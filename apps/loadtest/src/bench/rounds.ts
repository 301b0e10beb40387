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
 * A full garbage collection between slices, so one contender's garbage is not collected on the
 * next one's time. `--expose-gc` cannot be passed through the nx target, so it is switched on here.
 */
const collectGarbage: () => void = (() => {
  try {
    setFlagsFromString('--expose-gc');
    return runInNewContext('gc') as () => void;
  } catch {
    return () => {};
  }
})();

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
      progress.advance(options.durationMs);
      // Let timers and socket callbacks of the last slice settle before the next one is timed.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  return { callers, slices };
}
