import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The Idempotency-Key a client sent with `POST /items`, kept with the row it created, so that the
 * retry of a write whose answer was lost returns that row instead of writing another. Nullable:
 * rows written without a key (and every row from before) have none; unique among those that do.
 * `IF NOT EXISTS`: api processes started together may both run it.
 */
export class AddItemsIdempotencyKey1796500000000 implements MigrationInterface {
  name = 'AddItemsIdempotencyKey1796500000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    // A nullable column without a default changes only the catalog. The index is built under a
    // lock that holds writes back while it reads the table: on a large table, create it
    // CONCURRENTLY by hand first (this then finds it).
    await queryRunner.query('ALTER TABLE items ADD COLUMN IF NOT EXISTS idempotency_key varchar(128)');
    await queryRunner.query('CREATE UNIQUE INDEX IF NOT EXISTS items_idempotency_key_key ON items (idempotency_key)');
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('DROP INDEX IF EXISTS items_idempotency_key_key');
    await queryRunner.query('ALTER TABLE items DROP COLUMN IF EXISTS idempotency_key');
  }
}
