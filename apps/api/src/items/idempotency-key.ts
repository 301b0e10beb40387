import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import { z } from 'zod';
import { ZodPipe } from './items.schema.js';

const MESSAGE = 'Idempotency-Key must be 16 to 128 characters: letters, digits and - _ . : ~ + / = (a UUID, for example)';

/**
 * An optional Idempotency-Key header: 16 to 128 characters of a set that fits UUIDs, ULIDs and
 * base64. Keys are global to the api (it has no accounts to scope them by), hence the floor: a
 * short key would meet another client's. Also taken in the Structured Fields form of the IETF
 * httpapi draft (`"…"`); both forms are the same key. A header sent twice arrives joined with a
 * comma, and is refused.
 */
export const idempotencyKeySchema = z
  .string({ error: MESSAGE })
  .transform((key) => (key.length >= 2 && key.startsWith('"') && key.endsWith('"') ? key.slice(1, -1) : key))
  .pipe(z.string().regex(/^[A-Za-z0-9_.:~+/=-]{16,128}$/, MESSAGE))
  .optional();

const header = createParamDecorator(
  (_data: unknown, context: ExecutionContext) =>
    context.switchToHttp().getRequest<{ headers: Record<string, unknown> }>().headers['idempotency-key'],
);

/** The request's Idempotency-Key, checked (400 when malformed), or undefined when it sent none. */
export const IdempotencyKey = (): ParameterDecorator => header(new ZodPipe(idempotencyKeySchema));
