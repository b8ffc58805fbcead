/** `ovroot status`: the boot record from /run joined with what is live now. */
import { loadConfig } from '../config/load.js'
import { flashMounted, readBootState, type BootState } from '../state/boot-record.js'
import { ExitCode, type ExitStatus } from '../errors.js'
import { describePendingAt } from '../pending/marker.js'
import { filesystemInfo, readTextFileIfExists } from '../sys/fs.js'
import { currentStats, type SyncStats } from '../sync/stats.js'
import type { Config } from '../config/schema.js'
import { flashLayout } from '../state/flash.js'
import { counted } from '../plural.js'

interface Usage {
  usedBytes: number
  totalBytes: number
  freeBytes: number
}

interface SyncStatus extends SyncStats {
  /** Bytes a day automatic syncs may write; 0: no limit. */
  budget: number
  ramUsage: Usage
  /** The RAM upper is filling up: what happens next, in words. */
  warning?: string
}

interface Status extends BootState {
  rootMount?: string
  usage?: Usage
  pending: string[]
  syncing?: SyncStatus
}

export function showStatus(configFile: string | undefined, json: boolean): ExitStatus {
  const config = loadConfig(configFile)
  const state = readBootState(
    config.boot.run_dir,
    '; ovroot boot did not run this boot (is init=/sbin/ovroot-init on the kernel command line?)',
  )
  const status: Status = { ...state, pending: [] }
  status.rootMount = rootMountOptions()
  const onFlash = flashMounted(state)
  if (onFlash || state.mode === 'ram') {
    status.usage = usageOf(config.overlay.dir)
  }
  if (onFlash) {
    const pending = describePendingAt(flashLayout(config))
    if (pending) status.pending.push(pending)
  }
  if (state.sync && state.overlay) status.syncing = syncStatus(config, state.overlay.upper)
  process.stdout.write(json ? `${JSON.stringify(status)}\n` : render(status))
  return ExitCode.ok
}

function usageOf(path: string): Usage {
  const info = filesystemInfo(path)
  return {
    totalBytes: info.blocks * info.blockSize,
    freeBytes: info.availableBlocks * info.blockSize,
    usedBytes: (info.blocks - info.freeBlocks) * info.blockSize,
  }
}

function syncStatus(config: Config, ramUpper: string): SyncStatus {
  const ramUsage = usageOf(ramUpper)
  const full = ramUsage.usedBytes / Math.max(1, ramUsage.totalBytes)
  return {
    ...currentStats(config.boot.run_dir),
    budget: config.sync.budget,
    ramUsage,
    ...(full >= 0.9
      ? {
          warning: `the RAM upper is ${Math.round(full * 100)}% full: writes will soon fail; raise [flash] ram_size or delete files`,
        }
      : {}),
  }
}

function rootMountOptions(): string | undefined {
  const lines = (readTextFileIfExists('/proc/mounts') ?? '').split('\n').filter((line) => line.split(' ')[1] === '/')
  const root = lines.pop()
  return root ? `${root.split(' ')[2]} ${root.split(' ')[3]}` : undefined
}

const MODE_TEXT: Record<BootState['mode'], string> = {
  flash: 'flash: changes persist',
  ram: 'ram: RAM upper as configured, changes are lost at reboot',
  degraded: 'DEGRADED: RAM upper instead of flash, changes are lost at reboot',
  failsafe: 'FAILSAFE: ovroot boot failed, the shim booted a RAM upper',
  readonly: 'READ-ONLY: no overlay could be mounted, the firmware runs read-only',
}

function syncRows(status: Status): [string, string | undefined][] {
  const sync = status.syncing
  if (!sync) return []
  const budget = sync.budget > 0 ? ` of a ${mebibytes(sync.budget)} budget` : ''
  const watcher =
    sync.watcher === 'gone'
      ? `gone: the daemon (pid ${sync.daemon?.pid}) ended without stopping (killed: SIGKILL, the OOM killer?); changes wait for ovroot sync or shutdown`
      : (sync.watcher ?? 'not running')
  return [
    ['sync', `RAM upper, persisted to ${status.sync?.mirror} by ovroot sync; watcher ${watcher}`],
    [
      'last sync',
      sync.lastSync
        ? `${sync.lastSync}, ${counted(sync.lastEntries ?? 0, 'entry', 'entries')}, ${mebibytes(sync.lastBytes ?? 0)}`
        : 'none since boot',
    ],
    ['unsynced', sync.pendingSince ? `changes since ${sync.pendingSince}` : 'nothing'],
    ['written', `${mebibytes(sync.bytesToday)} today${budget}`],
    ['waiting', sync.waiting],
    ['failing', sync.failing],
    [
      'RAM upper',
      `${mebibytes(sync.ramUsage.usedBytes)} used of ${mebibytes(sync.ramUsage.totalBytes)}${sync.warning ? `: ${sync.warning}` : ''}`,
    ],
  ]
}

