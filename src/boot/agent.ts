/**
 * `ovroot boot`: run by init/ovroot-init (PID 1) with /proc, /sys, /dev and
 * /run mounted and the squashfs as `/`. It finds the flash, formats it on
 * first boot, applies a pending change (a factory reset, a restore, the end
 * of an interrupted sync), mounts the overlay and
 * pivots into it: `/` merged, `/rom` the lower, `/overlay` the flash. Any
 * flash trouble ends on a RAM upper with the reason recorded and shouted:
 * the device always boots.
 */
import { applyOverride, forcedReset, loadConfig } from '../config/load.js'
import { upgradeWarnings, type Config } from '../config/schema.js'
import { ExitCode, OvrootError, type ExitStatus } from '../errors.js'
import { MEDIA_DRIVER_TABLE } from '../media/drivers.js'
import { ramVolume } from '../media/ram.js'
import type { Volume } from '../media/types.js'
import { filesystemInfo, makeDirectory, pathExists, readTextFile, writeFileAtomic } from '../sys/fs.js'
import { mount, MountFlag, pivotRoot, remount, requireSystemLayer, unmount } from '../sys/libc.js'
import { reportProgressTo } from '../sys/progress.js'
import { namespaceForMount, OverlayXattrs } from '../overlay/xattrs.js'
import { commitPending, describeChange, ensureReserve, readPending } from '../pending/marker.js'
import { applyPending, hasPendingWork, type AppliedChange } from '../pending/apply.js'
import { currentIdentity } from '../upgrade/identity.js'
import { firmwareRecordAtBoot } from '../upgrade/record.js'
import { VERSION } from '../version.js'
import { parseKernelArguments } from '../state/cmdline.js'
import { writeBootState, type BootState } from '../state/boot-record.js'
import { progressPath, ramDir, statusPath } from '../state/run.js'
import {
  flashLayout,
  formatRecordPath,
  stateDir,
  upperDir,
  workDir,
  type FlashLayout,
  type FormatRecord,
} from '../state/flash.js'

const STAGING = '/mnt'
const MOVED_MOUNTS = ['/proc', '/sys', '/dev', '/run']

interface Medium {
  volume: Volume
  formatted: boolean
}

export async function boot(configFile: string | undefined): Promise<ExitStatus> {
  requireSystemLayer()
  const kernel = parseKernelArguments(readTextFile('/proc/cmdline'))
  const config = loadConfig(configFile)
  for (const [key, value] of kernel.overrides) applyOverride(config, 'kernel command line', key, value)
  const reset = forcedReset(kernel)
  refuseSecondBoot(config.boot.run_dir)
  for (const warning of upgradeWarnings(config.overlay.options)) process.stderr.write(`ovroot: ${warning}\n`)
  makeDirectory(config.boot.run_dir)
  reportProgressTo(progressPath(config.boot.run_dir))
  const state: BootState = { mode: 'flash', bootedAt: new Date().toISOString() }

  const medium = await mountFlash(config, state)
  const layers =
    medium.volume.driver === 'ram'
      ? { lowers: ['/'], upper: upperDir(config), work: workDir(config) }
      : await flashLayers(config, medium.volume, reset, state)
  mountOverlay(config, layers, medium.volume.driver !== 'ram', state)
  state.medium = {
    driver: medium.volume.driver,
    description: medium.volume.description,
    device: medium.volume.device,
    filesystem: medium.volume.filesystem,
  }
  state.formatted = medium.formatted || undefined
  pivotInto(config.overlay.dir)
  state.bootSeconds = secondsSinceShimStart()
  state.peakMemoryKiB = process.resourceUsage().maxRSS
  writeBootState(config.boot.run_dir, state)
  announce(state)
  return ExitCode.ok
}

/**
 * The shim mounts a fresh run directory at power-on, and every boot ends by writing its record there (the agent's,
 * or the shim's failsafe one): a record means this power-on has booted. Run again (by hand, a service restart), the
 * agent would apply a change scheduled for the next boot under the mounted root and pivot the running system.
 */
function refuseSecondBoot(runDir: string): void {
  if (pathExists(statusPath(runDir)))
    throw new OvrootError(
      'EBUSY',
      ExitCode.environment,
      `ovroot boot runs once per power-on, from the init shim, before the overlay exists: this one has booted (${statusPath(runDir)}); nothing was changed`,
    )
}

