import { accessSync, constants, readFile, statSync } from 'node:fs';

/**
 * A password asked for each new connection, as pg allows (`password` may be a function, sync or
 * async): a cloud IAM token, or a secret that rotates. Connections already open keep theirs.
 */
export type PasswordSource = () => string | Promise<string>;

/** What a password function reads from, said in an authentication failure instead of the secret. */
const ORIGIN = Symbol('db-pool.passwordOrigin');

/** Why `path` cannot be a password file (undefined: it can be read). Names the reason, never the content. */
export function unreadableFile(path: string): string | undefined {
  try {
    if (!statSync(path).isFile()) return 'not a file';
    accessSync(path, constants.R_OK);
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'unreadable';
  }
}

/**
 * The password in `path` (`DB_PASSWORD_FILE`, a mounted secret), read again for each new
 * connection so that a rotated secret is used without a restart. One trailing newline (what
 * `echo` and most editors leave) is not part of it. A failure names the file and the reason.
 */
export function passwordFromFile(path: string, envName: string): PasswordSource {
  const origin = `${envName} "${path}"`;
  const read = () =>
    new Promise<string>((resolve, reject) =>
      readFile(path, 'utf8', (err, text) => {
        if (err) return reject(new Error(`the password file ${origin} could not be read (${err.code ?? err.message})`));
        const password = text.replace(/\r?\n$/, '');
        if (password === '') return reject(new Error(`the password file ${origin} is empty`));
        resolve(password);
      }),
    );
  return Object.assign(read, { [ORIGIN]: origin });
}

/** Where a password comes from, when it is a file db-pool reads (for an authentication failure's message). */
export function passwordOrigin(password: unknown): string | undefined {
  return typeof password === 'function' ? (password as { [ORIGIN]?: string })[ORIGIN] : undefined;
}

/**
 * An authentication failure with a password db-pool read from a file says which file (the
 * server's message names the user only): the operator's next step is to look at that secret.
 */
export function withPasswordOrigin(err: Error, password: unknown): Error {
  const origin = passwordOrigin(password);
  const code = (err as { code?: unknown }).code;
  if (origin !== undefined && (code === '28P01' || code === '28000')) err.message += ` (password from ${origin})`;
  return err;
}
