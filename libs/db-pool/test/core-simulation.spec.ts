/**
 * A deterministic simulation of the pool's core (src/pool/core: imports nothing of PostgreSQL):
 * a fake clock, fake resources that open, fail, hang and die on a seeded schedule, and callers
 * with deadlines, probes and checks that fail — thousands of them — releases with and without
 * errors, the limit learnt and moving, breaker trips, evictions and end(). After every step the
 * core's invariants are checked; a failing schedule shrinks to a short one, and its seed and path
 * replay it:
 *
 *   npx nx run db-pool:simulate --case /tmp/db-pool-simulation-<seed>.json   # the shrunk schedule
 *   SIM_PATH=<path> npx nx run db-pool:simulate --seed <seed>                  # fast-check's own
 *   npx nx run db-pool:simulate --schedules 20000                              # a longer run
 *
 * Fake resources are allowed here, and only here: this core knows nothing of PostgreSQL;
 * everything that touches pg has its real-PostgreSQL tests.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import fc from 'fast-check';
import { FixedLimit, GradientLimit } from '../src/pool/concurrency-limit.js';
import type { Clock, Timer } from '../src/pool/core/clock.js';
import { AdmissionGate, WAIT } from '../src/pool/core/gate.js';
import { type Outcome, ResourcePool, type Waiter } from '../src/pool/core/resource-pool.js';
import { Slot } from '../src/pool/core/slot.js';

const SCHEDULES = Number(process.env.SIM_SCHEDULES ?? 2_500);
const STEPS = Number(process.env.SIM_STEPS ?? 500);
const SEED = process.env.SIM_SEED === undefined ? Date.now() % 2 ** 31 : Number(process.env.SIM_SEED);
const PATH = process.env.SIM_PATH;

/** Time stands still but when a step moves it; timers fire in order of time, then of arming. */
class FakeClock implements Clock {
  t = 0;
  private seq = 0;
  private timers: { at: number; seq: number; fn: () => void; cancelled: boolean }[] = [];
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): Timer {
    const timer = { at: this.t + Math.max(0, ms), seq: this.seq++, fn, cancelled: false, unref() {}, ref() {} };
    this.timers.push(timer);
    return timer;
  }
  clearTimeout(timer: Timer | undefined): void {
    if (timer) (timer as unknown as { cancelled: boolean }).cancelled = true;
  }
  /** Moves time by `ms`, firing every timer due on the way, in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => !x.cancelled && x.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (!due) break;
      due.cancelled = true;
      this.t = Math.max(this.t, due.at);
      due.fn();
    }
    this.t = end;
    this.timers = this.timers.filter((x) => !x.cancelled);
  }
}

/** How the next resource opened behaves. */
type OpenPlan = { kind: 'ok'; after: number } | { kind: 'fail'; after: number } | { kind: 'hang' } | { kind: 'setup-fail'; after: number };

class FakeSlot extends Slot {
  readonly id: number;
  static next = 0;
  /** The caller holding it. */
  holder: SimWaiter | undefined;
  /** Its caller is checking it (a pre-ping): not released by a step meanwhile. */
  checking = false;
  abort: (() => void) | undefined;
  constructor(now: number) {
    super(now);
    this.id = FakeSlot.next++;
  }
}

interface SimWaiter extends Waiter<FakeSlot> {
  readonly id: number;
  retried: boolean;
  outcomes: string[];
  endedAt: number;
  /** Its check of the slot: none, passes after `after` ticks, or finds it dead. */
  check: { kind: 'none' } | { kind: 'ok' | 'dead'; after: number };
  queuedSeq: number;
}

type Step =
  | { op: 'acquire'; deadline: number; probe: boolean; request: boolean; check: SimWaiter['check']; count: number }
  | { op: 'release'; pick: number; error: boolean; useMs: number }
  | { op: 'advance'; ms: number }
  | { op: 'evict'; mod: number }
  | { op: 'die'; pick: number }
  /** A caller gives up (its AbortSignal): one still queued or having its slot checked. */
  | { op: 'abort'; pick: number }
  /** The pool is resized (a connection budget that follows the server): grown, or shrunk below what is open. */
  | { op: 'resize'; min: number; capacity: number };

