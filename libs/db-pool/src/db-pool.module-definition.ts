import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { DbPoolOptions } from './config/db-pool.options.js';
import { DEFAULT_POOL_NAME } from './config/resolve-config.js';

export const {
  ConfigurableModuleClass,
  MODULE_OPTIONS_TOKEN: DB_POOL_MODULE_OPTIONS,
  OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<DbPoolOptions>({ moduleName: 'DbPool' })
  .setClassMethodName('forRoot')
  // The pool name is needed before the options are resolved: it names the DataSource token.
  .setExtras({ name: DEFAULT_POOL_NAME }, (definition) => definition)
  .build();
