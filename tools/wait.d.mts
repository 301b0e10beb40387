import type { ChildProcessWithoutNullStreams } from 'node:child_process';

export function sleep(ms: number): Promise<void>;

export function eventually(predicate: () => boolean | Promise<boolean>, timeoutMs?: number, stepMs?: number): Promise<boolean>;

export interface ProcessOutput {
  /** Everything printed so far. */
  text(): string;
  waitFor(needle: string, timeoutMs?: number): Promise<void>;
}

export function outputOf(child: ChildProcessWithoutNullStreams): ProcessOutput;
