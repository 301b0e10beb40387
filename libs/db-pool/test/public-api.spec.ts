import { readFile } from 'node:fs/promises';
import * as api from '../src/index.js';

/** The names src/index.ts exports, each marked as a type or a value, read from its text. */
async function indexExports(): Promise<{ values: string[]; types: string[] }> {
  const text = await readFile(new URL('../src/index.ts', import.meta.url), 'utf8');
  const values: string[] = [];
  const types: string[] = [];
  for (const [, typeOnly, list] of text.matchAll(/^export (type )?\{([^}]*)\} from/gm)) {
    for (const entry of list.split(',').map((e) => e.trim())) {
      if (entry === '') continue;
      const name = entry.replace(/^type /, '');
      (typeOnly || entry.startsWith('type ') ? types : values).push(name);
    }
  }
  return { values, types };
}

describe('the public surface', () => {
  it('exports at run time exactly the values src/index.ts names', async () => {
    const { values } = await indexExports();
    expect(Object.keys(api).sort()).toEqual([...values].sort());
  });

  it('is the list in the README\'s "Public API", name for name', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    const section = readme.slice(readme.indexOf('## Public API'), readme.indexOf('\n## ', readme.indexOf('## Public API') + 1));
    const listed = [...section.matchAll(/`([A-Za-z_]\w*)`/g)].map((m) => m[1]);
    const { values, types } = await indexExports();
    expect([...listed].sort()).toEqual([...values, ...types].sort());
  });
});
