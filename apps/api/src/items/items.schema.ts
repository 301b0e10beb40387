import { BadRequestException, type PipeTransform } from '@nestjs/common';
import { z } from 'zod';

/** In `u` mode a surrogate pair is one code point, so only an unpaired surrogate matches. */
const LONE_SURROGATE = /\p{Cs}/u;

export const createItemSchema = z.strictObject({
  name: z
    .string({ error: 'name must be a string' })
    // PostgreSQL text cannot hold U+0000, and a lone surrogate would be stored as U+FFFD:
    // refuse both rather than fail in the database or store something else than was sent.
    .refine((s) => !s.includes('\u0000'), 'name must not contain the character U+0000')
    .refine((s) => !LONE_SURROGATE.test(s), 'name must be well-formed Unicode (no lone surrogate code units)')
    .trim()
    .min(1, 'name must not be empty')
    .max(200, 'name must be at most 200 characters'),
});
export type CreateItem = z.infer<typeof createItemSchema>;

const MAX_ID = 2_147_483_647;

/** A canonical decimal integer, as in a path or a query string: no sign, no leading zeros, no `0x1`, `1.0` or `1e3`. */
const decimal = (what: string, range: string) => {
  const message = `${what} must be ${range}, written in decimal digits`;
  return z.string({ error: message }).regex(/^(0|[1-9]\d*)$/, message);
};

export const listItemsSchema = z.object({
  // An empty `limit=` means the default, as if it were not given.
  limit: z
    .preprocess((v) => (v === '' ? undefined : v), decimal('limit', 'an integer from 1 to 100').optional())
    .transform((v) => (v === undefined ? 20 : Number(v)))
    .pipe(z.number().min(1, 'limit must be from 1 to 100').max(100, 'limit must be from 1 to 100')),
});

export const itemIdSchema = decimal('id', 'a positive integer')
  .transform(Number)
  .pipe(z.number().min(1, 'id must be a positive integer').max(MAX_ID, 'id is out of range'));

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
