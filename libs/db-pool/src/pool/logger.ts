/** Where db-pool writes: Nest's `Logger` fits, so does `console`. */
export interface DbPoolLogger {
  log(message: string): void;
  warn(message: string): void;
  debug?(message: string): void;
}

/** The default: says nothing. */
export const SILENT: DbPoolLogger = { log() {}, warn() {} };
