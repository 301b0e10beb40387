import { performance } from 'node:perf_hooks';

const WIDTH = 28;
const REDRAW_MS = 100;

/**
 * A progress bar on stderr, measured in planned slice time. On a terminal it redraws one line
 * with `\r`; into a file or pipe it writes a line per tenth instead, so logs stay readable.
 */
export class Progress {
  private done = 0;
  private total = 1;
  private text = '';
  private lastDraw = 0;
  private lastTenth = -1;
  private drawnWidth = 0;
  private readonly started = performance.now();
  private readonly tty: boolean;

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {
    this.tty = Boolean(out.isTTY);
  }

  plan(totalMs: number): void {
    this.total = Math.max(1, totalMs);
  }

  activity(text: string): void {
    this.text = text;
    this.draw(false);
  }

  advance(ms: number): void {
    this.done = Math.min(this.total, this.done + ms);
    this.draw(false);
  }

  /** Prints a line of its own above the bar (a note, a skipped contender). */
  note(message: string): void {
    if (this.tty) this.out.write(`\r${' '.repeat(this.drawnWidth)}\r`);
    this.out.write(`${message}\n`);
    this.drawnWidth = 0;
    this.draw(true);
  }

  finish(): void {
    this.done = this.total;
    this.text = 'done';
    this.draw(true);
    if (this.tty) this.out.write('\n');
  }

  private draw(force: boolean): void {
    const now = performance.now();
    const fraction = this.done / this.total;
    const tenth = Math.floor(fraction * 10);
    if (this.tty) {
      if (!force && now - this.lastDraw < REDRAW_MS) return;
    } else if (!force && tenth === this.lastTenth) {
      return;
    }
    this.lastDraw = now;
    this.lastTenth = tenth;
    const filled = Math.round(fraction * WIDTH);
    const elapsed = (now - this.started) / 1000;
    const eta = fraction > 0.02 ? ` eta ${clock(elapsed / fraction - elapsed)}` : '';
    const line = `[${'#'.repeat(filled)}${'-'.repeat(WIDTH - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}% ${clock(elapsed)}${eta} ${this.text}`;
    if (this.tty) {
      const columns = this.out.columns || 120;
      const shown = line.length > columns - 1 ? `${line.slice(0, columns - 2)}…` : line;
      this.out.write(`\r${shown}${' '.repeat(Math.max(0, this.drawnWidth - shown.length))}`);
      this.drawnWidth = shown.length;
    } else {
      this.out.write(`${line}\n`);
    }
  }
}

function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}
