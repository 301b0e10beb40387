export default async function globalTeardown() {
  const db = globalThis.__DB_POOL_EMBEDDED__;
  if (db) {
    delete process.env.DATABASE_URL;
    await db.stop();
  }
}
