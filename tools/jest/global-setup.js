// Gives every test file a PostgreSQL: DATABASE_URL when set, else an embedded server owned by
// this Jest run. Workers start after this and inherit process.env.
import { startEmbeddedPostgres } from '../embedded-db.mjs';

export default async function globalSetup() {
  if (process.env.DATABASE_URL) return;
  const db = await startEmbeddedPostgres();
  globalThis.__DB_POOL_EMBEDDED__ = db;
  process.env.DATABASE_URL = db.url;
}
