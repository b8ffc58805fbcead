/**
 * `ovroot reset`: schedule a factory reset (or a reset of some paths) for the
 * next boot, or reset an unmounted upper now.
 */
import { basename, dirname, resolve } from 'node:path'
import { loadConfig } from '../config/load.js'
import type { Config } from '../config/schema.js'
import { ExitCode, OvrootError, usageError, type ExitStatus } from '../errors.js'
import { namespaceForMount, OverlayXattrs } from '../overlay/xattrs.js'
import { applyPending } from '../pending/apply.js'
import { cancelPending, commitPending, describeChange, describePendingAt, readPending } from '../pending/marker.js'
import { confirm, rebootNow } from '../interact.js'
import {
  cancelScheduled,
  readBootRecord,
  refuseLiveLayer,
  withLockIfFlashCopy,
  withWritableFlash,
} from '../pending/device.js'
import { statPath } from '../sys/fs.js'
import { collectKeepPatterns, KeepList } from './keep.js'
import { planReset } from './prune.js'
import { printResetPreview } from './preview.js'
import { liveView, offlineView } from './views.js'
import { upperDir, flashLayout, type FlashLayout } from '../state/flash.js'

export interface ResetOptions {
  configFile: string | undefined
  yes: boolean
  reboot: boolean
  dryRun: boolean
  json: boolean
  keep: string[]
  /** Reset only these paths; empty: everything. */
  paths: string[]
  upper: string | undefined
  cancel: boolean
}

export async function runReset(options: ResetOptions): Promise<ExitStatus> {
  const config = loadConfig(options.configFile)
  if (options.keep.some((path) => !path.startsWith('/')))
    throw usageError('--keep takes absolute paths or globs, such as /etc/dropbear')
  if (options.paths.some((path) => !path.startsWith('/') || path === '/'))
    throw usageError('reset PATH takes absolute paths of the merged view below /, such as /etc/config/network')
  options.paths = options.paths.map((path) => path.replace(/\/+$/, ''))
  if (options.upper !== undefined) return resetUnmounted(config, options)
  const record = readBootRecord(config)
  if (!record.flashMounted) {
    process.stdout.write(
      `ovroot: the root runs on a RAM upper (mode ${record.state.mode}): nothing on flash to reset; everything changed is discarded at reboot\n`,
    )
    if (options.reboot && !options.dryRun) await rebootNow()
    return ExitCode.ok
  }
  const layout = flashLayout(config)
  if (options.cancel) {
    await cancelScheduled(config, record)
    return ExitCode.ok
  }
  const keep = collectKeepPatterns(config, options.keep, liveView)
  const only = options.paths.length > 0 ? options.paths : undefined
  if (options.dryRun)
    return printResetPreview(
      upperDir(config),
      config.overlay.lower,
      namespaceForMount(config.overlay.options),
      planReset(upperDir(config), new KeepList(keep), only),
      options.json,
    )
  if (!options.yes)
    await confirm(
      only
        ? `Reset ${only.join(' ')} to the firmware's state at the next boot.`
        : "Factory reset: every change to the firmware's files goes at the next boot, except the keep list.",
    )
  const replaced = describePendingAt(layout)
  await withWritableFlash(config, record, () => {
    cancelPending(layout)
    commitPending(layout, { kind: 'reset', requested: new Date().toISOString(), keep, ...(only && { only }) })
  })
  if (replaced) process.stdout.write(`ovroot: replaces ${replaced}\n`)
  process.stdout.write(
    `ovroot: ${only ? `reset of ${only.join(' ')}` : 'factory reset'} scheduled for the next boot${keep.length ? `, keeping ${keep.join(' ')}` : ''}\n`,
  )
  if (options.reboot) await rebootNow()
  return ExitCode.ok
}

/** An upper that no overlay uses: reset it here and now. */
async function resetUnmounted(config: Config, options: ResetOptions): Promise<ExitStatus> {
  const upper = resolve(options.upper ?? '')
  const layout: FlashLayout = { root: dirname(upper), upperName: basename(upper) }
  // A power cut during a restore's swap leaves no upper, only the marker saying how to finish.
  if (statPath(upper)?.type !== 'dir' && !readPending(layout))
    throw new OvrootError('ENOENT', ExitCode.environment, `upper directory ${upper} does not exist`)
  refuseLiveLayer(upper)
  const namespace = namespaceForMount(config.overlay.options)
  const keep = collectKeepPatterns(config, options.keep, offlineView(upper, config.overlay.lower, namespace))
  const only = options.paths.length > 0 ? options.paths : undefined
  if (options.dryRun)
    return printResetPreview(
      upper,
      config.overlay.lower,
      namespace,
      planReset(upper, new KeepList(keep), only),
      options.json,
    )
  if (!options.yes)
    await confirm(
      `Reset of ${upper}: everything in it goes${only ? ` under ${only.join(' ')}` : ''}, except the keep list.`,
    )
  const work = layout.upperName === 'upper' ? `${layout.root}/work` : undefined
  const xattrs = new OverlayXattrs(namespace)
  const apply = async (): Promise<ExitStatus> => {
    // A reset an earlier run committed is finished as it was committed (its keep list was read before it began).
    const pending = readPending(layout)
    if (pending?.kind === 'reset')
      process.stderr.write(`ovroot: finishing the interrupted ${describeChange(pending)}\n`)
    else {
      if (pending) await applyPending(layout, work, xattrs)
      commitPending(layout, { kind: 'reset', requested: new Date().toISOString(), keep, ...(only && { only }) })
    }
    const applied = await applyPending(layout, work, xattrs)
    const kept = applied?.kind === 'reset' ? applied.kept : []
    process.stdout.write(`ovroot: ${upper} reset${kept.length ? `, kept ${kept.join(' ')}` : ''}\n`)
    return ExitCode.ok
  }
  return withLockIfFlashCopy(config, upper, apply)
}
