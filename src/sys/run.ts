/**
 * Running external tools (mkfs, flash_erase, ubimkvol, reboot). execa is
 * imported on first use: a normal boot spawns nothing and so loads nothing.
 * A tool's output counts as progress for the boot shim's timer.
 */
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
    const result = await child
    return { stdout: String(result.stdout), stderr: String(result.stderr) }
  } catch (error) {
    const failure = error as { code?: string; exitCode?: number; stderr?: unknown; timedOut?: boolean }
    if (failure.code === 'ENOENT') throw new OvrootError('ENOTOOL', ExitCode.environment, `${file}: tool not found (install it on the device)`)
    const detail = (typeof failure.stderr === 'string' ? failure.stderr : '').trim().split('\n').pop() || (failure.timedOut ? `timed out after ${timeoutSeconds} s` : `exit status ${failure.exitCode}`)
    throw new OvrootError('ETOOL', ExitCode.io, `${file} ${args.join(' ')}: ${detail}`)
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
