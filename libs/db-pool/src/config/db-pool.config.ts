import { registerAs } from '@nestjs/config';
import type { DbPoolOptions } from './db-pool.options.js';
import { OPTION_KEYS } from './option-keys.js';

/**
 * The default pool's environment as a `@nestjs/config` namespace (`dbPool`):
 * `DbPoolModule.forRootAsync(dbPoolConfig.asProvider())`. The values stay raw and are passed as
 * the environment (not as code options), so the module validates them once, at start-up, and
 * names the variables in its errors.
 */
export const dbPoolConfig = registerAs('dbPool', (): DbPoolOptions => {
  const env: Record<string, string | undefined> = {};
  for (const key of OPTION_KEYS) env[key.env] = process.env[key.env];
  return { env };
});
