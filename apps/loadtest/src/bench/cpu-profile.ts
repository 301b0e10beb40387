// Reading V8's .cpuprofile files (the pool's profile, ./profile.ts, and the api's, ../http/profile.ts).
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Self time per function (name and file), in ms, from a V8 .cpuprofile. */
export function selfTimes(profile: CpuProfile): Map<string, number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const out = new Map<string, number>();
  profile.samples.forEach((id, i) => {
    const frame = byId.get(id)!.callFrame;
    const file = frame.url.startsWith('file://') ? relative(process.cwd(), fileURLToPath(frame.url)) : frame.url;
    const key = `${frame.functionName || '(anonymous)'}${file ? ` ${file}:${frame.lineNumber + 1}` : ''}`;
    out.set(key, (out.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  });
  return out;
}

/**
 * Where a function's time goes, from a {@link selfTimes} key: its npm package, db-pool's own code,
 * the api's, Node's, or V8's own entries ((garbage collector), (program), a native function).
 */
export function packageOf(key: string): string {
  const file = / (\S+):\d+$/.exec(key)?.[1];
  if (file === undefined) return key; // (garbage collector), (program), a native
  const module = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(file);
  if (module) return module[1];
  if (file.startsWith('libs/db-pool/')) return 'db-pool (ours)';
  if (file.startsWith('apps/api/')) return 'the api';
  if (file.startsWith('node:')) return 'node';
  return 'other';
}
