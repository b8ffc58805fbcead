/**
 * Running external tools (mkfs, flash_erase, ubimkvol, reboot). execa is
 * imported on first use: a normal boot spawns nothing and so loads nothing.
 * A tool's output counts as progress for the boot shim's timer.
 */
import { readFileSync } from 'node:fs'
import { ExitCode, OvrootError } from '../errors.js'
import { reportProgress } from './progress.js'

export interface ToolResult {
  stdout: string
  stderr: string
}

export async function runTool(file: string, args: string[], timeoutSeconds = 600): Promise<ToolResult> {
  const { execa } = await import('execa')
  try {
    const child = execa(file, args, { timeout: timeoutSeconds * 1000, stdin: 'ignore', reject: true })
    child.stdout.on('data', reportProgress)
    child.stderr.on('data', reportProgress)
    const watcher = watchToolWork(child.pid)
    const result = await child.finally(() => clearInterval(watcher))
    return { stdout: String(result.stdout), stderr: String(result.stderr) }
  } catch (error) {
    const failure = error as { code?: string; exitCode?: number; stderr?: unknown; timedOut?: boolean }
    if (failure.code === 'ENOENT')
      throw new OvrootError('ENOTOOL', ExitCode.environment, `${file}: tool not found (install it on the device)`)
    const detail =
      (typeof failure.stderr === 'string' ? failure.stderr : '').trim().split('\n').pop() ||
      (failure.timedOut ? `timed out after ${timeoutSeconds} s` : `exit status ${failure.exitCode}`)
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
