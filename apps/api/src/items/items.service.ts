import { Injectable } from '@nestjs/common';
import { InjectDataSource, InjectRepository } from '@nestjs/typeorm';
import { DataSource, type Repository } from 'typeorm';
import { Item } from './item.entity.js';

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

  list(limit: number): Promise<Item[]> {
    return this.items.find({ order: { id: 'DESC' }, take: limit });
  }
}
