import { Body, Controller, Get, HttpCode, NotFoundException, Param, Post, Query, UseGuards } from '@nestjs/common';
import type { Item } from './item.entity.js';
import { type CreateItem, createItemSchema, itemIdSchema, listItemsSchema, ZodPipe } from './items.schema.js';
import { ItemsService } from './items.service.js';
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

  @Get(':id')
  async findOne(@Param('id', new ZodPipe(itemIdSchema)) id: number): Promise<Item> {
    const item = await this.items.findOne(id);
    if (!item) throw new NotFoundException(`item ${id} not found`);
    return item;
  }
}