/** The firmware change of this boot: A -> B, the count of each class, and every entry that needs a person. */
function upgradeRows(upgrade: BootState['upgrade']): [string, string | undefined][] {
  if (!upgrade) return []
  const counts = Object.entries(upgrade.counts)
    .filter(([, count]) => count > 0)
    .map(([name, count]) => `${count} ${name}`)
    .join(', ')
  const named = (paths: string[]): string | undefined => (paths.length ? paths.join(' ') : undefined)
  const won = upgrade.firmwareWon ?? []
  const winner =
    won.length === 0
      ? ''
      : won.length === upgrade.conflicts.length
        ? 'the firmware’s versions won, the user’s saved: '
        : `the firmware’s won for ${won.join(' ')}, the user’s saved: `
  return [
    ['upgrade', `${firmwareText(upgrade.from)} -> ${upgrade.to} at this boot: ${counts || 'nothing to reconcile'}`],
    ['conflicts', named(upgrade.conflicts) && `${named(upgrade.conflicts)} (${winner}ovroot diff --conflicts)`],
    ['hidden', named(upgrade.hidden)],
    ['unknown', named(upgrade.unknown)],
    ['problems', upgrade.problems?.length ? upgrade.problems.join('; ') : undefined],
  ]
}

/** `firmware OpenWrt 24.10.0`; a firmware without release files is named `firmware manifest 89dd3d9b3d23` already. */
const firmwareText = (description: string): string =>
  description.startsWith('firmware ') ? description : `firmware ${description}`

/** A reconcile that failed at this boot: what failed and what to do. */
function upgradeFailedRows(failed: BootState['upgradeFailed']): [string, string | undefined][] {
  if (!failed) return []
  return [
    ['upgrade', `FAILED: ${firmwareText(failed.from)} -> ${failed.to}: ${failed.cause}`],
    ['what to do', failed.advice],
  ]
}

function mebibytes(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`
}

function render(status: Status): string {
  const rows: [string, string | undefined][] = [
    ['mode', MODE_TEXT[status.mode]],
    ['reason', status.reason],
    [
      'medium',
      status.medium &&
        `${status.medium.description}, ${status.medium.filesystem}${status.formatted ? ' (formatted at this boot)' : ''}`,
    ],
    ['device', status.medium?.device],
    ['root mount', status.rootMount],
    ['upper', status.overlay?.upper],
    ['lowers', status.overlay?.lowers.join(' ')],
    [
      'usage',
      status.usage &&
        `${mebibytes(status.usage.usedBytes)} used of ${mebibytes(status.usage.totalBytes)}, ${mebibytes(status.usage.freeBytes)} free`,
    ],
    [
      'reset',
      status.reset &&
        `carried out at this boot, kept ${status.reset.kept.length ? status.reset.kept.join(' ') : 'nothing'}`,
    ],
    [
      'restored',
      status.restored &&
        `${status.restored.source} (${counted(status.restored.entries, 'entry', 'entries')}) at this boot`,
    ],
    ...upgradeRows(status.upgrade),
    ...upgradeFailedRows(status.upgradeFailed),
    ['pending', status.pending.length ? status.pending.join('; ') : 'nothing'],
    ...syncRows(status),
    [
      'boot took',
      status.bootSeconds !== undefined ? `${status.bootSeconds.toFixed(2)} s (shim start to overlay root)` : undefined,
    ],
    ['booted at', status.bootedAt],
  ]
  return rows
    .filter((row): row is [string, string] => row[1] !== undefined)
    .map(([label, value]) => `${`${label}:`.padEnd(12)}${value}\n`)
    .join('')
}
