/**
 * `ovroot restore`: verify a backup completely, stage it, and swap it in.
 * On a device the staged upper waits on the flash for the next boot (the
 * pending-change mechanism reset uses); with --upper DIR it is restored into
 * an empty directory at once.
 */
import { tmpdir } from 'node:os'
import { basename, dirname, resolve } from 'node:path'
import { readPassphrase } from '../archive/crypt.js'
import type { BackupHeader } from '../archive/manifest.js'
import { describeFirmware, firmwareIdentity, firmwareView, type LayerView } from '../backup/firmware.js'
import { loadConfig } from '../config/load.js'
import type { Config } from '../config/schema.js'
import { ExitCode, OvrootError, type ExitStatus } from '../errors.js'
import { namespaceForMount, type XattrNamespace } from '../overlay/xattrs.js'
import { confirm, rebootNow } from '../interact.js'
import {
  cancelScheduled,
  readBootRecord,
  refuseLiveLayer,
  withLockIfFlashCopy,
  withWritableFlash,
} from '../pending/device.js'
import { cancelPending, commitPending, describePendingAt } from '../pending/marker.js'
import {
  createDirectoryExclusive,
  filesystemInfo,
  makeTemporaryDirectory,
  listDirectoryIfExists,
  makeDirectory,
  removeTree,
  renamePath,
  spoolToTemporaryFile,
  statPath,
  syncDirectory,
} from '../sys/fs.js'
import type { EntryKind } from '../sys/types.js'
import { extractArchive, reportFlagsNotKept, type ExtractResult } from './extract.js'
import { printRestorePreview } from './preview.js'
import { upperDir, flashLayout, stagedPath } from '../state/flash.js'
import { counted } from '../plural.js'

export interface RestoreOptions {
  configFile: string | undefined
  /** A file, or '-' for standard input. */
  source: string
  upper: string | undefined
  /** The firmware layers of an offline restore (default: [overlay] lower). */
  lowers: string[] | undefined
  dryRun: boolean
  json: boolean
  yes: boolean
  reboot: boolean
  force: boolean
  passphraseFile: string | undefined
  cancel: boolean
}

interface Target {
  /** The upper the archive replaces or lands on (empty for --upper DIR). */
  upper: string
  lowers: string[]
  namespace: XattrNamespace
}

export async function runRestore(options: RestoreOptions): Promise<ExitStatus> {
  const config = loadConfig(options.configFile)
  if (options.cancel) {
    await cancelScheduled(config, readBootRecord(config))
    return ExitCode.ok
  }
  const passphrase = options.passphraseFile === undefined ? undefined : readPassphrase(options.passphraseFile)
  // Standard input is read once into a temporary file: a live restore reads the archive twice.
  const spooled = options.source === '-' ? await spoolToTemporaryFile(process.stdin, tmpdir()) : undefined
  const file = spooled?.path ?? options.source
  try {
    if (statPath(file)?.type !== 'file')
      throw new OvrootError('ENOENT', ExitCode.environment, `backup ${options.source} does not exist or is not a file`)
    const extract = (target: Target, staging: string | undefined, dropIdentity = false): Promise<ExtractResult> =>
      extractArchive(file, {
        ...extractOptions(target, passphrase, staging),
        ...(dropIdentity ? { dropIdentity: target.namespace } : {}),
      })
    return options.upper === undefined
      ? await restoreLive(config, options, extract)
      : await restoreOffline(config, options, extract)
  } finally {
    spooled?.remove()
  }
}

/** `dropIdentity`: stage the entries without their filesystem identity (an upper restored offline, used as it is). */
type Extract = (target: Target, staging: string | undefined, dropIdentity?: boolean) => Promise<ExtractResult>

