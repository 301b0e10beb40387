import { Body, Controller, Get, HttpCode, NotFoundException, Param, Post, Query, UseGuards } from '@nestjs/common';
import { DbPoolDeadline } from '@db-pool/db-pool';
import type { Item } from './item.entity.js';
import { type CreateItem, createItemSchema, itemIdSchema, listItemsSchema, ZodPipe } from './items.schema.js';
import { type ItemStats, ItemsService } from './items.service.js';
import { JsonBodyGuard } from './json-body.guard.js';

@Controller('items')
export class ItemsController {
  constructor(private readonly items: ItemsService) {}

  @Post()
  @HttpCode(201)
  @UseGuards(JsonBodyGuard)
  create(@Body(new ZodPipe(createItemSchema)) body: CreateItem): Promise<Item> {
    return this.items.create(body.name);
  }

  @Get()
  list(@Query(new ZodPipe(listItemsSchema)) query: { limit: number }): Promise<Item[]> {
    return this.items.list(query.limit);
  }

  /**
   * Totals over the whole table. A report nobody waits for more than a second: its statement is
   * cancelled on the server at the deadline (503 deadline_exceeded), and under overload it is
   * shed at once (503 overloaded); a client may ask for less with X-Request-Deadline-Ms.
   */
  @Get('stats')
  @DbPoolDeadline(1_000)
  stats(): Promise<ItemStats> {
    return this.items.stats();
  }

  @Get(':id')
  async findOne(@Param('id', new ZodPipe(itemIdSchema)) id: number): Promise<Item> {
    const item = await this.items.findOne(id);
    if (!item) throw new NotFoundException(`item ${id} not found`);
    return item;
  }
}
