import { registerAs } from '@nestjs/config';
import type { DbPoolOptions } from './db-pool.options.js';
import { OPTION_KEYS } from './option-keys.js';

/**
 * The pool's keys read from the environment as a `@nestjs/config` namespace (`dbPool`):
 * `DbPoolModule.forRootAsync(dbPoolConfig.asProvider())`. Values stay raw here; the module
 * validates them once, with everything else, when it starts.
 */
export const dbPoolConfig = registerAs('dbPool', (): DbPoolOptions => {
  const options: Record<string, string | undefined> = {};
  for (const key of OPTION_KEYS) options[key.option] = process.env[key.env];
  return options as DbPoolOptions;
});
