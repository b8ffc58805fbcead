/**
 * What the commands that change a device's upper (reset, restore) share: the
 * boot record, the flash made writable for the moment a change is committed,
 * the refusal to touch a live layer. Confirmation and reboot: src/interact.ts.
 */
import { flashMounted, readBootState, type BootState } from '../state/boot-record.js'
import { flashLayout, upperDir } from '../state/flash.js'
import type { Config } from '../config/schema.js'
import { ExitCode, OvrootError } from '../errors.js'
import { realPath } from '../sys/fs.js'
import { remount, syncAll } from '../sys/libc.js'
import { mountedOverlayLayers } from '../sys/mounts.js'
import { withStagingLock } from './lock.js'
import { cancelPending, describePendingAt } from './marker.js'

export interface BootRecord {
  state: BootState
  /** The flash is mounted at [overlay] dir (read-only unless the mode is flash). */
  flashMounted: boolean
}

export function readBootRecord(config: Config): BootRecord {
  const state = readBootState(
    config.boot.run_dir,
    ', so this is not a device booted by ovroot; use --upper DIR for an unmounted upper',
  )
  return { state, flashMounted: flashMounted(state) }
}

/**
 * A degraded boot leaves the flash read-only; committing a change writes only
 * in its state directory, never in the layer the overlay uses, so the flash is
 * writable just for that. Under the staging lock: the sync daemon stages in
 * the same directory.
 */
export async function withWritableFlash<T>(
  config: Config,
  record: BootRecord,
  change: () => T | Promise<T>,
): Promise<T> {
  return withStagingLock(config.boot.run_dir, async () => {
    const readOnly = record.state.mode !== 'flash'
    if (readOnly) remount(config.overlay.dir, { readOnly: false })
    try {
      const result = await change()
      syncAll()
      return result
    } finally {
      if (readOnly) remount(config.overlay.dir, { readOnly: true })
    }
  })
}

/**
 * `--upper DIR` of reset and restore, which change an unmounted upper at once: under the staging lock
 * when DIR is the flash copy a sync device persists its RAM upper to (never mounted, so not refused as a
 * live layer), where a sync stages and applies its changes. Any other directory is no sync's.
 */
export async function withLockIfFlashCopy<T>(config: Config, upper: string, work: () => Promise<T>): Promise<T> {
  const canonical = (path: string): string => realPath(path) ?? path
  return canonical(upper) === canonical(upperDir(config)) ? withStagingLock(config.boot.run_dir, work) : work()
}

/** `--cancel` of reset and restore: drop whatever change is scheduled, readable or not. */
export async function cancelScheduled(config: Config, record: BootRecord): Promise<void> {
  const layout = flashLayout(config)
  const pending = describePendingAt(layout)
  await withWritableFlash(config, record, () => cancelPending(layout))
  process.stdout.write(pending ? `ovroot: cancelled: ${pending}\n` : 'ovroot: nothing was scheduled\n')
}

/** The kernel forbids changes to the layers of a mounted overlay: refuse a directory that is one, holds one, or is inside an upper. */
export function refuseLiveLayer(dir: string): void {
  const target = realPath(dir) ?? dir
  const { written, lowers } = mountedOverlayLayers()
  const inside = (path: string, root: string): boolean => path === root || path.startsWith(`${root}/`)
  const clash =
    [...written, ...lowers].find((layer) => inside(layer, target)) ?? written.find((layer) => inside(target, layer))
  if (clash !== undefined)
    throw new OvrootError(
      'EBUSY',
      ExitCode.environment,
      `${dir} is ${clash === target ? 'a layer' : 'part of a layer'} (${clash}) of a mounted overlay; change it with a reboot, never while mounted`,
    )
}
