/**
 * Every failure a user can cause or meet is an OvrootError: a stable code for
 * scripts, an exit status from the documented table, and one line of text that
 * names the thing and what was expected.
 */
export const ExitCode = {
  ok: 0,
  /** `diff --exit-code`: something changed. Not an error. */
  changed: 1,
  usage: 2,
  config: 3,
  /** Not root, a missing directory, device, tool or kernel feature. */
  environment: 4,
  /** The input is not what it claims: not an upper, corrupt flash or archive. */
  data: 5,
  /** A read or write failed, or the medium is full. */
  io: 6,
  /** The user declined a confirmation. */
  aborted: 7,
  /** `upgrade-check`: the new firmware would meet conflicts, hidden or unknown entries. Not an error. */
  attention: 8,
  /** A bug in ovroot. */
  internal: 70,
} as const

export type ExitStatus = (typeof ExitCode)[keyof typeof ExitCode]

export class OvrootError extends Error {
  override readonly name = 'OvrootError'
  constructor(
    readonly code: string,
    readonly exitStatus: ExitStatus,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

export const usageError = (message: string): OvrootError => new OvrootError('EUSAGE', ExitCode.usage, message)

export const configError = (message: string): OvrootError => new OvrootError('ECONFIG', ExitCode.config, message)

/** A system call failed: keep errno's name so callers can tell ENOENT from EIO. */
export class SysError extends OvrootError {
  constructor(
    readonly errno: string,
    readonly operation: string,
    readonly target: string,
    detail?: string,
  ) {
    super(errno, exitStatusForErrno(errno), `${operation} ${target}: ${detail ?? describeErrno(errno)}`)
  }
}

const environmentErrnos = new Set([
  'ENOENT',
  'ENOTDIR',
  'EACCES',
  'EPERM',
  'ENODEV',
  'ENXIO',
  'ENOSYS',
  'ENOTSUP',
  'EOPNOTSUPP',
])
const ioErrnos = new Set(['EIO', 'ENOSPC', 'EROFS', 'EDQUOT', 'EUCLEAN', 'EBUSY'])

function exitStatusForErrno(errno: string): ExitStatus {
  if (environmentErrnos.has(errno)) return ExitCode.environment
  if (ioErrnos.has(errno)) return ExitCode.io
  if (errno === 'EINVAL') return ExitCode.data
  return ExitCode.io
}

const errnoText: Record<string, string> = {
  ENOENT: 'no such file or directory',
  ENOTDIR: 'not a directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted (are you root?)',
  ENODEV: 'no such device',
  ENXIO: 'no such device or address',
  ENOSPC: 'no space left on device',
  EROFS: 'read-only file system',
  EIO: 'input/output error',
  EBUSY: 'device or resource busy',
  EINVAL: 'invalid argument',
  EEXIST: 'already exists',
  ENOTEMPTY: 'directory not empty',
  EUCLEAN: 'filesystem needs cleaning (corrupt)',
}

export function describeErrno(errno: string): string {
  return errnoText[errno] ?? errno
}

/** Node's own fs errors carry `code`; turn them into SysErrors at the boundary. */
export function fromNodeError(error: unknown, operation: string, target: string): OvrootError {
  if (error instanceof OvrootError) return error
  const code = (error as { code?: unknown } | null)?.code
  if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return new SysError(code, operation, target)
  return new OvrootError('EINTERNAL', ExitCode.internal, `${operation} ${target}: ${String(error)}`, { cause: error })
}