/** True about once in `n`. */
const oneIn = (n: number) => fc.integer({ min: 1, max: n }).map((x) => x === 1);
const checkArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ kind: 'none' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('ok' as const), after: fc.integer({ min: 0, max: 20 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('dead' as const), after: fc.integer({ min: 0, max: 20 }) }) },
);
const stepArb: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      op: fc.constant('acquire' as const),
      deadline: fc.oneof(fc.constant(Infinity), fc.integer({ min: 0, max: 400 })),
      probe: oneIn(10),
      request: oneIn(4),
      check: checkArb,
      count: fc.integer({ min: 1, max: 8 }),
    }),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('release' as const),
      pick: fc.nat(),
      error: oneIn(8),
      useMs: fc.integer({ min: 1, max: 60 }),
    }),
  },
  { weight: 5, arbitrary: fc.record({ op: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 120 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('evict' as const), mod: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('die' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('abort' as const), pick: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('resize' as const),
      min: fc.integer({ min: 0, max: 3 }),
      capacity: fc.integer({ min: 1, max: 8 }),
    }),
  },
);
const openPlanArb: fc.Arbitrary<OpenPlan> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ kind: fc.constant('ok' as const), after: fc.integer({ min: 0, max: 30 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('fail' as const), after: fc.integer({ min: 0, max: 30 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('setup-fail' as const), after: fc.integer({ min: 0, max: 10 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'hang' as const }) },
);
const scheduleArb = fc.record({
  capacity: fc.integer({ min: 1, max: 8 }),
  min: fc.integer({ min: 0, max: 3 }),
  adaptive: fc.boolean(),
  floor: fc.integer({ min: 1, max: 3 }),
  maxWaiting: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 10 })),
  idleTimeoutMs: fc.oneof(fc.constant(0), fc.integer({ min: 10, max: 200 })),
  opens: fc.array(openPlanArb, { minLength: 1, maxLength: 64 }),
  // Up to four times STEPS generated, the first STEPS run: most schedules run STEPS steps, and a
  // failing one can shrink to a few.
  steps: fc.array(stepArb, { minLength: 1, maxLength: 4 * STEPS, size: 'max' }).map((all) => all.slice(0, STEPS)),
  // end() is called after this share of the steps, the rest running on a pool that is ending (1: after the last).
  endAfter: fc.oneof(fc.constant(1), fc.double({ min: 0.5, max: 1, noNaN: true })),
});
type Schedule = typeof scheduleArb extends fc.Arbitrary<infer T> ? T : never;

const GRACE_MS = 1_000;

/** How the simulated callers ended, over every schedule run: the printed summary shows what was exercised. */
const tally = new Map<string, number>();

