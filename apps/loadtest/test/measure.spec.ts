// The bench's statistics: arithmetic over numbers (the runs themselves are `nx run loadtest:bench`).
import { medianInterval, ratioStat } from '../src/bench/measure.js';

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