interface Layers {
  lowers: string[]
  upper: string
  work: string
}

/** The user's files read-only under a RAM upper on /run: how every degraded boot shows the flash. */
function ramUpperOver(config: Config, lowers: string[], purpose: 'ram' | 'fallback' | 'firmware-only' = 'ram'): Layers {
  const dir = ramDir(config.boot.run_dir, purpose)
  return { lowers, upper: `${dir}/upper`, work: `${dir}/work` }
}

/**
 * Mount the overlay at STAGING, recording what it is made of. When the kernel refuses
 * it (an option it rejects, index=on finding the upper's origin changed:
 * ESTALE), the device still shows the user's files: the flash upper
 * read-only under a RAM upper with only the options that read it, and
 * failing that the firmware alone. The shim's failsafe, which shows no user
 * file at all, is left for an agent that cannot run.
 */
function mountOverlay(config: Config, layers: Layers, persistent: boolean, state: BootState): void {
  const flashUpper = upperDir(config)
  const readingOptions = namespaceForMount(config.overlay.options) === 'user' ? ['userxattr'] : []
  const fallbacks: { layers: Layers; options: string[] }[] = [
    ...(persistent && !layers.lowers.includes(flashUpper)
      ? [{ layers: ramUpperOver(config, [flashUpper, '/'], 'fallback'), options: readingOptions }]
      : []),
    { layers: ramUpperOver(config, ['/'], 'firmware-only'), options: readingOptions },
  ]
  let attempt = { layers, options: config.overlay.options }
  for (;;) {
    const options = overlayOptions(attempt.options, attempt.layers.lowers, attempt.layers.upper, attempt.layers.work)
    try {
      // A RAM fallback's directories are on /run: their failure moves on to the next fallback too.
      if (!prepareLayers(attempt.layers.upper, attempt.layers.work))
        throw new OvrootError('ENOSPC', ExitCode.io, `no room for ${attempt.layers.upper} and ${attempt.layers.work}`)
      mount('overlay', STAGING, 'overlay', MountFlag.noAtime, options)
      state.overlay = {
        lowers: attempt.layers.lowers.map((lower) => (lower === '/' ? '/rom' : lower)),
        upper: attempt.layers.upper,
        work: attempt.layers.work,
        options,
      }
      return
    } catch (error) {
      const next = fallbacks.shift()
      if (!next) throw error
      const shown =
        next.layers.lowers.length > 1
          ? `the flash upper ${flashUpper} is shown read-only under a RAM upper`
          : 'only the firmware is shown'
      degrade(state, `the overlay did not mount (${options}): ${messageOf(error)}; ${shown}`)
      if (state.sync) {
        // The RAM copy of the flash goes with the mount that could not use it.
        delete state.sync
        tryUnmount(ramDir(config.boot.run_dir))
      }
      if (persistent) protectFlash(config, state)
      attempt = next
    }
  }
}

/**
 * The flash upper, once any pending change is applied. When that change
 * fails, or the flash is full, the root runs on a RAM upper and the flash
 * stays mounted read-only at [overlay] dir, where `ovroot status` and
 * `ovroot reset` still find it.
 */
async function flashLayers(config: Config, volume: Volume, forcedReset: boolean, state: BootState): Promise<Layers> {
  try {
    const applied = await applyPendingChange(config, forcedReset)
    if (applied?.kind === 'reset') state.reset = { kept: applied.kept }
    if (applied?.kind === 'restore') state.restored = { source: applied.source, entries: applied.entries }
    if (applied?.kind === 'upgrade') state.upgrade = (await import('../upgrade/boot.js')).summary(applied.report)
    const upgrade = await checkFirmware(config)
    if (upgrade) state.upgrade = upgrade
  } catch (error) {
    // An upgrade's reconcile says what it is: the upper is not shown over firmware it was not reconciled with.
    const failure = (await import('../upgrade/boot.js')).upgradeFailureOf(flashLayout(config), error)
    if (failure) state.upgradeFailed = failure
    degrade(
      state,
      failure
        ? `the upper could not be reconciled with the new firmware (${failure.from} -> ${failure.to}): ${failure.cause}; the flash is read-only at ${config.overlay.dir}`
        : `the change scheduled for the flash failed: ${messageOf(error)}; the flash is left as it is, read-only at ${config.overlay.dir}; 'ovroot reset --cancel' drops the change`,
    )
    protectFlash(config, state)
    return ramUpperOver(config, ['/'])
  }
  const upper = upperDir(config)
  const trouble = layersTrouble(config, volume, upper)
  if (trouble !== undefined) {
    // Keep the user's files visible under a RAM upper; a layer must not change under a live overlay.
    degrade(state, trouble)
    protectFlash(config, state)
    return ramUpperOver(config, [upper, '/'])
  }
  if (config.sync.enabled) return syncedRamUpper(config, upper, state)
  return { lowers: ['/'], upper, work: workDir(config) }
}

