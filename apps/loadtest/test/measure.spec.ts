// The bench's statistics: arithmetic over numbers (the runs themselves are `nx run loadtest:bench`).
import { closedLoop, medianInterval, ratioStat, roundPairRatios, roundRatios, type SliceResult } from '../src/bench/measure.js';
import { roundOrder } from '../src/bench/rounds.js';

/** A seeded generator (mulberry32), so the coverage check is the same on every run. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("a ratio's median and its 95 % interval", () => {
  it('bounds the median by the order statistics at n/2 ∓ 0.98√n', () => {
    const sorted = Array.from({ length: 300 }, (_, i) => i + 1);
    // 150 − 16.97 → the 133rd; 151 + 16.97 → the 168th.
    expect(medianInterval(sorted)).toEqual([133, 168]);
    expect(medianInterval(Array.from({ length: 5 }, (_, i) => i)).every(Number.isNaN)).toBe(true);
  });

  it('covers the true median of skewed rounds about 95 % of the time', () => {
    // Per-round ratios as this machine gives them: around 1, skewed to the right (a round on a
    // busy moment is slower, never faster by as much). exp(N(0, 0.2)) has median exactly 1.
    const random = seeded(22);
    const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
    let covered = 0;
    const trials = 2000;
    for (let t = 0; t < trials; t++) {
      const rounds = Array.from({ length: 75 }, () => Math.exp(0.2 * normal()));
      const { ci95 } = ratioStat(rounds);
      if (ci95[0] <= 1 && 1 <= ci95[1]) covered++;
    }
    expect(covered / trials).toBeGreaterThan(0.93);
    expect(covered / trials).toBeLessThan(0.98);
  });

  it('reports the spread as half the interval over the median, narrowing as √n', () => {
    const random = seeded(7);
    const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
    const spreadAt = (n: number) => ratioStat(Array.from({ length: n }, () => Math.exp(0.15 * normal()))).spread;
    const at75 = spreadAt(75);
    const at300 = spreadAt(300);
    expect(at75).toBeGreaterThan(0.02);
    // Four times the rounds, about half the spread.
    expect(at300 / at75).toBeGreaterThan(0.35);
    expect(at300 / at75).toBeLessThan(0.7);
  });
});

describe("the rounds' order", () => {
  const sequence = (list: string[], groups: number[], rounds: number) =>
    Array.from({ length: rounds }, (_, r) => roundOrder(list, r, groups)).flat();

  it('reverses the whole list on odd rounds with one group, so the first and the last run twice in a row at the boundaries', () => {
    expect(roundOrder(['a', 'b', 'c'], 1)).toEqual(['c', 'b', 'a']);
    const seq = sequence(['a', 'b', 'c'], [], 4);
    const doubled = seq.filter((name, i) => i > 0 && seq[i - 1] === name);
    expect(doubled).toEqual(['c', 'a', 'c']);
  });

  it('with groups, reverses each in place on odd rounds: no contender runs twice in a row, and each pair in a group goes both ways', () => {
    // The sweep's list: pool.query's three, connect/release's pair, pgbench.
    const list = ['db', 'pg', 'adaptive', 'dbC', 'pgC', 'pgbench'];
    expect(roundOrder(list, 0, [3, 2])).toEqual(list);
    expect(roundOrder(list, 1, [3, 2])).toEqual(['adaptive', 'pg', 'db', 'pgC', 'dbC', 'pgbench']);
    const seq = sequence(list, [3, 2], 6);
    expect(seq.filter((name, i) => i > 0 && seq[i - 1] === name)).toEqual([]);
    for (const [a, b] of [
      ['db', 'pg'],
      ['pg', 'adaptive'],
      ['dbC', 'pgC'],
    ]) {
      const firsts = [0, 1].map((r) => {
        const order = roundOrder(list, r, [3, 2]);
        return order.indexOf(a) < order.indexOf(b) ? a : b;
      });
      expect(firsts).toEqual([a, b]);
    }
  });
});

describe('a closed loop', () => {
  const turn = () => new Promise<void>((resolve) => setImmediate(resolve));
  /**
   * One caller's operation: a turn of the event loop while the slice is young; the first one
   * started `lateMs` into it lasts until the slice is over (it ends in the drain). `quick` counts
   * the others.
   */
  const drained = (lateMs: number, durationMs: number) => {
    const started = performance.now();
    let quick = 0;
    const op = async () => {
      if (performance.now() - started < lateMs) {
        await turn();
        quick++;
        return;
      }
      while (performance.now() <= started + durationMs + 1) await turn();
    };
    return { op, quick: () => quick };
  };

  it('counts every operation over the whole slice by default, the one that ended in the drain too', async () => {
    const { op, quick } = drained(15, 30);
    const r = await closedLoop(1, 30, op);
    expect(r.ops).toBe(quick() + 1);
    expect(r.elapsedMs).toBeGreaterThan(30);
  });

  it('with steadyFromMs, counts only the operations that end inside the steady window, over that window', async () => {
    const whole = drained(15, 30);
    const r = await closedLoop(1, 30, whole.op, { steadyFromMs: 0 });
    // The one that ended after the slice is not counted, however long the drain.
    expect(r.ops).toBe(whole.quick());
    expect(r.latencies.length).toBe(whole.quick() + 1);
    expect(r.elapsedMs).toBeCloseTo(30, 6);

    const late = drained(15, 30);
    const windowed = await closedLoop(1, 30, late.op, { steadyFromMs: 10 });
    expect(windowed.elapsedMs).toBeCloseTo(20, 6);
    // Nor those that ended in the first 10 ms.
    expect(windowed.ops).toBeGreaterThan(0);
    expect(windowed.ops).toBeLessThan(late.quick());
  });
});

describe('ratios over pairs of rounds', () => {
  it('cancel a slice that is slower for running second, where per-round ratios split in two', () => {
    // The same rate on both sides; whichever runs second in a round is 10 % slower, and the order flips every round.
    const slice = (ops: number): SliceResult => ({ ops, elapsedMs: 1000, latencies: new Float64Array() });
    const a = Array.from({ length: 8 }, (_, i) => slice(i % 2 === 0 ? 90 : 100));
    const b = Array.from({ length: 8 }, (_, i) => slice(i % 2 === 0 ? 100 : 90));
    const rate = (s: SliceResult) => s.ops;
    expect(new Set(roundRatios(a, b, rate).map((r) => r.toFixed(3)))).toEqual(new Set(['0.900', '1.111']));
    expect(roundPairRatios(a, b, rate)).toEqual([1, 1, 1, 1]);
    // A lone last round is left out.
    expect(roundPairRatios(a.slice(0, 7), b.slice(0, 7), rate)).toHaveLength(3);
  });
});
