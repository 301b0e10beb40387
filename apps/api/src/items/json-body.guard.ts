import { type CanActivate, type ExecutionContext, Injectable, UnsupportedMediaTypeException } from '@nestjs/common';

/** Express' request, as far as this guard needs it. */
interface RequestWithType {
  is(type: string): string | false | null;
}

/**
 * Refuses a request body that is not JSON with 415, before validation: Nest parses form bodies
 * too, and a text body would otherwise reach validation as `{}` and get a misleading 400.
 */
@Injectable()
export class JsonBodyGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<RequestWithType>();
    if (!request.is('application/json'))
      throw new UnsupportedMediaTypeException('the body must be JSON, sent with Content-Type: application/json');
    return true;
  }
}
