/**
 * The lib README's "Without Nest" recipe, copied into a scratch file as a user would, runs: it is
 * taken from the README itself (the block after `<!-- recipe`), so the two cannot drift apart.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = fileURLToPath(new URL('../../../', import.meta.url));

describe('the README recipe', () => {
  it('runs as written against a real PostgreSQL', () => {
    const readme = readFileSync(`${root}libs/db-pool/README.md`, 'utf8');
    const block = /<!-- recipe[^\n]*\n```ts\n([\s\S]*?)\n```/.exec(readme);
    expect(block).not.toBeNull();
    const js = ts.transpileModule(block![1], {
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
    }).outputText;
    // The package resolves as an application would resolve it: node_modules → the built lib.
    execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, '-b', `${root}libs/db-pool/tsconfig.lib.json`]);
    mkdirSync(`${root}tmp`, { recursive: true });
    const file = `${root}tmp/readme-recipe-${process.pid}.mjs`;
    writeFileSync(file, js);
    try {
      const out = execFileSync(process.execPath, [file], {
        cwd: root,
        env: { PATH: process.env.PATH, DATABASE_URL: process.env.DATABASE_URL },
        encoding: 'utf8',
        timeout: 30_000,
      });
      expect(out).toMatch(/\{ total: 5, active: 0, idle: 5, waiting: 0 \}/);
      expect(out).toMatch(/\[ \{ one: 1 \} \] \{ total: 2, active: 0, idle: 2, waiting: 0 \}/);
    } finally {
      rmSync(file, { force: true });
    }
  }, 60_000);
});
