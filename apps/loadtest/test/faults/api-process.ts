/** The api as a process of its own (its built `dist/main.js`), for the fault scenarios seen through HTTP. */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { sleep } from './support.js';

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
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const end = Date.now() + 20_000;
  while (!out.includes('API listening')) {
    if (Date.now() > end || child.exitCode !== null) throw new Error(`api did not start:\n${out}`);
    await sleep(50);
  }
  return { child, base: `http://127.0.0.1:${port}`, output: () => out, exited };
}

export const get = async (url: string) => {
  const started = Date.now();
  const res = await fetch(url);
  const body = await res.text();
  return { status: res.status, body, ms: Date.now() - started };
};
