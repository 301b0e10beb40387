import type { Analysis, ContenderSummary, RatioKey, Target } from './results.js';

export function fmtMs(v: number): string {
  if (!Number.isFinite(v)) return '—';
  if (v < 1) return v.toFixed(3);
  if (v < 10) return v.toFixed(2);
  if (v < 100) return v.toFixed(1);
  return v.toFixed(0);
}

export function fmtRate(v: number): string {
  return Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '—';
}

export function fmtRatio(v: number): string {
  if (!Number.isFinite(v)) return '—';
  return v >= 10 ? v.toFixed(1) : v.toFixed(3);
}

/** One row of the per-contender tables, shared by the text and HTML reports. */
export function contenderCells(c: ContenderSummary): string[] {
  const approx = c.waitMs?.source === 'histogram' ? '≤' : '';
  return [
    c.name,
    fmtRate(c.opsPerSec),
    `${fmtRate(c.opsPerSecMin)}–${fmtRate(c.opsPerSecMax)}`,
    fmtMs(c.latencyMs.mean),
    fmtMs(c.latencyMs.p50),
    fmtMs(c.latencyMs.p95),
    fmtMs(c.latencyMs.p99),
    c.waitMs ? `${approx}${fmtMs(c.waitMs.p50)}` : '—',
    c.waitMs ? `${approx}${fmtMs(c.waitMs.p99)}` : '—',
    c.note ?? '',
  ];
}

export const CONTENDER_HEADERS = [
  'contender',
  'ops/s',
  'ops/s range',
  'mean ms',
  'p50 ms',
  'p95 ms',
  'p99 ms',
  'wait p50 ms',
  'wait p99 ms',
  'how',
];

export interface RatioRow {
  key: string;
  measured: number;
  min: number;
  max: number;
  /** Half the median's 95 % interval over the median. */
  spread: number;
  target: string;
  verdict: 'met' | 'MISSED' | 'info';
}

/** A median's 95 % interval as ± a percentage of it ('—' when the rounds are too few). */
export const fmtSpread = (spread: number): string => (Number.isFinite(spread) ? `±${(spread * 100).toFixed(1)} %` : '—');

/** Every ratio, one row per concurrency for throughput, with its target and verdict. */
export function ratioRows(a: Analysis): RatioRow[] {
  const rows: RatioRow[] = [];
  const detail = (key: string) => a.ratio_details[key] ?? { median: NaN, min: NaN, max: NaN, spread: NaN, rounds: [] };
  for (const [key, value] of Object.entries(a.ratios) as [RatioKey, number | Record<string, number>][]) {
    const target: Target | undefined = a.targets[key];
    if (typeof value === 'number') {
      const d = detail(key);
      rows.push({
        key,
        measured: value,
        min: d.min,
        max: d.max,
        spread: d.spread,
        target: target ? `${target.comparison} ${target.limit}` : 'none',
        verdict: target ? (target.met ? 'met' : 'MISSED') : 'info',
      });
    } else {
      for (const [c, v] of Object.entries(value)) {
        const d = detail(`${key}.${c}`);
        const per = target?.by_concurrency?.[c];
        rows.push({
          key: `${key}[${c}]`,
          measured: v,
          min: d.min,
          max: d.max,
          spread: d.spread,
          target: per && target ? `${target.comparison} ${target.limit}` : 'none',
          verdict: per ? (per.met ? 'met' : 'MISSED') : 'info',
        });
      }
    }
  }
  for (const key of Object.keys(a.ratio_details).filter(
    (k) => k.startsWith('adaptive_') || k.startsWith('checkout_') || k.startsWith('pg_pool_') || k.startsWith('every_stack_'),
  )) {
    const d = detail(key);
    rows.push({ key, measured: d.median, min: d.min, max: d.max, spread: d.spread, target: 'none', verdict: 'info' });
  }
  return rows;
}

export function table(headers: string[], rows: string[][], rightAligned: Set<number>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (rightAligned.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function renderTable(a: Analysis, meta: { rounds: number; durationMs: number }): string {
  const out: string[] = [];
  const numeric = new Set([1, 2, 3, 4, 5, 6, 7, 8]);
  for (const phase of a.phases) {
    for (const level of phase.levels) {
      out.push(
        `\n== ${phase.title}${phase.levels.length > 1 ? ` — ${level.callers} caller(s)` : ''} (${level.contenders[0]?.rounds ?? meta.rounds} rounds × ${meta.durationMs} ms, interleaved)`,
      );
      out.push(table(CONTENDER_HEADERS, level.contenders.map(contenderCells), numeric));
    }
  }
  out.push('\n≤ = upper bound of the db-pool wait-time histogram bucket the percentile falls in; other waits are timed around connect().');
  out.push('pgbench with several clients per thread reports only an average latency (its per-transaction log uses lazy clocks).');
  out.push('ops/s = median of rounds; latency percentiles over every operation of every round.');

  out.push("\n== Ratios (median of per-round ratios; 95 % CI = the median's 95 % interval; range = min–max over rounds)");
  const rows = ratioRows(a).map((r) => [
    r.key,
    fmtRatio(r.measured),
    fmtSpread(r.spread),
    `${fmtRatio(r.min)}–${fmtRatio(r.max)}`,
    r.target,
    r.verdict === 'info' ? 'no target' : r.verdict,
  ]);
  out.push(table(['ratio', 'measured', '95 % CI', 'range', 'target', 'verdict'], rows, new Set([1, 2, 3])));
  out.push('');
  if (a.all_targets_met) out.push('All targets met.');
  else out.push(`TARGETS MISSED (${a.missed.length}):\n${a.missed.map((m) => `  - ${m}`).join('\n')}`);
  return `${out.join('\n')}\n`;
}
