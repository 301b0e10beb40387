/**
 * The lib README's recipes ("Without Nest", Kysely, Drizzle, OpenTelemetry's pg instrumentation), each copied into a scratch file as a
 * user would, run: each is taken from the README itself (the block after `<!-- recipe <name>:`), so
 * the two cannot drift apart.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = fileURLToPath(new URL('../../../', import.meta.url));

/** Runs the README's block marked `<!-- recipe <name>: …`, as a user would copy it into a file; returns its output. */
function runRecipe(name: string): string {
  const readme = readFileSync(`${root}libs/db-pool/README.md`, 'utf8');
  const block = new RegExp(`<!-- recipe ${name}:[^\\n]*\\n\`\`\`ts\\n([\\s\\S]*?)\\n\`\`\``).exec(readme);
  expect(block).not.toBeNull();
  const js = ts.transpileModule(block![1], {
    compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
  }).outputText;
  // The package resolves as an application would resolve it: node_modules → the built lib.
  execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}libs/db-pool/tsconfig.lib.json`]);
  mkdirSync(`${root}tmp`, { recursive: true });
  const file = `${root}tmp/readme-recipe-${name}-${process.pid}.mjs`;
  writeFileSync(file, js);
  try {
    return execFileSync(process.execPath, [file], {
      cwd: root,
      env: { PATH: process.env.PATH, DATABASE_URL: process.env.DATABASE_URL },
      encoding: 'utf8',
      timeout: 30_000,
    });
  } finally {
    rmSync(file, { force: true });
  }
}

describe('the README recipes', () => {
  it('without Nest: runs as written against a real PostgreSQL', () => {
    const out = runRecipe('without-nest');
    expect(out).toMatch(/\{ total: 5, active: 0, idle: 5, waiting: 0 \}/);
    expect(out).toMatch(/\[ \{ one: 1 \} \] \{ total: 2, active: 0, idle: 2, waiting: 0 \}/);
  }, 60_000);

  it('Kysely on DbPool: a query, a transaction, a deadline that cancels (PoolDeadlineError)', () => {
    expect(runRecipe('kysely')).toMatch(/^\[ \{ one: 1 \} \] PoolDeadlineError$/m);
  }, 60_000);

  it("OpenTelemetry's pg instrumentation on DbPool: query spans under the request, with the statement and the server; the acquire's wait as an event", () => {
    const out = runRecipe('otel-pg');
    const server = new URL(process.env.DATABASE_URL!).hostname;
    expect(out).toContain(`true SELECT 1 AS one ${server}\n`);
    expect(out).toContain(`true SELECT $1::int AS two ${server}\n`);
    expect(out).toMatch(/^pg\.query:SELECT \S+ true SELECT 1 AS one /m);
    expect(out).toMatch(/^db_pool\.acquire \d+(\.\d+)?$/m);
  }, 60_000);

  it("Drizzle on DbPool: a query, a transaction, a deadline that cancels (PoolDeadlineError, the cause of Drizzle's error)", () => {
    expect(runRecipe('drizzle')).toMatch(/^\[ \{ one: 1 \} \] PoolDeadlineError$/m);
  }, 60_000);
});