/** The views are built on first use: a backup restored offline without its firmware needs neither. */
function extractOptions(
  target: Target,
  passphrase: Buffer | undefined,
  staging: string | undefined,
): Parameters<typeof extractArchive>[1] {
  let current: LayerView | undefined
  let firmware: LayerView | undefined
  const running = target.lowers.every((lower) => statPath(lower)?.type === 'dir')
    ? firmwareIdentity(target.lowers)
    : undefined
  return {
    passphrase,
    staging,
    view: (path) => {
      if (!running) return undefined
      current ??= firmwareView(
        target.lowers,
        target.namespace,
        statPath(target.upper)?.type === 'dir' ? target.upper : undefined,
      )
      const entry = current.lookup(path)
      if (!entry) return undefined
      const kind: EntryKind = entry.stat.type === 'socket' ? 'fifo' : entry.stat.type
      return { kind, mode: entry.stat.permissions, uid: entry.stat.uid, gid: entry.stat.gid }
    },
    firmwareSha256: (path) => (firmware ??= firmwareView(target.lowers, target.namespace)).sha256(path),
    checkFirmware: (header) => running !== undefined && header.firmware.digest !== running.digest,
  }
}

/** Refuse a backup of other firmware whose copied-up files that firmware changed too, unless forced. */
function checkConflicts(result: ExtractResult, target: Target, force: boolean): void {
  if (result.conflicts.length === 0 || force || !result.header) return
  const shown = result.conflicts.slice(0, 5).join(' ')
  const more = result.conflicts.length > 5 ? ` and ${result.conflicts.length - 5} more` : ''
  throw new OvrootError(
    'ECONFLICT',
    ExitCode.data,
    `backup of ${describeFirmware(result.header.firmware)}, this device runs ${describeFirmware(firmwareIdentity(target.lowers))}: ${counted(result.conflicts.length, 'file', 'files')} changed by both the user and the new firmware (${shown}${more}); --force restores the user's versions anyway`,
  )
}

async function restoreOffline(config: Config, options: RestoreOptions, extract: Extract): Promise<ExitStatus> {
  const upper = resolve(options.upper ?? '')
  // The flash copy of a sync device: a sync must not stage or apply into it while it is replaced (nor it be found empty, then filled).
  return withLockIfFlashCopy(config, upper, () => restoreInto(upper, config, options, extract))
}

async function restoreInto(
  upper: string,
  config: Config,
  options: RestoreOptions,
  extract: Extract,
): Promise<ExitStatus> {
  if (statPath(upper)?.type !== 'dir')
    throw new OvrootError('ENOENT', ExitCode.environment, `upper directory ${upper} does not exist; create it empty`)
  if (listDirectoryIfExists(upper).length > 0)
    throw new OvrootError(
      'ENOTEMPTY',
      ExitCode.environment,
      `upper directory ${upper} is not empty; --upper restores into an empty directory`,
    )
  refuseLiveLayer(upper)
  const target: Target = {
    upper,
    lowers: options.lowers ?? config.overlay.lower,
    namespace: namespaceForMount(config.overlay.options),
  }
  if (!target.lowers.every((lower) => statPath(lower)?.type === 'dir'))
    process.stderr.write(
      `ovroot: no firmware at ${target.lowers.join(' ')}: the backup is verified, but not compared with a firmware\n`,
    )
  const staging = `${dirname(upper)}/.${basename(upper)}.ovroot-restore`
  // Made here, exclusively: one already there is another restore's (running, or cut off), or not ovroot's at all.
  if (!createDirectoryExclusive(staging))
    throw new OvrootError(
      'EEXIST',
      ExitCode.environment,
      `${staging} already exists: another restore into ${upper} is running, or one was interrupted; remove it once none is running`,
    )
  try {
    // The archive's origin handles and root uuid belong to the filesystem it was taken from (issue 17 item 7).
    const result = await extract(target, staging, true)
    reportFlagsNotKept(result)
    checkConflicts(result, target, options.force)
    if (options.dryRun) {
      const status = printRestorePreview(target, staging, result, options.json)
      removeTree(staging)
      return status
    }
    removeTree(upper)
    renamePath(staging, upper)
    syncDirectory(dirname(upper))
    process.stdout.write(`ovroot: restored ${describeArchive(options.source, result)} into ${upper}\n`)
    return ExitCode.ok
  } catch (error) {
    removeTree(staging)
    throw error
  }
}

