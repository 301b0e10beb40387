import type { OverloadRatios, OverloadResult, OverloadTarget } from './overload.js';
import { esc, fitAxis, lineChart, PALETTE, type Series, ticksOf } from './report-html.js';
import { fmtMs, fmtRate, fmtRatio, table } from './report-table.js';

export interface OverloadReport {
  result: OverloadResult;
  ratios: OverloadRatios;
  targets: Record<string, OverloadTarget>;
  missed: string[];
}

const OUTCOME_HEADERS = ['ok', 'late', 'shed', 'acquire_timeout', 'deadline', 'query_timeout', 'unanswered', 'other'] as const;

function rows(r: OverloadResult): string[][] {
  return r.contenders.map((c) => [
    c.name,
    fmtRate(c.goodput),
    fmtRatio(c.goodputVsCapacity),
    fmtMs(c.answeredMs.p50),
    fmtMs(c.answeredMs.p99),
    c.recoveryS === null ? '> 30' : c.recoveryS.toFixed(2),
    fmtMs(c.idleMs),
    OUTCOME_HEADERS.map((k) => `${k} ${c.outcomes[k]}`)
      .filter((x) => !x.endsWith(' 0'))
      .join(', '),
    c.pool ? `limit ${c.pool.limit} (${c.pool.floor}–${c.pool.ceiling}), shed ${c.pool.shed}, cancels ${c.pool.cancels}` : '',
    c.note,
  ]);
}

const HEADERS = [
  'contender',
  'goodput/s',
  'vs capacity',
  'answer p50 ms',
  'answer p99 ms',
  'recovery s',
  'idle ms',
  'outcomes',
  'pool',
  'how',
];

function describe(r: OverloadResult): string {
  const s = r.settings;
  return (
    `capacity ${fmtRate(r.capacity.opsPerSec)}/s (best closed loop, at ${r.capacity.concurrency} connections; sweep ${r.capacity.levels
      .map((l) => `${l.concurrency}: ${fmtRate(l.opsPerSec)}/s`)
      .join(', ')}); ` +
    `open-loop arrivals at ${s.factor}× = ${fmtRate(r.capacity.opsPerSec * s.factor)}/s for ${s.overloadMs / 1000} s, deadline ${s.deadlineMs} ms from arrival; ` +
    `query: ${s.sql}`
  );
}

export function renderOverloadTable(r: OverloadResult, a: Omit<OverloadReport, 'result'>): string {
  const out = [`\n== Overload: ${describe(r)}`];
  out.push(table(HEADERS, rows(r), new Set([1, 2, 3, 4, 5, 6])));
  for (const c of r.contenders.filter((x) => x.rounds !== undefined && x.rounds.length > 1))
    out.push(
      `${c.name}: the median of ${c.rounds!.length} rounds, each with a fresh pool against the capacity measured just before it ` +
        `(goodput / capacity: ${c.rounds!.map((x) => `${fmtRatio(x.goodputVsCapacity)} of ${fmtRate(x.capacityPerSec)}/s, limit ${x.limit}`).join('; ')})`,
    );
  out.push('\n== Overload ratios');
  out.push(
    table(
      ['ratio', 'measured', 'target', 'verdict'],
      Object.entries(a.targets).map(([k, t]) => [k, fmtRatio(t.measured), `${t.comparison} ${t.limit}`, t.met ? 'met' : 'MISSED']),
      new Set([1]),
    ),
  );
  out.push(a.missed.length === 0 ? 'All overload targets met.' : `OVERLOAD TARGETS MISSED:\n${a.missed.map((m) => `  - ${m}`).join('\n')}`);
  return `${out.join('\n')}\n`;
}

/** The HTML section: the table, the ratios, and goodput and the adaptive limit over time. */
export function renderOverloadHtml(report: OverloadReport): string {
  const r = report.result;
  const last = Math.max(1, ...r.contenders.flatMap((c) => c.timeline.map((b) => b.tMs)));
  const goodput: Series[] = r.contenders.map((c, i) => ({
    name: `${c.name}: goodput`,
    color: PALETTE[i % PALETTE.length],
    points: c.timeline.map((b) => ({ x: b.tMs / 1000, y: b.goodput })),
  }));
  const adaptive = r.contenders.find((c) => c.pool && c.timeline.some((b) => b.limit !== undefined && b.limit < c.pool!.ceiling));
  const limitSeries: Series[] = adaptive
    ? [
        {
          name: `${adaptive.name}: concurrency limit (right axis)`,
          color: '#000000',
          axis: 'right',
          points: adaptive.timeline.filter((b) => b.limit !== undefined).map((b) => ({ x: b.tMs / 1000, y: b.limit! })),
        },
      ]
    : [];
  const lastS = last / 1000;
  const chart = lineChart({
    id: 'chart-overload',
    title: `Goodput (answers within ${r.settings.deadlineMs} ms, per second) under ${r.settings.factor}× overload, and the adaptive limit`,
    x: {
      label: 's since the overload began (it ends at ' + String(r.settings.overloadMs / 1000) + ' s)',
      min: 0,
      max: lastS,
      ticks: ticksOf(fitAxis('', 'linear', [lastS], String))
        .filter((t) => t <= lastS)
        .map((t) => ({ value: t, label: String(t) })),
    },
    y: fitAxis(
      'answers within the deadline per second',
      'linear',
      [r.capacity.opsPerSec * 1.2, ...goodput.flatMap((s) => s.points.map((p) => p.y))],
      fmtRate,
    ),
    yRight: adaptive ? fitAxis('connections', 'linear', [adaptive.pool!.ceiling], String) : undefined,
    series: [...goodput, ...limitSeries],
  });
  const tableHtml = `<table><thead><tr>${HEADERS.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>\n${rows(r)
    .map((cells) => `<tr>${cells.map((c, i) => `<td${i > 0 && i < 7 ? ' class="num"' : ''}>${esc(c)}</td>`).join('')}</tr>`)
    .join('\n')}\n</tbody></table>`;
  const ratioHtml = `<table><thead><tr><th>ratio</th><th>measured</th><th>target</th><th>verdict</th></tr></thead><tbody>\n${Object.entries(
    report.targets,
  )
    .map(
      ([k, t]) =>
        `<tr class="${t.met ? 'met' : 'missed'}"><td><code>${esc(k)}</code></td><td class="num">${fmtRatio(t.measured)}</td><td>${esc(`${t.comparison} ${t.limit}: ${t.description}`)}</td><td>${t.met ? 'met' : '<strong>MISSED</strong>'}</td></tr>`,
    )
    .join('\n')}\n</tbody></table>`;
  return `<h2>Overload</h2>\n<p>${esc(describe(r))}</p>\n${ratioHtml}\n${chart}\n${tableHtml}`;
}
