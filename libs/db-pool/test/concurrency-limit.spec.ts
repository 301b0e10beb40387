// The adaptive limit's arithmetic, driven by a model server: the algorithm alone, not the pool
// (the pool with it runs against PostgreSQL in adaptive-limit.spec.ts).
import { GradientLimit } from '../src/pool/concurrency-limit.js';

/**
 * A closed system that keeps the limit busy: `inFlight` checkouts out, each taking `latency(n)`
 * with n in flight. Returns the limit after `samples` releases.
 */
function drive(limit: GradientLimit, samples: number, latency: (inFlight: number) => number): number[] {
  const seen: number[] = [];
  for (let i = 0; i < samples; i++) {
    const inFlight = limit.limit;
    limit.sample(latency(inFlight), inFlight);
    seen.push(limit.limit);
  }
  return seen;
}

/** A server with `cores` cores and a query of `serviceMs` on one: latency grows with load past the cores. */
const cpuBound = (cores: number, serviceMs: number) => (n: number) => serviceMs * Math.max(1, n / cores);

describe('GradientLimit', () => {
  it('settles a few above the point where a CPU-bound server saturates (2 cores: between 3 and 6), from the floor', () => {
    const limit = new GradientLimit({ floor: 2, ceiling: 60, random: () => 0.5 });
    limit.sample(17, 1); // a baseline window at low load
    for (let i = 0; i < 4; i++) limit.sample(17, 1);
    const seen = drive(limit, 2_000, cpuBound(2, 17));
    const settled = seen.slice(-500);
    expect(Math.min(...settled)).toBeGreaterThanOrEqual(2);
    // Probes hold it at the floor for a window now and then; the rest of the time it sits at 3–6.
    expect(settled.filter((l) => l >= 3 && l <= 6).length).toBeGreaterThan(450);
  });

  it('grows to the capacity while latency does not rise with concurrency (the server keeps up)', () => {
    const limit = new GradientLimit({ floor: 2, ceiling: 60, random: () => 0.5 });
    const seen = drive(limit, 400, () => 50);
    expect(seen[seen.length - 1]).toBe(60);
    // Slow start: doubling, so the capacity is reached within a few windows.
    expect(seen.indexOf(60)).toBeLessThan(100);
  });

  it('comes down from the capacity when the server saturates, and goes back up when it keeps up again', () => {
    const limit = new GradientLimit({ floor: 2, ceiling: 40, random: () => 0.5 });
    drive(limit, 300, () => 10);
    expect(limit.limit).toBe(40);
    const down = drive(limit, 300, cpuBound(4, 10));
    expect(down[down.length - 1]).toBeLessThanOrEqual(10);
    const up = drive(limit, 600, () => 10);
    expect(up[up.length - 1]).toBe(40);
  });

  it('follows a workload that became heavier: a probe re-measures the baseline instead of pinning the limit to the floor', () => {
    const limit = new GradientLimit({ floor: 2, ceiling: 60, probeEveryWindows: 50, random: () => 0.5 });
    drive(limit, 300, cpuBound(8, 2)); // a cheap query first: baseline 2 ms
    // Now every query costs ten times as much, at any concurrency up to 8 (8 cores).
    const seen = drive(limit, 3_000, cpuBound(8, 20));
    const settled = seen.slice(-300).filter((l) => l > 2);
    expect(settled.length).toBeGreaterThan(250);
    expect(Math.max(...settled)).toBeGreaterThanOrEqual(8);
  });

  it('windows where demand stays below half the limit leave it where it is', () => {
    const limit = new GradientLimit({ floor: 2, ceiling: 60, random: () => 0.5 });
    drive(limit, 200, () => 5);
    expect(limit.limit).toBe(60);
    for (let i = 0; i < 200; i++) limit.sample(500, 3); // slow, but only 3 in flight: app-limited
    expect(limit.limit).toBe(60);
  });
});