/** Why the flash cannot hold the live layers (full, or failing as they are made ready), or undefined when it can. */
function layersTrouble(config: Config, volume: Volume, upper: string): string | undefined {
  try {
    if (!isFull(config.overlay.dir) && prepareLayers(upper, workDir(config))) {
      ensureReserve(flashLayout(config))
      return undefined
    }
  } catch (error) {
    return `the flash's layers could not be made ready (${messageOf(error)}): its files are shown read-only under a RAM upper`
  }
  return `flash ${volume.description} is full: its files are shown read-only under a RAM upper; 'ovroot reset' returns to the factory state at the next boot, 'ovroot reset PATH...' drops just those paths`
}

/**
 * With [sync] enabled the upper lives in RAM, filled from the flash's copy
 * (the last committed sync); the copy is never a mounted layer, so `ovroot
 * sync` may change it while the root runs.
 */
async function syncedRamUpper(config: Config, mirror: string, state: BootState): Promise<Layers> {
  const { copyUpper } = await import('../upper/copy.js')
  const ram = ramDir(config.boot.run_dir)
  makeDirectory(ram)
  ramVolume(config.flash.ram_size).mount(ram)
  try {
    makeDirectory(`${ram}/upper`)
    copyUpper(mirror, `${ram}/upper`, new OverlayXattrs(namespaceForMount(config.overlay.options)).name('metacopy'))
  } catch (error) {
    // A partial copy must never be the root: it would show files cut short, and a sync would persist them so.
    unmount(ram, { lazy: true })
    degrade(
      state,
      `the flash copy ${mirror} could not be loaded into the RAM upper (tmpfs, size ${config.flash.ram_size}): ${messageOf(error)}; it is shown read-only under a RAM upper and nothing is synced: ${fillFailureAdvice(error)}`,
    )
    protectFlash(config, state)
    return ramUpperOver(config, [mirror, '/'])
  }
  state.sync = { mirror }
  return { lowers: ['/'], upper: `${ram}/upper`, work: `${ram}/work` }
}

/** What the user can do about a RAM fill that failed, by its cause. */
function fillFailureAdvice(error: unknown): string {
  const code = error instanceof OvrootError ? error.code : undefined
  if (code === 'ENOSPC') return "raise [flash] ram_size, or drop files with 'ovroot reset PATH...'"
  if (code === 'EIO')
    return "the flash failed a read: back up what still reads ('ovroot backup') and replace or reformat the flash"
  return "drop the entry named with 'ovroot reset PATH...', or turn [sync] off"
}

/** Try the drivers in order; on any trouble with the flash, fall back to RAM. */
async function mountFlash(config: Config, state: BootState): Promise<Medium> {
  const absent: string[] = []
  for (const name of config.flash.drivers) {
    let found: Volume | { absent: string }
    try {
      found = MEDIA_DRIVER_TABLE[name].find(config)
    } catch (error) {
      // The flash is there but cannot be read: as much trouble as a failed mount.
      degrade(state, `${name} driver: ${messageOf(error)}`)
      return mountVolume(ramVolume(config.flash.ram_size), config, { persistent: false })
    }
    if ('absent' in found) {
      absent.push(`${name}: ${found.absent}`)
      continue
    }
    if (found.driver === 'ram') {
      if (absent.length > 0) degrade(state, `no flash found (${absent.join('; ')})`)
      else state.mode = 'ram'
      return mountVolume(found, config, { persistent: false })
    }
    try {
      return await mountVolume(found, config, { persistent: true })
    } catch (error) {
      degrade(state, messageOf(error))
      tryUnmount(config.overlay.dir)
      return mountVolume(ramVolume(config.flash.ram_size), config, { persistent: false })
    }
  }
  degrade(state, `no flash found (${absent.join('; ')}) and ram is not among [flash] drivers`)
  return mountVolume(ramVolume(config.flash.ram_size), config, { persistent: false })
}

