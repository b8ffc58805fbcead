/** Kept in step with package.json by test/config.test.ts. */
export const VERSION = '0.1.0'
