import { Injectable, type OnModuleInit } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { type DataSource, type Migration, MigrationExecutor } from 'typeorm';

/** Names the session-level advisory lock the api's start-up migrations run under (locks are per database). */
export const MIGRATIONS_LOCK = 'db-pool api: migrations';

/**
 * Runs the pending migrations, one process at a time. TypeORM's `migrationsRun` is not safe for
 * replicas that start together on a new database: each finds no `migrations` table and creates
 * it, and all but one fail (`relation "migrations" already exists`, or a duplicate type). Here a
 * process takes a session-level advisory lock on one connection and runs the migrations on that
 * same connection (so one connection is enough, whatever the pool's size): the next process waits
 * for the lock, then finds them applied. The lock belongs to the session: a process that dies
 * mid-way releases it with its connection, and its migrations' transaction rolls back.
 */
export async function runMigrationsExclusively(dataSource: DataSource): Promise<Migration[]> {
  const runner = dataSource.createQueryRunner();
  try {
    await runner.query('SELECT pg_advisory_lock(hashtextextended($1, 0))', [MIGRATIONS_LOCK]);
    try {
      const executor = new MigrationExecutor(dataSource, runner);
      executor.transaction = dataSource.options.migrationsTransactionMode ?? 'all';
      return await executor.executePendingMigrations();
    } finally {
      await runner.query('SELECT pg_advisory_unlock(hashtextextended($1, 0))', [MIGRATIONS_LOCK]);
    }
  } finally {
    await runner.release();
  }
}

/** Brings the schema up to date before the api listens (instead of TypeORM's `migrationsRun`). */
@Injectable()
export class StartupMigrations implements OnModuleInit {
  constructor(@InjectDataSource() private readonly dataSource: DataSource) {}

  async onModuleInit(): Promise<void> {
    await runMigrationsExclusively(this.dataSource);
  }
}