async function mountVolume(volume: Volume, config: Config, { persistent }: { persistent: boolean }): Promise<Medium> {
  const target = config.overlay.dir
  let formatted = false
  const state = volume.inspect()
  if (state === 'unrecognised' && !config.flash.reformat_corrupt) {
    throw new OvrootError(
      'ECORRUPT',
      ExitCode.data,
      `${volume.description} holds data that is not ${volume.filesystem} (corrupt flash?); left untouched: set [flash] reformat_corrupt = yes to erase it`,
    )
  }
  if (state !== 'formatted') {
    await volume.format()
    formatted = persistent
  } else await volume.check?.()
  try {
    volume.mount(target)
  } catch (error) {
    if (!persistent) throw error
    if (!config.flash.reformat_corrupt || formatted) {
      throw new OvrootError(
        'ECORRUPT',
        ExitCode.data,
        `${volume.description} (${volume.filesystem}) does not mount: ${(error as Error).message}; left untouched: set [flash] reformat_corrupt = yes to erase it`,
      )
    }
    await volume.format()
    volume.mount(target)
    formatted = true
  }
  if (persistent) recordFormat(flashLayout(config), volume)
  return { volume, formatted }
}

/**
 * When the flash was formatted, and by what. A full flash that has no record (formatted by an older ovroot, or by
 * fstools) goes without until a boot finds room: it is still the user's flash, shown read-only as any full one.
 */
function recordFormat(layout: FlashLayout, volume: Volume): void {
  if (pathExists(formatRecordPath(layout))) return
  const record: FormatRecord = {
    formatted: new Date().toISOString(),
    by: `ovroot ${VERSION}`,
    filesystem: volume.filesystem,
  }
  try {
    makeDirectory(stateDir(layout))
    writeFileAtomic(formatRecordPath(layout), `${JSON.stringify(record)}\n`)
  } catch (error) {
    if (!(error instanceof OvrootError && error.code === 'ENOSPC')) throw error
  }
}

/** The code that applies a change is loaded only when one is due: most boots have none. */
async function applyPendingChange(config: Config, forcedReset: boolean): Promise<AppliedChange | undefined> {
  const layout = flashLayout(config)
  if (!forcedReset && !hasPendingWork(layout)) return undefined
  const xattrs = new OverlayXattrs(namespaceForMount(config.overlay.options))
  if (forcedReset && readPending(layout)?.kind !== 'reset') {
    const [{ collectKeepPatterns }, { offlineView }] = await Promise.all([
      import('../reset/keep.js'),
      import('../reset/views.js'),
    ])
    const upper = pathExists(upperDir(config)) ? upperDir(config) : '/nonexistent'
    commitPending(layout, {
      kind: 'reset',
      requested: new Date().toISOString(),
      keep: collectKeepPatterns(config, [], offlineView(upper, ['/'], xattrs.namespace)),
    })
  }
  const change = readPending(layout)
  const what = change && describeChange(change)
  if (what) process.stderr.write(`ovroot: applying ${what}\n`)
  const applied = await applyPending(layout, workDir(config), xattrs)
  if (what) process.stderr.write(`ovroot: applied ${what}\n`)
  return applied
}

/**
 * The firmware against the one the flash recorded: equal (nearly every
 * boot) costs one small read of the record and one of the running
 * firmware's identity; only otherwise is the upgrade code loaded, to record
 * it or reconcile the upper with it before the overlay mounts.
 */
async function checkFirmware(config: Config): Promise<BootState['upgrade']> {
  const layout = flashLayout(config)
  const { recorded, unreadable } = firmwareRecordAtBoot(layout)
  const current = await currentIdentity('/')
  if (recorded?.identity === current.identity && recorded.base === 'shipped') return undefined
  const { onFirmware } = await import('../upgrade/boot.js')
  return onFirmware({
    layout,
    lower: '/',
    xattrs: new OverlayXattrs(namespaceForMount(config.overlay.options)),
    preferFirmware: config.upgrade.conflicts === 'firmware',
    recorded,
    ...(unreadable === undefined ? {} : { unreadable }),
    current,
    work: workDir(config),
  })
}

/** Whether the layers' directories exist; false when the flash is too full to create them. */
function prepareLayers(upper: string, work: string): boolean {
  try {
    makeDirectory(upper)
    makeDirectory(work)
    return true
  } catch (error) {
    if (error instanceof OvrootError && error.code === 'ENOSPC') return false
    throw error
  }
}

