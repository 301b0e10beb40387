import { type OverloadReport, renderOverloadHtml } from './report-overload.js';
import type { Analysis, PhaseSummary } from './results.js';
import { CONTENDER_HEADERS, contenderCells, fmtMs, fmtRate, fmtRatio, fmtSpread, ratioRows } from './report-table.js';
import type { StateSample } from './scenarios.js';

/** What the report says about the run itself (machine, command, settings). */
export interface RunInfo {
  generated_at: string;
  command: string;
  rounds: number;
  duration_ms: number;
  quick: boolean;
  machine: Record<string, unknown>;
  /** The headline db-pool rows' settings. */
  db_pool_features: Record<string, unknown>;
}

export const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

export const esc = (s: unknown): string =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

export interface Series {
  name: string;
  color: string;
  points: { x: number; y: number }[];
  axis?: 'left' | 'right';
}

export interface Axis {
  label: string;
  scale: 'linear' | 'log';
  min: number;
  max: number;
  format: (v: number) => string;
}

export interface ChartSpec {
  id: string;
  title: string;
  x: { label: string; min: number; max: number; ticks: { value: number; label: string }[] };
  y: Axis;
  yRight?: Axis;
  series: Series[];
}

function niceStep(range: number, count: number): number {
  const raw = range / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
}

