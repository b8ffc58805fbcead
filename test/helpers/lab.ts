/** Booting the lab's device under QEMU from tests, through qemu/vm as a user would. */
import type { Test } from 'tap'
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'

export const VM = fileURLToPath(new URL('../../qemu/vm', import.meta.url))

export interface Boot {
  status: number
  stdout: string
  stderr: string
}

export function boot(args: string[]): Boot {
  const result = spawnSync('env', ['-u', 'NODE_OPTIONS', VM, 'boot', '--timeout', '300', ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 26,
  })
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr }
}

/** Run CMD in the booted device; fails the test with the console when the boot itself fails. */
export function run(t: Test, args: string[], command: string): Boot {
  const result = boot([...args, '--run', command])
  if (result.status === 125) t.fail(`the device did not finish booting: ${result.stderr.slice(-2000)}`)
  return result
}

export interface DeviceStatus {
  mode: string
  reason?: string
  medium?: { driver: string; filesystem: string }
  formatted?: boolean
  reset?: { kept: string[] }
  pending: string[]
}

/** The JSON line `ovroot status --json` printed among other output. */
export function statusFrom(output: string): DeviceStatus {
  const line = output.split('\n').find((candidate) => candidate.startsWith('{"mode"'))
  if (!line) throw new Error(`no ovroot status --json line in:\n${output}`)
  return JSON.parse(line) as DeviceStatus
}

export function changesFrom(output: string): { path: string; change: string }[] {
  return output
    .split('\n')
    .filter((line) => line.startsWith('{"path"'))
    .map((line) => JSON.parse(line) as { path: string; change: string })
    .map(({ path, change }) => ({ path, change }))
}

/** The whole console of the last boot, kernel and init messages included. */
export function consoleLog(): string {
  return fs.readFileSync(fileURLToPath(new URL('../../qemu/build/last-console.log', import.meta.url)), 'utf8')
}

export function workspace(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovroot-lab-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}
