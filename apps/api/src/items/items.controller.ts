import {
  Body,
  Controller,
  Get,
  HttpCode,
  NotFoundException,
  Param,
  Patch,
  Post,
  Query,
  Res,
  UnprocessableEntityException,
  UseGuards,
} from '@nestjs/common';
import { DbPoolDeadline } from '@db-pool/db-pool';
import type { Item } from './item.entity.js';
import { IdempotencyKey } from './idempotency-key.js';
import { type CreateItem, createItemSchema, itemIdSchema, listItemsSchema, ZodPipe } from './items.schema.js';
import { type ItemStats, ItemsService } from './items.service.js';
import { JsonBodyGuard } from './json-body.guard.js';

@Controller('items')
export class ItemsController {
  constructor(private readonly items: ItemsService) {}

  /**
   * With an `Idempotency-Key`, a retry returns the row the first request wrote (the same 201 and
   * body, and `Idempotent-Replayed: true`) and writes nothing: the way to retry a write answered
   * 504 `outcome_unknown`, or one whose answer never came. The same key with another body is a
   * 422, as the IETF httpapi draft on the header advises: the request is well-formed, but it
   * contradicts the one the key stands for.
   */
  @Post()
  @HttpCode(201)
  @UseGuards(JsonBodyGuard)
  async create(
    @Body(new ZodPipe(createItemSchema)) body: CreateItem,
    @IdempotencyKey() idempotencyKey: string | undefined,
    @Res({ passthrough: true }) response: { setHeader(name: string, value: string): void },
  ): Promise<Item> {
    const outcome = await this.items.create(body.name, idempotencyKey);
    if (outcome.kind === 'key-reused')
      throw new UnprocessableEntityException(
        'this Idempotency-Key was already used for a different request; send a new key for a new item',
      );
    if (outcome.kind === 'replayed') response.setHeader('Idempotent-Replayed', 'true');
    return outcome.item;
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

  /** Renames an item and returns it as read back (see `ItemsService.rename`). */
  @Patch(':id')
  @UseGuards(JsonBodyGuard)
  async rename(@Param('id', new ZodPipe(itemIdSchema)) id: number, @Body(new ZodPipe(createItemSchema)) body: CreateItem): Promise<Item> {
    const item = await this.items.rename(id, body.name);
    if (!item) throw new NotFoundException(`item ${id} not found`);
    return item;
  }

  @Get(':id')
  async findOne(@Param('id', new ZodPipe(itemIdSchema)) id: number): Promise<Item> {
    const item = await this.items.findOne(id);
    if (!item) throw new NotFoundException(`item ${id} not found`);
    return item;
  }
}
