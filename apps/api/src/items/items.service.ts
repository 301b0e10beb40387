import { Injectable } from '@nestjs/common';
import { InjectDataSource, InjectRepository } from '@nestjs/typeorm';
import { DataSource, type Repository } from 'typeorm';
import { Item } from './item.entity.js';

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

  create(name: string): Promise<Item> {
    return this.dataSource.transaction((manager) => manager.getRepository(Item).save(manager.create(Item, { name })));
  }

  findOne(id: number): Promise<Item | null> {
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
