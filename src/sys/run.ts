/**
 * Running external tools (mkfs, flash_erase, ubimkvol, reboot). execa is
 * imported on first use: a normal boot spawns nothing and so loads nothing.
 * A tool's output counts as progress for the boot shim's timer.
 */
import { readFileSync } from 'node:fs'
import { ExitCode, OvrootError, SysError } from '../errors.js'
import { reportProgress } from './progress.js'

export interface ToolResult {
  stdout: string
  stderr: string
}

/**
 * execa waits, even after its timeout, for a killed tool to exit and to close its output: a tool stuck in the
 * kernel on a hung device, or whose output a child of its own holds open, would hold the caller forever (and at boot
 * the watcher's polling costs the agent system time, which the shim counts as progress: it would never be killed).
 * This long after the timeout (execa sends SIGKILL 5 s after SIGTERM) the tool is given up.
 */
const ABANDON_AFTER_KILL_MS = 10_000

/** `succeeds`: the exit statuses that are success (e2fsck's 1: errors found and repaired). */
export async function runTool(
  file: string,
  args: string[],
  timeoutSeconds = 600,
  succeeds: readonly number[] = [0],
): Promise<ToolResult> {
  const { execa } = await import('execa')
  try {
    const child = execa(file, args, { timeout: timeoutSeconds * 1000, stdin: 'ignore', reject: true })
    child.stdout.on('data', reportProgress)
    child.stderr.on('data', reportProgress)
    const watcher = watchToolWork(child.pid)
    let deadline: NodeJS.Timeout | undefined
    const abandoned = new Promise<never>((_resolve, reject) => {
      const timedOut = Object.assign(new Error('abandoned'), { timedOut: true })
      const giveUp = (): void => {
        // Its pipes and handle would keep this process alive until the tool ends: the agent must exit.
        child.stdout.destroy()
        child.stderr.destroy()
        child.unref()
        reject(timedOut)
      }
      deadline = setTimeout(giveUp, timeoutSeconds * 1000 + ABANDON_AFTER_KILL_MS)
    })
    // Settled after the race when the tool is given up: its rejection must not be unhandled.
    child.catch(() => undefined)
    const result = await Promise.race([child, abandoned]).finally(() => {
      clearInterval(watcher)
      clearTimeout(deadline)
    })
    return { stdout: String(result.stdout), stderr: String(result.stderr) }
  } catch (error) {
    const failure = error as {
      code?: string
      exitCode?: number
      stdout?: unknown
      stderr?: unknown
      timedOut?: boolean
      signal?: string
    }
    if (failure.exitCode !== undefined && succeeds.includes(failure.exitCode))
      return { stdout: String(failure.stdout), stderr: String(failure.stderr) }
    if (failure.code === 'ENOENT')
      throw new OvrootError('ENOTOOL', ExitCode.environment, `${file}: tool not found (install it on the device)`)
    // Never started (no execute permission, a noexec mount): no output, no status, only the spawn's errno says why.
    if (failure.exitCode === undefined && !failure.timedOut && !failure.signal && failure.code?.startsWith('E'))
      throw new SysError(failure.code, 'execute', file)
    const detail =
      (typeof failure.stderr === 'string' ? failure.stderr : '').trim().split('\n').pop() ||
      (failure.timedOut
        ? `timed out after ${timeoutSeconds} s`
        : // A crash (mkfs.f2fs dies of SIGFPE on a device too small for it) has no exit status.
          failure.signal
          ? `killed by ${failure.signal}`
          : `exit status ${failure.exitCode}`)
    throw new OvrootError('ETOOL', ExitCode.io, `${file} ${args.join(' ')}: ${detail}`)
  }
}

/**
 * Work a silent tool does (mkfs -q discarding a whole device, a flash erase)
 * counts as progress: its CPU time and I/O, and the block layer's counters
 * (a discard is I/O the tool waits for, not I/O it does). A tool that hangs,
 * waiting on nothing that moves, shows none of it.
 */
function watchToolWork(pid: number | undefined): NodeJS.Timeout {
  let last = ''
  const sample = (): string =>
    [completedBlockIo(), readQuietly(`/proc/${pid}/io`), readQuietly(`/proc/${pid}/stat`)].join('\n')
  return setInterval(() => {
    const now = sample()
    if (now !== last) reportProgress()
    last = now
  }, 1000)
}

/**
 * Requests completed and sectors moved, per block device (reads, writes,
 * discards, flushes): the time fields of /proc/diskstats grow while a request
 * hangs in flight, so they are left out.
 */
function completedBlockIo(): string {
  return readQuietly('/proc/diskstats')
    .split('\n')
    .map((line) => {
      const fields = line.trim().split(/\s+/)
      return [3, 5, 7, 9, 14, 16, 18].map((index) => fields[index] ?? '').join(' ')
    })
    .join('\n')
}

function readQuietly(file: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch {
    // The tool has just exited, or the kernel lacks the file: nothing moved there.
    return ''
  }
}

/** Whether a process exists (a lock's owner). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as { code?: string }).code === 'EPERM'
  }
}

/**
 * When a process started (clock ticks since boot, /proc/PID/stat field 22), or undefined when there is no such
 * process: with its pid, what tells a process from a later one given the same pid.
 */
export function processStart(pid: number): string | undefined {
  const stat = readQuietly(`/proc/${pid}/stat`)
  // The command name (field 2) is in parentheses and may hold spaces and parentheses: count from the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] || undefined
}
