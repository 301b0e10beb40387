#!/usr/bin/env node
// Runs the pool core's deterministic simulation (libs/db-pool/test/core-simulation.spec.ts) alone:
//   npx nx run db-pool:simulate [--schedules N] [--steps N] [--seed S] [--case FILE]
// --case replays a schedule a failing run wrote (its path is in the failure); SIM_PATH, if set,
// is passed on with --seed to replay fast-check's own counterexample.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { schedules: { type: 'string' }, steps: { type: 'string' }, seed: { type: 'string' }, case: { type: 'string' } },
});
const root = fileURLToPath(new URL('..', import.meta.url));
const env = { ...process.env, NODE_OPTIONS: '--experimental-vm-modules --disable-warning=ExperimentalWarning' };
if (values.schedules) env.SIM_SCHEDULES = values.schedules;
if (values.steps) env.SIM_STEPS = values.steps;
if (values.seed) env.SIM_SEED = values.seed;
if (values.case) env.SIM_CASE = values.case;
// The simulation needs no database: a URL that is never connected to spares the embedded server.
env.DATABASE_URL ??= 'postgres://unused@127.0.0.1:1/unused';
const jest = spawn(
  process.execPath,
  [
    `${root}node_modules/jest/bin/jest.js`,
    '-c',
    `${root}libs/db-pool/jest.config.js`,
    `${root}libs/db-pool/test/core-simulation.spec.ts`,
    ...(env.SIM_CASE ? ['-t', 'replays'] : []),
  ],
  { stdio: 'inherit', env, cwd: root },
);
jest.on('exit', (code) => process.exit(code ?? 1));