async function restoreLive(config: Config, options: RestoreOptions, extract: Extract): Promise<ExitStatus> {
  const record = readBootRecord(config)
  if (!record.flashMounted)
    throw new OvrootError(
      'ENOFLASH',
      ExitCode.environment,
      `the root runs on a RAM upper (mode ${record.state.mode}): there is no flash to restore onto`,
    )
  const target: Target = {
    upper: upperDir(config),
    lowers: config.overlay.lower,
    namespace: namespaceForMount(config.overlay.options),
  }
  const verified = await extract(target, undefined)
  checkConflicts(verified, target, options.force)
  if (options.dryRun) return previewInTemporary(target, extract, options.json)
  const layout = flashLayout(config)
  const info = filesystemInfo(config.overlay.dir)
  const free = info.availableBlocks * info.blockSize
  const needed = withHeadroom(verified.neededBytes)
  if (needed > free) {
    throw new OvrootError(
      'ENOSPC',
      ExitCode.io,
      `not enough room on the flash for the staged restore: it needs about ${mebibytes(needed)} (headroom included), ${config.overlay.dir} has ${mebibytes(free)} free; nothing was written`,
    )
  }
  const what = describeArchive(options.source, verified)
  if (!options.yes)
    await confirm(
      `Restore ${what}: at the next boot the upper is ${verified.kind === 'sysupgrade' ? 'updated with its files' : 'replaced by it'}.`,
    )
  const replaced = describePendingAt(layout)
  await withWritableFlash(config, record, async () => {
    cancelPending(layout)
    makeDirectory(stagedPath(layout), 0o700)
    try {
      // Without the archive's filesystem identity, as offline: clearing it at boot would meet the flags set last (EPERM).
      const staged = await extract(target, stagedPath(layout), true)
      reportFlagsNotKept(staged)
      commitPending(layout, {
        kind: 'restore',
        requested: new Date().toISOString(),
        source: options.source === '-' ? 'standard input' : resolve(options.source),
        entries: staged.entries,
        merge: staged.kind === 'sysupgrade',
      })
    } catch (error) {
      removeTree(stagedPath(layout))
      throw error
    }
  })
  if (replaced) process.stdout.write(`ovroot: replaces ${replaced}\n`)
  process.stdout.write(`ovroot: restore of ${what} scheduled for the next boot\n`)
  if (options.reboot) await rebootNow()
  return ExitCode.ok
}

/** What a live restore would change: the archive is staged in a temporary directory, compared, and removed. */
async function previewInTemporary(target: Target, extract: Extract, json: boolean): Promise<ExitStatus> {
  // A fresh name of its own (mkdtemp), never a predictable one another user could have planted a symlink at.
  const staging = makeTemporaryDirectory(tmpdir(), 'ovroot-restore-preview-')
  try {
    return printRestorePreview(target, staging, await extract(target, staging), json)
  } finally {
    removeTree(staging)
  }
}

function describeArchive(source: string, result: ExtractResult): string {
  const header: BackupHeader | undefined = result.header
  const origin = header
    ? `backup of ${header.host} from ${header.created}`
    : result.kind === 'upper'
      ? "archive of an upper, without ovroot's checksums"
      : 'OpenWrt sysupgrade archive'
  return `${source === '-' ? 'standard input' : source} (${origin}, ${counted(result.entries, 'entry', 'entries')})`
}

/**
 * The estimate plus headroom: a log-structured flash filesystem needs free
 * erase blocks to collect garbage in (JFFS2 keeps 5 of them back from
 * writers, UBIFS its index and journal), and a flash filled to the last block
 * leaves the device unable to write its logs after the swap. 10% more, and
 * 1 MiB on top.
 */
function withHeadroom(bytes: number): number {
  return Math.ceil(bytes * 1.1) + (1 << 20)
}

function mebibytes(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`
}