/** Less free than one NOR erase block: every write would fail soon, and JFFS2 needs room to collect garbage. */
const FULL_BELOW_BYTES = 64 * 1024

function isFull(dir: string): boolean {
  const info = filesystemInfo(dir)
  return info.availableBlocks * info.blockSize < FULL_BELOW_BYTES
}

/**
 * Overlay features that bind an upper to one lower (index, metacopy,
 * redirect_dir, xino, nfs_export) are off unless [overlay] options turns
 * them on: a kernel built with CONFIG_OVERLAY_FS_INDEX=y and friends would
 * otherwise turn them on unasked, and an upgrade's result would rest on
 * them. Options that require another (metacopy=on needs redirects, nfs_export=on
 * needs the index) leave that one to the kernel.
 */
function overlayOptions(extra: string[], lowers: string[], upper: string, work: string): string {
  const options = [`lowerdir=${lowers.join(':')}`, `upperdir=${upper}`, `workdir=${work}`, ...extra]
  const set = (key: string): boolean => options.some((option) => option.startsWith(`${key}=`))
  // A flash upper used as a lower may hold metacopy stubs; a userxattr overlay never has any, and the kernel
  // refuses userxattr with metacopy=on: the mount that shows the user's files read-only would fail.
  if (lowers.length > 1 && !set('metacopy') && !extra.includes('userxattr')) options.push('metacopy=on')
  if (!set('index') && !extra.includes('nfs_export=on')) options.push('index=off')
  if (!set('metacopy')) options.push('metacopy=off')
  // userxattr already means no redirects, and the kernel refuses it with redirect_dir=off (which follows them).
  if (!set('redirect_dir') && !options.includes('metacopy=on') && !extra.includes('userxattr'))
    options.push('redirect_dir=off')
  if (!set('xino')) options.push('xino=off')
  if (!set('nfs_export')) options.push('nfs_export=off')
  return options.join(',')
}

/** The OpenWrt layout: the merged view becomes `/`, the old root `/rom`. */
function pivotInto(flashDir: string): void {
  pivotRoot(STAGING, `${STAGING}/rom`)
  process.chdir('/')
  for (const path of [...MOVED_MOUNTS, flashDir]) mount(`/rom${path}`, path, null, MountFlag.move, null)
}

/**
 * A degraded boot shows the flash read-only so that nothing writes under a
 * layer; a remount that fails (EBUSY, an I/O error) must not end the boot in
 * the failsafe: it is said, and the flash is still used only as a lower.
 */
function protectFlash(config: Config, state: BootState): void {
  try {
    remount(config.overlay.dir, { readOnly: true })
  } catch (error) {
    degrade(state, `the flash could not be remounted read-only: ${messageOf(error)}`)
  }
}

function messageOf(error: unknown): string {
  return error instanceof OvrootError ? error.message : String(error)
}

function degrade(state: BootState, reason: string): void {
  state.mode = 'degraded'
  state.reason = state.reason ? `${state.reason}; ${reason}` : reason
}

function tryUnmount(target: string): void {
  try {
    unmount(target, { lazy: true })
  } catch {
    // Nothing was mounted there.
  }
}

function secondsSinceShimStart(): number | undefined {
  const started = Number(process.env.OVROOT_SHIM_START)
  const now = Number(readTextFile('/proc/uptime').split(' ')[0])
  return Number.isFinite(started) && started > 0 ? Math.round((now - started) * 1000) / 1000 : undefined
}

function announce(state: BootState): void {
  if (state.mode === 'flash') {
    const synced = state.sync ? `, in RAM, synced to ${state.sync.mirror} by ovroot sync` : ''
    process.stderr.write(
      `ovroot: root on ${state.medium?.description} (${state.medium?.filesystem})${synced}${state.formatted ? ', formatted on this first boot' : ''}\n`,
    )
    return
  }
  if (state.mode === 'ram') {
    process.stderr.write('ovroot: root on a RAM overlay, as configured: changes are lost at reboot\n')
    return
  }
  const bar = '*'.repeat(72)
  process.stderr.write(
    `${bar}\novroot: DEGRADED BOOT: ${state.reason}\novroot: the root runs on a RAM upper: changes made now are LOST at reboot.\novroot: run 'ovroot status' for details.\n${bar}\n`,
  )
}
