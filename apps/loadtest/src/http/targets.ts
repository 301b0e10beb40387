/**
 * The HTTP benchmark's targets (#22): for each slice (read, write × 10 / 50 / 200 connections),
 * db-pool's throughput and p99 against the same routes on plain `TypeOrmModule.forRoot`
 * defaults, and under overload the answers given within the route's deadline against the api's
 * capacity. Each ratio is the median over rounds of the per-round ratio (the two ran back to
 * back, who went first alternating; under overload, the capacity was measured just before), so a
 * round on a busy machine moves both sides.
 */

export interface HttpTarget {
  name: 'http_throughput_vs_baseline' | 'http_p99_vs_baseline' | 'http_overload_goodput_vs_capacity';
  /** The slice (`read GET /items/:id @ 10`), or `overload`. */
  slice: string;
  comparison: '>=' | '<=';
  limit: number;
  measured: number;
  met: boolean;
}

/** One round of one slice: both contenders' figures. */
export interface RoundPair {
  ours: { rps: number; p99: number };
  baseline: { rps: number; p99: number };
}

export const HTTP_THROUGHPUT_MIN = 0.97;
export const HTTP_P99_MAX = 1.1;
export const HTTP_OVERLOAD_GOODPUT_MIN = 0.75;

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Per-round ratios, their median; NaN when a side measured nothing (a ratio over 0 says nothing). */
export function medianRatio(rounds: RoundPair[], of: (r: RoundPair) => [number, number]): number {
  const ratios = rounds
    .map(of)
    .filter(([, theirs]) => theirs > 0)
    .map(([ours, theirs]) => ours / theirs);
  return ratios.length === 0 ? NaN : median(ratios);
}

/** Goodput within the deadline over capacity: the median of the per-round ratios (NaN when no round measured a capacity). */
export function overloadGoodput(rounds: OverloadRound[]): number {
  const ratios = rounds.filter((r) => r.capacityPerSec > 0).map((r) => r.withinDeadlinePerSec / r.capacityPerSec);
  return ratios.length === 0 ? NaN : median(ratios);
}

function target(
  name: HttpTarget['name'],
  slice: string,
  comparison: HttpTarget['comparison'],
  limit: number,
  measured: number,
): HttpTarget {
  const met = Number.isFinite(measured) && (comparison === '>=' ? measured >= limit : measured <= limit);
  return { name, slice, comparison, limit, measured: Math.round(measured * 1000) / 1000, met };
}

/** One overload round: the answers within the deadline per second, and the capacity measured just before. */
export interface OverloadRound {
  withinDeadlinePerSec: number;
  capacityPerSec: number;
}

/**
 * The verdicts: `slices` maps a slice's name to its rounds; `overload`, when the slice ran, its
 * rounds.
 */
export function httpTargets(slices: Map<string, RoundPair[]>, overload?: OverloadRound[]): HttpTarget[] {
  const out: HttpTarget[] = [];
  for (const [slice, rounds] of slices) {
    out.push(
      target(
        'http_throughput_vs_baseline',
        slice,
        '>=',
        HTTP_THROUGHPUT_MIN,
        medianRatio(rounds, (r) => [r.ours.rps, r.baseline.rps]),
      ),
    );
    out.push(
      target(
        'http_p99_vs_baseline',
        slice,
        '<=',
        HTTP_P99_MAX,
        medianRatio(rounds, (r) => [r.ours.p99, r.baseline.p99]),
      ),
    );
  }
  if (overload)
    out.push(target('http_overload_goodput_vs_capacity', 'overload', '>=', HTTP_OVERLOAD_GOODPUT_MIN, overloadGoodput(overload)));
  return out;
}

/** The verdict lines as the run prints them. */
export function formatTargets(targets: HttpTarget[]): string {
  const lines = targets.map(
    (t) =>
      `${`${t.name} [${t.slice}]`.padEnd(62)} ${Number.isFinite(t.measured) ? t.measured.toFixed(3) : '—'.padStart(5)}  ${t.comparison} ${t.limit}  ${t.met ? 'met' : 'MISSED'}`,
  );
  const missed = targets.filter((t) => !t.met).length;
  return `${lines.join('\n')}\n${missed === 0 ? 'All HTTP targets met.' : `HTTP TARGETS MISSED (${missed})`}\n`;
}
