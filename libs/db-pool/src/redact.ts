/** Shown in place of a password wherever a connection string is printed. */
export const REDACTED = '***';

/**
 * Returns the connection string with its password replaced by `***`. Works on strings that are
 * not valid URLs too (a malformed URL is exactly what an error message needs to show), by
 * masking whatever stands between `user:` and the last `@` of the authority.
 */
export function redactUrl(url: string): string {
  const scheme = url.indexOf('://');
  const start = scheme === -1 ? 0 : scheme + 3;
  const slash = url.indexOf('/', start);
  const authorityEnd = slash === -1 ? url.length : slash;
  const at = url.lastIndexOf('@', authorityEnd);
  let out = url;
  if (at > start) {
    const colon = url.indexOf(':', start);
    if (colon !== -1 && colon < at) out = `${url.slice(0, colon + 1)}${REDACTED}${url.slice(at)}`;
  }
  // libpq also takes the password as a query parameter.
  return out.replace(/([?&]password=)[^&#]*/gi, `$1${REDACTED}`);
}

/** Removes every occurrence of the given secrets from a text (e.g. a driver error message). */
export function scrubSecrets(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text;
  for (const secret of secrets) {
    if (!secret) continue;
    for (const form of new Set([secret, encodeURIComponent(secret)])) out = out.split(form).join(REDACTED);
  }
  return out;
}
