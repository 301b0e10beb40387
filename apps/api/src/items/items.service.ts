import { Injectable } from '@nestjs/common';
import { InjectDataSource, InjectRepository } from '@nestjs/typeorm';
import { DataSource, type Repository } from 'typeorm';
import { Item } from './item.entity.js';

/** What a create did: wrote the item, found the one its idempotency key wrote before, or found the key used for another. */
export type CreateOutcome = { kind: 'created' | 'replayed'; item: Item } | { kind: 'key-reused' };

/** An item's columns as the entity names them (what `save` returns, for the same JSON). */
const ITEM_COLUMNS = 'id, name, created_at AS "createdAt"';

export interface ItemStats {
  items: number;
  distinct_names: number;
  longest_name: number;
  newest: Date | null;
}

@Injectable()
export class ItemsService {
  constructor(
    @InjectRepository(Item) private readonly items: Repository<Item>,
    @InjectDataSource() private readonly dataSource: DataSource,
  ) {}

  /**
   * Writes an item, in a transaction. With an idempotency key, a key already stored writes
   * nothing and returns its row instead (`replayed`), or `key-reused` when that row is not this
   * request's item. The unique key decides between concurrent requests: the second waits for the
   * first's transaction, then finds its row.
   */
  async create(name: string, idempotencyKey?: string): Promise<CreateOutcome> {
    // Twice at most: the row that held the key may be deleted between the insert and the read.
    for (let attempt = 0; ; attempt++) {
      const [created] = await this.dataSource.transaction((manager) =>
        manager.query<Item[]>(
          `INSERT INTO items (name, idempotency_key) VALUES ($1, $2) ON CONFLICT (idempotency_key) DO NOTHING RETURNING ${ITEM_COLUMNS}`,
          [name, idempotencyKey ?? null],
        ),
      );
      if (created) return { kind: 'created', item: created };
      // Outside that transaction: a snapshot taken after the one holding the key committed.
      const [stored] = await this.dataSource.query<Item[]>(`SELECT ${ITEM_COLUMNS} FROM items WHERE idempotency_key = $1`, [
        idempotencyKey,
      ]);
      if (stored) return stored.name === name ? { kind: 'replayed', item: stored } : { kind: 'key-reused' };
      if (attempt === 1) throw new Error('the row holding this Idempotency-Key was deleted twice while the request ran');
    }
  }

  findOne(id: number): Promise<Item | null> {
    return this.items.findOneBy({ id });
  }

  /**
   * Renames an item and reads it back: the update on the primary, the read where TypeORM's reads
   * go (a replica, with DB_REPLICA_URLS). With DB_REPLICA_CONSISTENCY=read-your-writes the read
   * sees the update (from a replica that has replayed it, else the primary); with `eventual` it
   * may not.
   */
  async rename(id: number, name: string): Promise<Item | null> {
    const { affected } = await this.items.update({ id }, { name });
    if (!affected) return null;
    return this.items.findOneBy({ id });
  }

  /** Totals over every item: one aggregate, whose cost grows with the table (the api's heavy read). */
  async stats(): Promise<ItemStats> {
    const [row] = await this.dataSource.query<{ items: number; names: number; longest: number | null; newest: Date | null }[]>(
      'SELECT count(*)::int AS items, count(DISTINCT name)::int AS names, max(length(name))::int AS longest, max(created_at) AS newest FROM items',
    );
    return { items: row.items, distinct_names: row.names, longest_name: row.longest ?? 0, newest: row.newest };
  }

  list(limit: number): Promise<Item[]> {
    return this.items.find({ order: { id: 'DESC' }, take: limit });
  }
}
