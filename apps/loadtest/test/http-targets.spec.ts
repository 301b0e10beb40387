// The HTTP benchmark's verdicts: arithmetic over measured figures (the run itself is `nx run loadtest:http`).
import { formatTargets, httpTargets, medianRatio, overloadGoodput, type RoundPair } from '../src/http/targets.js';

const round = (oursRps: number, baseRps: number, oursP99 = 10, baseP99 = 10): RoundPair => ({
  ours: { rps: oursRps, p99: oursP99 },
  baseline: { rps: baseRps, p99: baseP99 },
});

describe('the HTTP targets', () => {
  it('judge each slice by the median of its per-round ratios, not by the ratio of medians', () => {
    // A slow round for both (the machine was busy) moves both sides; the per-round ratio stays.
    const rounds = [round(1000, 1000), round(500, 520), round(990, 1000), round(1010, 1000), round(480, 500)];
    expect(medianRatio(rounds, (r) => [r.ours.rps, r.baseline.rps])).toBeCloseTo(0.99, 5);
  });

  it('meet at the bounds and miss past them: throughput ≥ 0.97, p99 ≤ 1.10, overload goodput ≥ 0.75', () => {
    const slices = new Map<string, RoundPair[]>([
      ['read @ 10', [round(970, 1000, 11, 10)]],
      ['write @ 10', [round(969, 1000, 11.01, 10)]],
    ]);
    const targets = httpTargets(slices, [{ withinDeadlinePerSec: 74.9, capacityPerSec: 100 }]);
    expect(targets.map((t) => [t.name, t.slice, t.measured, t.met])).toEqual([
      ['http_throughput_vs_baseline', 'read @ 10', 0.97, true],
      ['http_p99_vs_baseline', 'read @ 10', 1.1, true],
      ['http_throughput_vs_baseline', 'write @ 10', 0.969, false],
      ['http_p99_vs_baseline', 'write @ 10', 1.101, false],
      ['http_overload_goodput_vs_capacity', 'overload', 0.749, false],
    ]);
    expect(formatTargets(targets)).toMatch(/HTTP TARGETS MISSED \(3\)\n$/);
    expect(formatTargets(targets.filter((t) => t.met))).toMatch(/All HTTP targets met\.\n$/);
  });

  it('judge the overload by the median of its per-round goodput over the capacity measured before it', () => {
    // A round whose capacity and overload both ran slow keeps its ratio; the max of the capacities would not.
    const rounds = [
      { withinDeadlinePerSec: 21, capacityPerSec: 25 },
      { withinDeadlinePerSec: 14, capacityPerSec: 17 },
      { withinDeadlinePerSec: 9, capacityPerSec: 20 },
    ];
    expect(overloadGoodput(rounds)).toBeCloseTo(14 / 17, 5);
    expect(httpTargets(new Map(), rounds)).toEqual([
      { name: 'http_overload_goodput_vs_capacity', slice: 'overload', comparison: '>=', limit: 0.75, measured: 0.824, met: true },
    ]);
  });

  it('a side that measured nothing is a miss, never a ratio over zero', () => {
    const targets = httpTargets(new Map([['read @ 200', [round(900, 0, 10, 0)]]]), [{ withinDeadlinePerSec: 10, capacityPerSec: 0 }]);
    expect(targets.every((t) => !t.met && Number.isNaN(t.measured))).toBe(true);
  });
});
