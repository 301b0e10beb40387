import { BadRequestException, type PipeTransform } from '@nestjs/common';
import { z } from 'zod';

export const createItemSchema = z.strictObject({
  name: z.string({ error: 'name must be a string' }).trim().min(1, 'name must not be empty').max(200, 'name must be at most 200 characters'),
});
export type CreateItem = z.infer<typeof createItemSchema>;

export const listItemsSchema = z.object({
  limit: z.coerce
    .number({ error: 'limit must be a number' })
    .int('limit must be an integer')
    .min(1, 'limit must be from 1 to 100')
    .max(100, 'limit must be from 1 to 100')
    .default(20),
});

export const itemIdSchema = z.coerce.number({ error: 'id must be a number' }).int('id must be a positive integer').positive('id must be a positive integer').max(2_147_483_647, 'id is out of range');

/** Validates a request part with a zod schema; a failure is a 400 listing every problem. */
export class ZodPipe<T extends z.ZodType> implements PipeTransform<unknown, z.infer<T>> {
  constructor(private readonly schema: T) {}

  transform(value: unknown): z.infer<T> {
    const result = this.schema.safeParse(value);
    if (result.success) return result.data;
    const messages = result.error.issues.map((issue) =>
      issue.code === 'unrecognized_keys' ? `unknown field(s): ${issue.keys.join(', ')}` : issue.message,
    );
    throw new BadRequestException(messages);
  }
}
