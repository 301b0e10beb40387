/** The api as a process of its own (its built `dist/main.js`), for the fault scenarios seen through HTTP. */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { outputOf } from '../../../../tools/wait.mjs';

const root = fileURLToPath(new URL('../../../../', import.meta.url));

export interface Api {
  child: ChildProcessWithoutNullStreams;
  base: string;
  output: () => string;
  exited: Promise<number | null>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

export async function startApi(env: Record<string, string>, script = `${root}apps/api/dist/main.js`): Promise<Api> {
  const port = await freePort();
  const child = spawn(process.execPath, [script], {
    cwd: root,
    env: { PATH: process.env.PATH!, NO_COLOR: '1', PORT: String(port), HOST: '127.0.0.1', ...env },
  });
  const output = outputOf(child);
  // 'close', not 'exit': by then everything the process printed has been read.
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  await output.waitFor('API listening');
  return { child, base: `http://127.0.0.1:${port}`, output: output.text, exited };
}

export const get = async (url: string) => {
  const started = Date.now();
  const res = await fetch(url);
  const body = await res.text();
  return { status: res.status, body, ms: Date.now() - started };
};