/** Runs one schedule; throws (with what broke) when an invariant fails. */
function run(schedule: Schedule): void {
  const clock = new FakeClock();
  let capacity = Math.max(schedule.capacity, schedule.min);
  const min = Math.min(schedule.min, capacity);
  /** The most that may be open or opening: the capacity, or — shrunk below what was open — what is left of that, never more. */
  let most = capacity;
  let opens = 0;
  const waiters: SimWaiter[] = [];
  /** Callers not yet ended (checked against their deadlines after every step). */
  const pending = new Set<SimWaiter>();
  let waiterSeq = 0;
  let queuedSeq = 0;
  const servedOrder: SimWaiter[] = [];
  let ended = false;
  let ending = false;
  /** end(), and the shutdown grace's close of whatever is left. */
  const endPool = () => {
    ending = true;
    pool.end(() => (ended = true));
    clock.setTimeout(() => pool.closeAll((slot) => slot.abort?.()), GRACE_MS);
  };
  const random = (() => {
    let x = 0x2545f491;
    return () => (x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  })();
  const gate: AdmissionGate = new AdmissionGate({
    capacity,
    limit: schedule.adaptive ? new GradientLimit({ floor: schedule.floor, ceiling: capacity, random }) : new FixedLimit(capacity),
    maxWaiting: schedule.maxWaiting,
    clock,
    probe: () => pool.probe(),
    breakerOpened: () => pool.refuseWaiters(),
    raised: () => pool.match(),
    random,
  });
  let floor = Math.min(schedule.floor, capacity);
  const pool: ResourcePool<FakeSlot, SimWaiter> = new ResourcePool<FakeSlot, SimWaiter>({
    min,
    idleTimeoutMs: schedule.idleTimeoutMs,
    gate,
    clock,
    driver: {
      createSlot: (now) => new FakeSlot(now),
      open(slot, _internal, done) {
        const plan = schedule.opens[opens++ % schedule.opens.length];
        let finished = false;
        const finish = (err?: Error, setUp?: boolean) => {
          if (finished) return;
          finished = true;
          slot.abort = undefined;
          done(err, setUp);
        };
        slot.abort = () => finish(new Error('aborted'));
        if (plan.kind === 'hang') return;
        clock.setTimeout(() => {
          if (plan.kind === 'ok') finish();
          else if (plan.kind === 'fail') finish(new Error('refused'));
          else finish(new Error('set-up failed'), true);
        }, plan.after);
      },
      close(slot, _now, done) {
        if (slot.holder) slot.holder = undefined;
        clock.setTimeout(done, 1);
      },
    },
  });

  const fail = (what: string): never => {
    throw new Error(
      `${what} (t=${clock.now()}, total=${pool.total}, idle=${pool.idleCount}, busy=${pool.busy}, opening=${pool.opening}, waiting=${pool.waiting}, limit=${gate.limit.limit}, breaker=${gate.breaker.state})`,
    );
  };

  const held = (): FakeSlot[] => [...pool.slots()].filter((s) => s.holder !== undefined && !s.removed);

  function makeWaiter(step: Extract<Step, { op: 'acquire' }>, retried = false): SimWaiter {
    const w: SimWaiter = {
      id: waiterSeq++,
      retried,
      startedAt: clock.now(),
      deadline: step.deadline === Infinity ? Infinity : clock.now() + step.deadline,
      probe: step.probe,
      request: step.request && step.deadline !== Infinity,
      stage: 'new',
      outcomes: [],
      endedAt: -1,
      check: step.check,
      queuedSeq: -1,
      served(slot) {
        if (slot.holder !== undefined) fail(`slot ${slot.id} handed to caller ${w.id} while caller ${slot.holder.id} holds it`);
        if (slot.removed || slot.connecting) fail(`slot ${slot.id} handed out removed or still opening`);
        // (Shutting down, the callers queued before it drain the pool past the limit.)
        if (!w.probe && !pool.ending && pool.busy - 1 >= gate.limit.limit) fail(`caller ${w.id} served past the limit ${gate.limit.limit}`);
        slot.holder = w;
        if (w.stage === 'handed' && w.queuedSeq >= 0) servedOrder.push(w);
        if (w.check.kind === 'none') return end(w, 'served');
        const check = w.check;
        slot.checking = true;
        clock.setTimeout(() => {
          slot.checking = false;
          if (w.stage === 'done') {
            // Its deadline passed while its slot was checked: the slot goes back (or away).
            slot.holder = undefined;
            return check.kind === 'dead' ? pool.destroy(slot, 'check') : pool.release(slot);
          }
          if (check.kind === 'dead') {
            slot.holder = undefined;
            pool.destroy(slot, 'check');
            w.check = { kind: 'none' };
            w.retried = true;
            return pool.retry(w);
          }
          pool.settle(w);
          end(w, 'served');
        }, check.after);
        return false;
      },
      failed(outcome: Outcome) {
        end(w, outcome.kind);
      },
    };
    return w;
  }

  function end(w: SimWaiter, how: string): true {
    w.outcomes.push(how);
    pending.delete(w);
    tally.set(how, (tally.get(how) ?? 0) + 1);
    if (w.outcomes.length > 1) fail(`caller ${w.id} ended twice: ${w.outcomes.join(', ')}`);
    w.endedAt = clock.now();
    if (how !== 'served' && w.deadline !== Infinity && clock.now() > w.deadline + 1)
      fail(`caller ${w.id} ended (${how}) at ${clock.now()}, past its deadline ${w.deadline} + 1 tick`);
    return true;
  }

  function check(): void {
    const now = clock.now();
    if (pool.total > most)
      fail(`${pool.total} open or opening, more than the capacity ${capacity} (or what was open when it shrank, ${most})`);
    most = Math.max(capacity, Math.min(most, pool.total));
    // Shrunk: what is idle above the capacity closes at once (what is out, as it comes back).
    if (pool.total > capacity && pool.idleCount > 0 && !pool.ending)
      fail(`${pool.idleCount} idle while ${pool.total} are open, over the capacity ${capacity}`);
    const holders = new Set<number>();
    for (const slot of held()) {
      if (holders.has(slot.holder!.id)) fail(`caller ${slot.holder!.id} holds two slots`);
      holders.add(slot.holder!.id);
    }
    for (const w of pending) {
      if (w.stage !== 'done' && w.deadline !== Infinity && now > w.deadline + 1)
        fail(`caller ${w.id} still ${w.stage} at ${now}, past its deadline ${w.deadline} + 1 tick`);
    }
    if (schedule.adaptive && gate.limit.limit < floor) fail(`the limit ${gate.limit.limit} is below its floor ${floor}`);
    if (pool.ending) {
      // Shutting down, callers queued before it drain the pool: an idle slot goes to one, or closes.
      if (pool.idleCount > 0 && pool.waiting > 0) fail(`${pool.waiting} waiting while ${pool.idleCount} idle during the shutdown`);
      return;
    }
    // No waiter left waiting while an idle resource exists and the gate allows it (the head, or any probe: probes pass the limit).
    if (pool.idleCount > 0 && pool.waiting > 0 && (pool.probesWaiting > 0 || gate.admit(pool.peek()!, pool, now, true, false) !== WAIT))
      fail(`${pool.waiting} waiting while ${pool.idleCount} idle and the gate allows it`);
    // The limit never strands the queue: callers waiting, nothing covering them, and room to open.
    if (pool.waiting > pool.opening && gate.breaker.allowsConnect && gate.mayOpen(pool, false))
      fail(`${pool.waiting} waiting, ${pool.opening} opening, and the pool may open more: stranded`);
  }

  const endStep = Math.ceil(schedule.steps.length * schedule.endAfter);
  let done = 0;
  for (const step of schedule.steps) {
    switch (step.op) {
      case 'acquire':
        for (let i = 0; i < step.count; i++) {
          const w = makeWaiter(step);
          waiters.push(w);
          pending.add(w);
          pool.acquire(w);
          if (w.stage === 'queued') w.queuedSeq = queuedSeq++;
        }
        break;
      case 'release': {
        const out = held().filter((s) => s.holder!.stage === 'done' && !s.checking);
        if (out.length === 0) break;
        const slot = out[step.pick % out.length];
        slot.holder = undefined;
        slot.checkedOutAt = -1;
        if (gate.released(step.useMs, pool.busy)) pool.match();
        if (step.error) pool.destroy(slot, 'discarded');
        else pool.release(slot);
        break;
      }
      case 'advance':
        clock.advance(step.ms);
        break;
      case 'evict':
        pool.destroyWhere((s) => s.id % step.mod === 0, 'failover');
        break;
      case 'die': {
        const idle = [...pool.slots()].filter((s) => pool.isIdle(s));
        if (idle.length > 0) pool.destroy(idle[step.pick % idle.length], 'broken');
        break;
      }
      case 'abort': {
        const waiting = [...pending].filter((w) => w.stage === 'queued' || w.stage === 'handed');
        if (waiting.length > 0) pool.abort(waiting[step.pick % waiting.length]);
        break;
      }
      case 'resize': {
        most = Math.max(step.capacity, pool.total);
        capacity = step.capacity;
        floor = Math.min(schedule.floor, capacity);
        pool.resize(step.min, step.capacity);
        break;
      }
    }
    if (process.env.SIM_TRACE)
      process.stdout.write(
        `${JSON.stringify(step)} → t=${clock.now()} total=${pool.total} idle=${pool.idleCount} busy=${pool.busy} opening=${pool.opening} waiting=${pool.waiting} limit=${gate.limit.limit} breaker=${gate.breaker.state} probes=${pool.probesWaiting} head=${JSON.stringify({ probe: pool.peek()?.probe, stage: pool.peek()?.stage, deadline: pool.peek()?.deadline })}\n`,
      );
    check();
    if (++done >= endStep && !ending) {
      endPool();
      check();
    }
  }
  // Every caller still waiting ends, and end() finishes: callers out give back, time runs out.
  if (!ending) endPool();
  for (const slot of held()) {
    if (slot.holder!.stage === 'done' && !slot.checking) {
      slot.holder = undefined;
      pool.release(slot);
    }
  }
  clock.advance(GRACE_MS + 1_000);
  check();
  if (!ended) fail('end() did not finish');
  tally.set('(breaker opens)', (tally.get('(breaker opens)') ?? 0) + gate.breaker.opens);
  for (const w of waiters) if (w.outcomes.length !== 1) fail(`caller ${w.id} ended ${w.outcomes.length} times`);
  // First in, first out among callers of equal standing (queued, not probes, not sent round again by a failed check).
  const plain = servedOrder.filter((w) => !w.probe && !w.retried && w.check.kind === 'none');
  for (let i = 1; i < plain.length; i++)
    if (plain[i].queuedSeq < plain[i - 1].queuedSeq)
      fail(`caller ${plain[i].id} was served before caller ${plain[i - 1].id}, which queued first`);
}

/** What a schedule breaks (undefined: nothing). */
function failure(schedule: Schedule): string | undefined {
  try {
    run(schedule);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Cuts a failing schedule further after fast-check's shrinking: the shortest prefix that still
 * fails, then every run of steps that can go while it still fails.
 */
function minimise(schedule: Schedule): Schedule {
  let best = schedule;
  for (let cut = 1; cut < schedule.steps.length; cut++) {
    const shorter = { ...schedule, steps: schedule.steps.slice(0, cut) };
    if (failure(shorter) !== undefined) {
      best = shorter;
      break;
    }
  }
  // Delta debugging: take out runs of steps, halving their length, while the schedule still fails.
  for (let size = Math.max(1, Math.floor(best.steps.length / 2)); size >= 1; size = size === 1 ? 0 : Math.floor(size / 2)) {
    for (let progress = true; progress;) {
      progress = false;
      for (let at = best.steps.length - size; at >= 0; at -= size) {
        const steps = [...best.steps.slice(0, at), ...best.steps.slice(at + size)];
        if (steps.length > 0 && failure({ ...best, steps }) !== undefined) {
          best = { ...best, steps };
          progress = true;
        }
      }
    }
  }
  return best;
}

/** Every module the core's files import, followed through relative imports: the specifiers that are not relative. */
function outsideImports(entry: string): Map<string, string> {
  const seen = new Set<string>();
  const outside = new Map<string, string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const [, spec] of readFileSync(file, 'utf8').matchAll(/^(?:import|export)\b[^;]*?from '([^']+)'/gms)) {
      if (spec.startsWith('.')) visit(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
      else outside.set(spec, file);
    }
  };
  visit(entry);
  return outside;
}

describe('the pool core under a deterministic simulation', () => {
  it('imports nothing of pg, TypeORM or Nest: only the core and the policies its gate holds', () => {
    const core = join(dirname(fileURLToPath(import.meta.url)), '../src/pool/core');
    const outside = new Map([...outsideImports(join(core, 'resource-pool.ts')), ...outsideImports(join(core, 'gate.ts'))]);
    // Node's own modules are allowed; no package is.
    expect([...outside].filter(([spec]) => !spec.startsWith('node:'))).toEqual([]);
  });

  // One schedule from a file (SIM_DUMP wrote it), traced step by step with SIM_TRACE=1.
  const caseFile = process.env.SIM_CASE;
  (caseFile ? it : it.skip)('replays the schedule in SIM_CASE', () => {
    const schedule = JSON.parse(readFileSync(caseFile!, 'utf8'), (_k, v: unknown) => (v === null ? Infinity : v)) as Schedule;
    run(schedule);
  });

  it(`keeps its invariants over ${SCHEDULES} seeded schedules of (mostly) ${STEPS} steps`, () => {
    const started = performance.now();
    let steps = 0;
    try {
      const outcome = fc.check(
        fc.property(scheduleArb, (schedule) => {
          steps += schedule.steps.length;
          run(schedule);
        }),
        { seed: SEED, numRuns: SCHEDULES, ...(PATH ? { path: PATH } : {}) },
      );
      if (outcome.failed) {
        const schedule = minimise(outcome.counterexample![0]);
        const { steps, ...settings } = schedule;
        const dump = process.env.SIM_DUMP ?? join(tmpdir(), `db-pool-simulation-${SEED}.json`);
        writeFileSync(dump, JSON.stringify(schedule));
        throw new Error(
          `the core broke an invariant: ${failure(schedule)}\n` +
            `replay: npx nx run db-pool:simulate --case ${dump} (or SIM_PATH=${outcome.counterexamplePath} npx nx run db-pool:simulate --seed ${SEED})\n` +
            `shrunk schedule (${steps.length} step(s), after ${outcome.numShrinks} shrinks): ${JSON.stringify({ ...settings, steps })}`,
        );
      }
    } finally {
      process.stdout.write(
        `core simulation: ${SCHEDULES} schedules, ${steps} steps in ${((performance.now() - started) / 1000).toFixed(1)} s (seed ${SEED}: npx nx run db-pool:simulate --seed ${SEED}); ` +
          `callers ended: ${[...tally].map(([how, n]) => `${how} ${n}`).join(', ')}\n`,
      );
    }
  }, 300_000);
});
