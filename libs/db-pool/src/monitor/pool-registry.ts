import { Injectable } from '@nestjs/common';
import type { PoolMonitor } from './pool-monitor.js';

/** Every pool of the application, by name, for the health indicator and the metrics. */
@Injectable()
export class DbPoolRegistry {
  private readonly monitors = new Map<string, PoolMonitor>();

  add(monitor: PoolMonitor): void {
    this.monitors.set(monitor.name, monitor);
  }

  get(name: string): PoolMonitor {
    const monitor = this.monitors.get(name);
    if (!monitor) throw new Error(`db-pool: no pool named "${name}" (known: ${[...this.monitors.keys()].join(', ') || 'none'})`);
    return monitor;
  }

  all(): PoolMonitor[] {
    return [...this.monitors.values()];
  }
}
