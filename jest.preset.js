// Shared Jest settings: ESM TypeScript through ts-jest, one real PostgreSQL per run
// (tools/jest/global-setup.js) and test files run one at a time, so that pools warmed by
// different files never add up past the server's max_connections.
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('.', import.meta.url));

/** @returns {import('jest').Config} */
export function jestConfig(displayName, projectDir) {
  return {
    displayName,
    rootDir: projectDir,
    testEnvironment: 'node',
    extensionsToTreatAsEsm: ['.ts'],
    moduleFileExtensions: ['ts', 'js', 'mjs', 'json'],
    testMatch: ['<rootDir>/{src,test}/**/*.spec.ts'],
    transform: {
      '^.+\\.ts$': ['ts-jest', { useESM: true, tsconfig: `${projectDir}/tsconfig.spec.json` }],
    },
    moduleNameMapper: {
      '^@db-pool/db-pool$': `${root}libs/db-pool/src/index.ts`,
      '^(\\.{1,2}/.*)\\.js$': '$1',
    },
    globalSetup: `${root}tools/jest/global-setup.js`,
    globalTeardown: `${root}tools/jest/global-teardown.js`,
    maxWorkers: 1,
    testTimeout: 60_000,
  };
}
