/** `ovroot reset`: schedule a factory reset for the next boot, or reset an unmounted upper now. */
import { resolve } from 'node:path'
import { createInterface } from 'node:readline/promises'
import { loadConfig } from '../config/load.js'
import { upperDir, type Config } from '../config/schema.js'
import { parseBootState, STATUS_FILE, type BootState } from '../boot/state.js'
import { ExitCode, OvrootError, usageError, type ExitStatus } from '../errors.js'
import { readTextFileIfExists, statPath } from '../sys/fs.js'
import { runTool } from '../sys/run.js'
import { collectKeepPatterns, KeepList } from './keep.js'
import { liveView, offlineView } from './views.js'
import { cancelReset, performReset, planReset, readResetMarker, scheduleReset, type FlashLayout } from './wipe.js'

export interface ResetOptions {
  configFile: string | undefined
  yes: boolean
  reboot: boolean
  dryRun: boolean
  keep: string[]
  upper: string | undefined
  cancel: boolean
}

export async function runReset(options: ResetOptions): Promise<ExitStatus> {
  const config = loadConfig(options.configFile)
  if (options.keep.some((path) => !path.startsWith('/'))) throw usageError('--keep takes absolute paths or globs, such as /etc/dropbear')
  if (options.upper !== undefined) return resetUnmounted(config, options)
  const layout: FlashLayout = { root: config.overlay.dir, upperName: 'upper' }
  const mode = bootMode(config)
  if (mode !== 'flash') {
    process.stdout.write(`ovroot: the root runs on a RAM upper (mode ${mode}): nothing on flash to reset; everything changed is discarded at reboot\n`)
    if (options.reboot && !options.dryRun) await reboot()
    return ExitCode.ok
  }
  if (options.cancel) {
    cancelReset(layout)
    process.stdout.write('ovroot: scheduled reset cancelled\n')
    return ExitCode.ok
  }
  const patterns = collectKeepPatterns(config, options.keep, liveView)
  if (options.dryRun) return printPlan(upperDir(config), patterns)
  if (!options.yes) await confirm('Factory reset: every change to the firmware\'s files goes at the next boot, except the keep list.')
  scheduleReset(layout, patterns)
  process.stdout.write(`ovroot: factory reset scheduled for the next boot${patterns.length ? `, keeping ${patterns.join(' ')}` : ''}\n`)
  if (options.reboot) await reboot()
  return ExitCode.ok
}

/** An upper that no overlay uses: reset it here and now. */
async function resetUnmounted(config: Config, options: ResetOptions): Promise<ExitStatus> {
  const upper = resolve(options.upper ?? '')
  const slash = upper.lastIndexOf('/')
  const layout: FlashLayout = { root: upper.slice(0, slash) || '/', upperName: upper.slice(slash + 1) }
  // A power cut between the reset's two renames leaves no upper, only the marker saying how to finish.
  if (statPath(upper)?.type !== 'dir' && !readResetMarker(layout)) throw new OvrootError('ENOENT', ExitCode.environment, `upper directory ${upper} does not exist`)
  if (mountedUppers().includes(upper)) throw new OvrootError('EBUSY', ExitCode.environment, `${upper} is the upper of a mounted overlay; reset it with a reboot (ovroot reset), never while mounted`)
  const namespace = config.overlay.options.includes('userxattr') ? 'user' : 'trusted'
  const patterns = collectKeepPatterns(config, options.keep, offlineView(upper, config.overlay.lower, namespace))
  if (options.dryRun) return printPlan(upper, patterns)
  if (!options.yes) await confirm(`Factory reset of ${upper}: everything in it goes, except the keep list.`)
  if (!readResetMarker(layout)) scheduleReset(layout, patterns)
  const kept = performReset(layout, layout.upperName === 'upper' ? `${layout.root}/work` : undefined)
  process.stdout.write(`ovroot: ${upper} reset${kept.length ? `, kept ${kept.join(' ')}` : ''}\n`)
  return ExitCode.ok
}

function printPlan(upper: string, patterns: string[]): ExitStatus {
  const plan = planReset(upper, new KeepList(patterns))
  process.stdout.write([...plan.remove.map((path) => `remove ${path}\n`), ...plan.keep.map((path) => `keep ${path}\n`)].join(''))
  return ExitCode.ok
}

async function confirm(what: string): Promise<void> {
  if (!process.stdin.isTTY) {
    throw new OvrootError('EABORTED', ExitCode.aborted, 'reset not confirmed: input is not a terminal; pass --yes to confirm')
  }
  const prompt = createInterface({ input: process.stdin, output: process.stderr })
  const answer = await prompt.question(`${what}\nContinue? [y/N] `)
  prompt.close()
  if (!/^y(es)?$/i.test(answer.trim())) throw new OvrootError('EABORTED', ExitCode.aborted, 'reset cancelled: not confirmed')
}

function bootMode(config: Config): BootState['mode'] {
  const file = `${config.boot.run_dir}/${STATUS_FILE}`
  const state = parseBootState(readTextFileIfExists(file), file, (message) => new OvrootError('ESTATUS', ExitCode.data, message))
  if (!state) throw new OvrootError('ENOSTATUS', ExitCode.environment, `${file}: no boot record, so this is not a device booted by ovroot; use --upper DIR for an unmounted upper`)
  return state.mode
}

function mountedUppers(): string[] {
  const uppers: string[] = []
  for (const line of (readTextFileIfExists('/proc/mounts') ?? '').split('\n')) {
    const match = /upperdir=([^,\s]+)/.exec(line)
    if (match?.[1]) uppers.push(match[1].replace(/\/+$/, ''))
  }
  return uppers
}

async function reboot(): Promise<void> {
  process.stdout.write('ovroot: rebooting\n')
  await runTool('reboot', [])
}

