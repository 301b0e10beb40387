import { registerAs } from '@nestjs/config';
import type { DbPoolOptions } from './db-pool.options.js';
import { OPTION_KEYS } from './option-keys.js';
import { lookalikeKeys } from './resolve-config.js';

/**
 * The default pool's environment as a `@nestjs/config` namespace (`dbPool`):
 * `DbPoolModule.forRootAsync(dbPoolConfig.asProvider())`. The values stay raw and are passed as
 * the environment (not as code options), so the module validates them once, at start-up, and
 * names the variables in its errors; variables that only look like the pool's are handed on too,
 * so that its start-up warning can name them.
 */
export const dbPoolConfig = registerAs('dbPool', (): DbPoolOptions => {
  const env: Record<string, string | undefined> = {};
  for (const key of [...OPTION_KEYS.map((k) => k.env), ...lookalikeKeys(process.env, '').map((l) => l.key)]) env[key] = process.env[key];
  return { env };
});
