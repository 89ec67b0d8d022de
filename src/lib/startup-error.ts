/**
 * A reason the server cannot start that the operator must fix (a data folder in use, a
 * missing setting): src/server.ts prints its message as it is, without a stack trace.
 */
export class StartupError extends Error {
  override name = 'StartupError'
}