export function ticksOf(axis: Axis): number[] {
  if (axis.scale === 'log') {
    const out: number[] = [];
    for (let e = Math.floor(Math.log10(axis.min)); e <= Math.ceil(Math.log10(axis.max)); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v >= axis.min && v <= axis.max) out.push(v);
      }
    }
    return out;
  }
  const step = niceStep(axis.max - axis.min, 5);
  const out: number[] = [];
  for (let v = Math.ceil(axis.min / step) * step; v <= axis.max + step / 1e6; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Widens an axis to round numbers (log: whole decades) so the ticks frame the data. */
export function fitAxis(label: string, scale: 'linear' | 'log', values: number[], format: (v: number) => string, zeroBased = true): Axis {
  const finite = values.filter((v) => Number.isFinite(v) && (scale === 'linear' || v > 0));
  if (finite.length === 0) return { label, scale, min: scale === 'log' ? 0.01 : 0, max: 1, format };
  let min = Math.min(...finite);
  let max = Math.max(...finite);
  if (scale === 'log') {
    min = 10 ** Math.floor(Math.log10(min));
    max = 10 ** Math.ceil(Math.log10(max));
    if (min === max) max = min * 10;
  } else {
    if (zeroBased) min = 0;
    if (max === min) max = min + 1;
    const step = niceStep(max - min, 5);
    max = Math.ceil(max / step) * step;
  }
  return { label, scale, min, max, format };
}

export function lineChart(spec: ChartSpec): string {
  const width = 760;
  const legendRows = Math.ceil(spec.series.length / 2);
  const plot = { left: 78, top: 40, width: 760 - 78 - (spec.yRight ? 70 : 24), height: 280 };
  const height = plot.top + plot.height + 56 + legendRows * 20;
  const sx = (x: number) => plot.left + ((x - spec.x.min) / (spec.x.max - spec.x.min || 1)) * plot.width;
  const syOf = (axis: Axis) => (y: number) => {
    const t =
      axis.scale === 'log'
        ? (Math.log10(y) - Math.log10(axis.min)) / (Math.log10(axis.max) - Math.log10(axis.min))
        : (y - axis.min) / (axis.max - axis.min);
    return plot.top + plot.height - Math.max(0, Math.min(1, t)) * plot.height;
  };
  const sy = syOf(spec.y);
  const syRight = spec.yRight ? syOf(spec.yRight) : sy;
  const parts: string[] = [];
  parts.push(`<text x="${width / 2}" y="22" text-anchor="middle" class="title">${esc(spec.title)}</text>`);
  for (const t of ticksOf(spec.y)) {
    const y = sy(t).toFixed(1);
    parts.push(`<line x1="${plot.left}" x2="${plot.left + plot.width}" y1="${y}" y2="${y}" class="grid"/>`);
    parts.push(`<text x="${plot.left - 8}" y="${y}" dy="4" text-anchor="end" class="tick">${esc(spec.y.format(t))}</text>`);
  }
  if (spec.yRight) {
    for (const t of ticksOf(spec.yRight)) {
      parts.push(
        `<text x="${plot.left + plot.width + 8}" y="${syRight(t).toFixed(1)}" dy="4" class="tick">${esc(spec.yRight.format(t))}</text>`,
      );
    }
    parts.push(
      `<text transform="translate(${width - 14} ${plot.top + plot.height / 2}) rotate(90)" text-anchor="middle" class="axis-label">${esc(spec.yRight.label)}</text>`,
    );
  }
  for (const t of spec.x.ticks) {
    const x = sx(t.value).toFixed(1);
    parts.push(`<line x1="${x}" x2="${x}" y1="${plot.top + plot.height}" y2="${plot.top + plot.height + 5}" class="axis"/>`);
    parts.push(`<text x="${x}" y="${plot.top + plot.height + 20}" text-anchor="middle" class="tick">${esc(t.label)}</text>`);
  }
  parts.push(`<rect x="${plot.left}" y="${plot.top}" width="${plot.width}" height="${plot.height}" class="frame"/>`);
  parts.push(
    `<text x="${plot.left + plot.width / 2}" y="${plot.top + plot.height + 40}" text-anchor="middle" class="axis-label">${esc(spec.x.label)}</text>`,
  );
  parts.push(
    `<text transform="translate(18 ${plot.top + plot.height / 2}) rotate(-90)" text-anchor="middle" class="axis-label">${esc(spec.y.label)}</text>`,
  );

  for (const s of spec.series) {
    const y = s.axis === 'right' ? syRight : sy;
    const pts = s.points.filter((p) => Number.isFinite(p.y) && (spec.y.scale === 'linear' || s.axis === 'right' || p.y > 0));
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => `${i === 0 ? 'M' : 'L'}${sx(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(' ');
    parts.push(`<path d="${d}" stroke="${s.color}" class="series" data-name="${esc(s.name)}"/>`);
    if (pts.length <= 40) {
      for (const p of pts) {
        parts.push(
          `<circle cx="${sx(p.x).toFixed(1)}" cy="${y(p.y).toFixed(1)}" r="3.5" fill="${s.color}"><title>${esc(s.name)}: ${esc((s.axis === 'right' && spec.yRight ? spec.yRight : spec.y).format(p.y))}</title></circle>`,
        );
      }
    }
  }
  spec.series.forEach((s, i) => {
    const lx = plot.left + (i % 2) * (plot.width / 2);
    const ly = plot.top + plot.height + 58 + Math.floor(i / 2) * 20;
    parts.push(`<line x1="${lx}" x2="${lx + 22}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" class="series"/>`);
    parts.push(`<text x="${lx + 28}" y="${ly}" class="legend">${esc(s.name)}</text>`);
  });
  return `<svg id="${spec.id}" data-series="${spec.series.length}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="${esc(spec.title)}">\n${parts.join('\n')}\n</svg>`;
}

/** Each sweep contender's numbers at each concurrency, in the order the phases listed them. */
function sweepSeries(
  phases: PhaseSummary[],
  levels: number[],
  metric: (c: { opsPerSec: number; latencyMs: { p50: number } }) => number,
): Series[] {
  const byName = new Map<string, { x: number; y: number }[]>();
  for (const phase of phases.filter((p) => p.id.startsWith('sweep'))) {
    for (const level of phase.levels) {
      for (const c of level.contenders) {
        if (!byName.has(c.name)) byName.set(c.name, []);
        byName.get(c.name)!.push({ x: levels.indexOf(level.callers), y: metric(c) });
      }
    }
  }
  return [...byName].map(([name, points], i) => ({ name, color: PALETTE[i % PALETTE.length], points }));
}

function utilizationChart(samples: StateSample[], capacity: number, callers: number): string {
  const last = samples.length ? samples[samples.length - 1].tMs : 1;
  const waitingMax = Math.max(1, ...samples.map((s) => s.waiting));
  return lineChart({
    id: 'chart-pool-utilization',
    title: `db-pool state during a ${callers}-caller slice (pool.state() ${samples.length} times)`,
    x: {
      label: 'time since the slice started (ms)',
      min: 0,
      max: last,
      ticks: ticksOf(fitAxis('', 'linear', [last], String))
        .filter((t) => t <= last)
        .map((t) => ({ value: t, label: String(t) })),
    },
    y: { label: `utilization: active / capacity ${capacity} (%)`, scale: 'linear', min: 0, max: 100, format: (v) => `${v}%` },
    yRight: fitAxis('callers waiting', 'linear', [waitingMax], (v) => String(v)),
    series: [
      {
        name: 'utilization (active / capacity)',
        color: PALETTE[0],
        points: samples.map((s) => ({ x: s.tMs, y: (s.active / capacity) * 100 })),
      },
      { name: 'waiting callers (right axis)', color: PALETTE[1], axis: 'right', points: samples.map((s) => ({ x: s.tMs, y: s.waiting })) },
    ],
  });
}

export function renderHtml(a: Analysis | undefined, info: RunInfo, capacity: number, overload?: OverloadReport): string {
  const core = a ? renderCore(a, capacity) : '';
  const missed = [...(a?.missed ?? []), ...(overload?.missed ?? [])];
  const banner =
    missed.length === 0
      ? '<p class="banner met">All targets met.</p>'
      : `<div class="banner missed"><strong>Targets missed (${missed.length}):</strong><ul>${missed.map((m) => `<li>${esc(m)}</li>`).join('')}</ul></div>`;
  const machine = Object.entries(info.machine)
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(typeof v === 'object' ? JSON.stringify(v) : v)}</td></tr>`)
    .join('\n');
  return page(info, banner, core + (overload ? renderOverloadHtml(overload) : ''), machine);
}

function renderCore(a: Analysis, capacity: number): string {
  const sweep = a.phases.find((p) => p.id === 'sweep-core');
  const levels = sweep ? sweep.levels.map((l) => l.callers) : [];
  const xTicks = levels.map((c, i) => ({ value: i, label: String(c) }));
  const x = { label: 'concurrent callers (capacity 20)', min: -0.25, max: Math.max(1, levels.length - 1) + 0.25, ticks: xTicks };
  const latency = sweepSeries(a.phases, levels, (c) => c.latencyMs.p50);
  const throughput = sweepSeries(a.phases, levels, (c) => c.opsPerSec);
  const charts = [
    lineChart({
      id: 'chart-latency',
      title: 'p50 latency vs concurrency (log scale)',
      x,
      y: fitAxis(
        'p50 latency (ms)',
        'log',
        latency.flatMap((s) => s.points.map((p) => p.y)),
        fmtMs,
      ),
      series: latency,
    }),
    lineChart({
      id: 'chart-throughput',
      title: 'Throughput vs concurrency',
      x,
      y: fitAxis(
        'operations per second',
        'linear',
        throughput.flatMap((s) => s.points.map((p) => p.y)),
        fmtRate,
      ),
      series: throughput,
    }),
    utilizationChart(a.state_samples, capacity, levels.length ? levels[levels.length - 1] : 0),
  ];

  const verdictClass = (v: string) => (v === 'MISSED' ? 'missed' : v === 'met' ? 'met' : 'info');
  const ratioTable = ratioRows(a)
    .map(
      (r) =>
        `<tr class="${verdictClass(r.verdict)}"><td><code>${esc(r.key)}</code></td><td class="num">${fmtRatio(r.measured)}</td><td class="num">${fmtSpread(r.spread)}</td><td class="num">${fmtRatio(r.min)}–${fmtRatio(r.max)}</td><td>${esc(r.target)}</td><td>${r.verdict === 'info' ? 'no target' : r.verdict === 'MISSED' ? '<strong>MISSED</strong>' : 'met'}</td></tr>`,
    )
    .join('\n');
  const phaseTables = a.phases
    .flatMap((p) =>
      p.levels.map(
        (level) =>
          `<h3>${esc(p.title)}${p.levels.length > 1 ? ` — ${level.callers} caller(s)` : ''}</h3>\n<table><thead><tr>${CONTENDER_HEADERS.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>\n${level.contenders
            .map(
              (c) =>
                `<tr>${contenderCells(c)
                  .map((cell, i) => `<td${i > 0 && i < 9 ? ' class="num"' : ''}>${esc(cell)}</td>`)
                  .join('')}</tr>`,
            )
            .join('\n')}\n</tbody></table>`,
      ),
    )
    .join('\n');
  return `<h2>Ratios against baselines measured in the same run</h2>
<p>Each ratio is the median of per-round ratios: the contenders ran interleaved in short rounds, so machine noise hits both sides of a ratio alike.</p>
<table><thead><tr><th>ratio</th><th>median</th><th>its 95 % interval</th><th>range over rounds</th><th>target</th><th>verdict</th></tr></thead><tbody>
${ratioTable}
</tbody></table>
<h2>Charts</h2>
${charts.join('\n')}
<h2>Per scenario</h2>
<p>ops/s: median over rounds, with its range. Latency percentiles: over every operation of every round. Acquire wait: timed around <code>connect()</code>, or (≤) the upper bound of the db-pool wait-time histogram bucket the percentile falls in. pgbench with several clients per thread reports only its average latency.</p>
${phaseTables}
`;
}

function page(info: RunInfo, banner: string, body: string, machine: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>db-pool benchmark — ${esc(info.generated_at)}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.missed td { background: #fde2e2; }
tr.met td { background: #e5f6e5; }
.banner { padding: .6rem 1rem; border-radius: 4px; }
.banner.met { background: #e5f6e5; border: 1px solid #7bc47b; }
.banner.missed { background: #fde2e2; border: 1px solid #d66; }
svg { display: block; margin: 1rem 0 2rem; max-width: 100%; height: auto; }
svg .title { font-size: 15px; font-weight: 600; }
svg .tick, svg .legend { font-size: 12px; fill: #333; }
svg .axis-label { font-size: 12px; fill: #555; }
svg .grid { stroke: #e4e4e4; }
svg .axis { stroke: #888; }
svg .frame { fill: none; stroke: #888; }
svg .series { fill: none; stroke-width: 2; }
code { font-size: 13px; }
</style>
</head>
<body>
<h1>db-pool benchmark</h1>
<p>${esc(info.generated_at)} · ${info.rounds} rounds × ${info.duration_ms} ms per contender${info.quick ? ' · <strong>quick run</strong> (short slices: indicative only)' : ''}</p>
<p>Command: <code>${esc(info.command)}</code></p>
<p>db-pool rows run with every feature on: ${Object.entries(info.db_pool_features)
    .map(([k, v]) => `<code>${esc(k)}</code> ${esc(v)}`)
    .join(', ')}.</p>
${banner}
${body}
<h2>Machine</h2>
<table><tbody>
${machine}
</tbody></table>
</body>
</html>
`;
}
