/** Shown in place of a password wherever a connection string is printed. */
export const REDACTED = '***';

/**
 * Query parameters that carry a secret (libpq's `password` and `sslpassword`, and the like). The
 * value runs to the next `&name=`, not the next `&` or `#`: a raw `&` or `#` may be part of it.
 */
const SECRET_PARAM = /([?&][^=&#\s]*(?:password|secret|token)[^=&#\s]*=)(?:(?!&[A-Za-z_][\w.-]*=)[\s\S])*/gi;
/** `password=…` in libpq's keyword/value form, quoted or not. */
const SECRET_KEYWORD = /((?:^|[\s,;(])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s,;)]*)/gi;
const SCHEME = /[a-z][a-z0-9+.-]*:\/\//gi;
const SCHEME_AT_START = /^[a-z][a-z0-9+.-]*:\/\//i;

/**
 * Returns the connection string with its password replaced by `***`. Works on strings that are
 * not valid URLs too (a malformed URL is exactly what an error message needs to show).
 *
 * A password may hold any character, `/`, `@`, `?` and `#` included, so the only reliable end
 * of the credentials is the last `@` of the string: everything between `user:` and it is
 * masked. When the query holds an `@` too, more than the password is masked — never less.
 */
export function redactUrl(url: string): string {
  const start = schemeLength(url);
  // A value given where a URL belongs may be libpq's keyword form (`host=… password=…`).
  return maskCredentials(url, start).replace(SECRET_KEYWORD, `$1${REDACTED}`);
}

/**
 * Masks the credentials in a free text (an error message, a log line): the password of every
 * URL in it and every `password=…` pair. Only those positions are masked, so a password that
 * happens to be an ordinary word ("x", "postgres") leaves the rest of the text alone.
 */
export function scrubSecrets(text: string): string {
  let out = '';
  let from = 0;
  SCHEME.lastIndex = 0;
  for (let m = SCHEME.exec(text); m; m = SCHEME.exec(text)) {
    const start = m.index + m[0].length;
    // A URL in running text ends at white space or a quote, unless its password holds one:
    // then the credentials run to the last '@' of the line.
    let end = start;
    while (end < text.length && !/[\s"'<>]/.test(text[end])) end++;
    const lineEnd = text.indexOf('\n', start) === -1 ? text.length : text.indexOf('\n', start);
    if (text.lastIndexOf('@', end) < start && text.slice(start, end).includes(':') && text.lastIndexOf('@', lineEnd) > end) end = lineEnd;
    out += text.slice(from, m.index) + maskCredentials(text.slice(m.index, end), m[0].length);
    from = end;
    SCHEME.lastIndex = Math.max(end, start);
  }
  out += text.slice(from);
  return out.replace(SECRET_KEYWORD, `$1${REDACTED}`);
}

/**
 * Where a URL's password may stand: from the first ':' after the scheme (`start`) to the last '@'
 * — the span {@link redactUrl} masks; undefined when there is none (a user name alone is not a
 * secret). Anything that overlaps it is never quoted in a message.
 */
export function credentialSpan(url: string, start = schemeLength(url)): { from: number; to: number } | undefined {
  const at = url.lastIndexOf('@');
  if (at < start) return undefined;
  const colon = url.indexOf(':', start);
  if (colon === -1 || colon > at) return undefined;
  return { from: colon + 1, to: at };
}

function schemeLength(url: string): number {
  return SCHEME_AT_START.exec(url)?.[0].length ?? 0;
}

/**
 * Secret parameters first: an '@' in a password parameter's value would otherwise pass for the
 * end of the user-info and leave the rest of the value unmasked.
 */
function maskCredentials(url: string, start: number): string {
  const masked = url.replace(SECRET_PARAM, `$1${REDACTED}`);
  const span = credentialSpan(masked, start);
  return span ? `${masked.slice(0, span.from)}${REDACTED}${masked.slice(span.to)}` : masked;
}
