/**
 * What boot does when the firmware is not the one the flash recorded
 * (boot/agent.ts loads this only then): record it on a flash that has no
 * record, keep the records taken at boot up to date, or reconcile the upper
 * with the new firmware as one pending change, applied before the overlay
 * mounts.
 */
import { describeFirmware, firmwareIdentity } from '../backup/firmware.js'
import { ExitCode, OvrootError } from '../errors.js'
import { bytesOf, type BytePath } from '../names.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { applyPending } from '../pending/apply.js'
import { dropStaging, readPending } from '../pending/marker.js'
import { upperPath, type FlashLayout } from '../state/flash.js'
import { statPath } from '../sys/fs.js'
import type { UpgradeClass } from './classify.js'
import type { FirmwareIdentity } from './identity.js'
import { MANIFEST_PATH, openManifest, type ManifestRecord } from './manifest.js'
import { planUpgrade, shadowEntries, stageUpgrade, reportOf } from './reconcile.js'
import {
  baseFiles,
  baseSource,
  describeChange,
  describeIdentity,
  openBase,
  type BaseFiles,
  readAbsent,
  readFirmwareRecord,
  writeBase,
  writeFirmwareRecord,
  type FirmwareRecord,
  type UpgradeReport,
} from './record.js'
import { manifestSource, treeSource, type RecordSource } from './sources.js'

export interface FirmwareContext {
  layout: FlashLayout
  /** The running firmware's lower ('/' at boot). */
  lower: string
  xattrs: OverlayXattrs
  preferFirmware: boolean
  recorded: FirmwareRecord | undefined
  /** The flash's firmware record is there but unreadable: why (the firmware it names is then unknown). */
  unreadable?: string
  current: FirmwareIdentity
  /** The overlay's work directory: its index goes with an upgrade. */
  work: string
}

/** What status shows of an upgrade made at this boot. */
export interface UpgradeSummary {
  from: string
  to: string
  counts: Record<UpgradeClass, number>
  /** Conflicts, by shown path. */
  conflicts: string[]
  /** The conflicts whose firmware version won (`[upgrade] conflicts = firmware`): the user's saved. */
  firmwareWon: string[]
  hidden: string[]
  unknown: string[]
  /** Damaged records the reconcile worked around. */
  problems: string[]
}

/** A reconcile at boot that did not finish: the boot shows the firmware only and says this. */
export interface UpgradeFailure {
  from: string
  to: string
  /** Whether the reconcile was committed (its apply failed: the next boot finishes it) or not (nothing changed). */
  committed: boolean
  cause: string
  advice: string
}

export class UpgradeFailed extends OvrootError {
  constructor(readonly failure: UpgradeFailure) {
    super(
      'EUPGRADE',
      ExitCode.io,
      `the upper could not be reconciled with the new firmware (${failure.from} -> ${failure.to}): ${failure.cause}; ${failure.advice}`,
    )
  }
}

export async function onFirmware(context: FirmwareContext): Promise<UpgradeSummary | undefined> {
  const { current } = context
  const recorded = context.unreadable === undefined ? context.recorded : UNKNOWN_FIRMWARE
  if (recorded === undefined) {
    recordFirmwareIfRoom(context)
    return undefined
  }
  if (recorded.identity === current.identity) {
    if (recorded.base === 'recorded') recordFirmwareIfRoom(context)
    return undefined
  }
  if (statPath(upperPath(context.layout))?.type !== 'dir') {
    recordFirmwareIfRoom(context)
    return undefined
  }
  return summary(await reconcile(context, recorded))
}

/**
 * What a damaged firmware record stands for: some firmware, none known. Its
 * records (base.manifest) are still used, as records taken at boot: a path
 * they do not name is unknown, not absent.
 */
const UNKNOWN_FIRMWARE: FirmwareRecord = {
  identity: 'unknown',
  description: 'an unknown firmware',
  base: 'recorded',
  since: '',
}

const rootOf = (lower: string): BytePath => bytesOf(lower === '/' ? '' : lower.replace(/\/+$/, ''))

/**
 * The new firmware's records: its manifest when it ships one, else the tree
 * itself, which is also what a damaged manifest gives way to (the firmware
 * is right there), the damage added to `problems`.
 */
function currentSource(
  context: Pick<FirmwareContext, 'current' | 'lower'>,
  problems: string[],
): {
  source: RecordSource
  /** The shipped manifest's file. */
  shipped: string | undefined
} {
  if (context.current.source === 'manifest') {
    const shipped = `${context.lower === '/' ? '' : context.lower}/${MANIFEST_PATH}`
    try {
      return { source: manifestSource(openManifest(shipped)), shipped }
    } catch (error) {
      if (!(error instanceof OvrootError && error.code === 'EMANIFEST')) throw error
      problems.push(`${error.message}: the running firmware's records are read from its files instead`)
    }
  }
  return { source: treeSource(rootOf(context.lower)), shipped: undefined }
}

/**
 * A firmware for people: its release files' name (`OpenWrt 23.05.3 r23809`),
 * else its identity's kind and first digits (`firmware manifest 89dd3d9b3d23`):
 * without release files their digest is that of nothing, the same for every firmware.
 */
export function describeRunning(lower: string, identity: string): string {
  const firmware = firmwareIdentity([lower])
  const name = describeFirmware(firmware)
  return name === describeFirmware({ release: {}, digest: firmware.digest }) ? describeIdentity(identity) : name
}

function firmwareRecord(context: Pick<FirmwareContext, 'current' | 'lower'>, shipped: boolean): FirmwareRecord {
  return {
    identity: context.current.identity,
    description: describeRunning(context.lower, context.current.identity),
    base: shipped ? 'shipped' : 'recorded',
    since: new Date().toISOString(),
  }
}

/**
 * The running firmware becomes the flash's: its manifest copied, or (none
 * shipped) its records for every upper entry not yet recorded, taken now
 * while it is still there. Records only grow, so a cut loses nothing.
 */
/**
 * Recording the running firmware, with no upper to reconcile, can wait for a boot with room: on a full flash it
 * would end the boot on the firmware alone, the user's files hidden, where a full flash shows them read-only.
 * Until then the record stays as it was, and the next boot with room records this firmware.
 */
function recordFirmwareIfRoom(context: FirmwareContext): void {
  try {
    recordFirmware(context)
  } catch (error) {
    if (!(error instanceof OvrootError && error.code === 'ENOSPC')) throw error
  }
}

export function recordFirmware(
  context: Omit<FirmwareContext, 'preferFirmware' | 'work'> & {
    /** The running system's upper (`upgrade-check`): entries may vanish while it is read. */
    live?: boolean
  },
): void {
  const { layout } = context
  const problems: string[] = []
  const { source, shipped } = currentSource(context, problems)
  if (shipped !== undefined) {
    writeBase(layout, { shipped })
  } else {
    const existing =
      context.recorded?.identity === context.current.identity ? existingBase(layout, problems) : undefined
    const known = existing ?? emptyBase()
    // Written only when it changes: a boot on the same firmware with nothing new to record writes no flash.
    if (takeRecords(context, source, known, context.live) || existing === undefined)
      writeBase(layout, baseFiles(known.records, known.absent))
  }
  if (
    context.recorded?.identity !== context.current.identity ||
    context.recorded.base !== (shipped ? 'shipped' : 'recorded')
  )
    writeFirmwareRecord(layout, firmwareRecord(context, shipped !== undefined))
  for (const problem of problems) process.stderr.write(`ovroot: ${problem}\n`)
}

interface KnownRecords {
  records: Map<BytePath, ManifestRecord>
  absent: Set<BytePath>
}

const emptyBase = (): KnownRecords => ({ records: new Map(), absent: new Set() })

/** The records taken so far; none when missing or damaged (taken again: the firmware they describe is the one running). */
function existingBase(layout: FlashLayout, problems: string[]): KnownRecords | undefined {
  const manifest = openBase(layout, problems, "the running firmware's records are taken again")
  if (manifest === undefined) return undefined
  const root = manifest.lookup('.')
  const records = new Map<BytePath, ManifestRecord>([...(root ? [['.', root] as const] : []), ...manifest.below('.')])
  return { records, absent: readAbsent(layout) }
}

/**
 * Records of the firmware for the upper's entries not yet known, and for what whiteouts and opaque
 * directories hide; whether any was added.
 */
function takeRecords(
  context: Pick<FirmwareContext, 'layout' | 'xattrs'>,
  source: RecordSource,
  known: KnownRecords,
  live = false,
): boolean {
  const upper = bytesOf(upperPath(context.layout))
  if (statPath(upperPath(context.layout))?.type !== 'dir') return false
  let added = false
  const note = (path: BytePath): void => {
    if (known.records.has(path) || known.absent.has(path)) return
    const record = source.lookup(path)
    if (record === 'absent') known.absent.add(path)
    else if (record !== 'unknown') known.records.set(path, record)
    added ||= record !== 'unknown'
  }
  for (const shadow of shadowEntries(upper, context.xattrs, live)) {
    if (shadow.lowerPath === undefined) continue
    note(shadow.lowerPath)
    if (shadow.dataPath !== undefined) note(shadow.dataPath)
    const hides = shadow.kind !== 'entry' && known.records.get(shadow.lowerPath)?.type === 'd'
    const below = hides ? source.below(shadow.lowerPath) : 'unknown'
    if (below !== 'unknown')
      for (const [path, record] of below) {
        added ||= !known.records.has(path)
        known.records.set(path, record)
      }
  }
  return added
}

/**
 * Plan against the recorded firmware, stage, commit, and apply at once (the
 * overlay is not mounted yet). A failure is an UpgradeFailed: before the
 * commit nothing changed (the staging is dropped), after it the next boot
 * finishes the apply.
 */
async function reconcile(context: FirmwareContext, recorded: FirmwareRecord): Promise<UpgradeReport | undefined> {
  const { layout, xattrs } = context
  const named = describeChange(recorded, {
    identity: context.current.identity,
    description: describeRunning(context.lower, context.current.identity),
  })
  let report: UpgradeReport
  try {
    report = commitUpgrade(context, recorded)
  } catch (error) {
    dropStagingIfPossible(layout)
    throw new UpgradeFailed(uncommittedFailure(named.from, named.to, error))
  }
  process.stderr.write(`ovroot: applying the reconcile\n`)
  let applied
  try {
    applied = await applyPending(layout, context.work, xattrs)
  } catch (error) {
    throw new UpgradeFailed(committedFailure(named.from, named.to, error))
  }
  process.stderr.write(`ovroot: reconciled: ${countsText(report.counts)}\n`)
  return applied?.kind === 'upgrade' ? applied.report : report
}

const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error))

function uncommittedFailure(from: string, to: string, error: unknown): UpgradeFailure {
  return {
    from,
    to,
    committed: false,
    cause: messageOf(error),
    advice: `nothing on the flash changed and the root shows the firmware only; the reconcile runs again at the next boot (on a full flash, free room first: 'ovroot reset PATH...' drops the files that filled it, 'ovroot reset' returns to the factory state); booting ${from} again uses the flash as it was`,
  }
}

function committedFailure(from: string, to: string, error: unknown): UpgradeFailure {
  return {
    from,
    to,
    committed: true,
    cause: `the reconcile was committed but its apply failed: ${messageOf(error)}`,
    advice: `the root shows the firmware only; the next boot finishes the apply (each step of it is made once); if it fails again the flash needs checking, or 'ovroot reset' returns to the factory state`,
  }
}

/** A failed staging's room back at once (the next boot drops it anyway). */
function dropStagingIfPossible(layout: FlashLayout): void {
  try {
    dropStaging(layout)
  } catch {
    // The flash failing a removal: the next boot's applyPending drops it.
  }
}

/**
 * Why a boot's change failed, when it was an upgrade's reconcile: the error
 * of this boot's reconcile, or a committed reconcile whose apply this boot
 * reran (undefined for any other change).
 */
export function upgradeFailureOf(layout: FlashLayout, error: unknown): UpgradeFailure | undefined {
  if (error instanceof UpgradeFailed) return error.failure
  let change
  try {
    change = readPending(layout)
  } catch {
    return undefined
  }
  if (change?.kind !== 'upgrade') return undefined
  let from = change.from
  try {
    from = readFirmwareRecord(layout)?.description ?? from
  } catch {
    // The identity in the marker stands in for a damaged record.
  }
  return committedFailure(from, change.firmware.description, error)
}

/** The plan against the recorded firmware, staged and committed (a pending change): nothing in the upper changes yet. */
export function commitUpgrade(context: FirmwareContext, recorded: FirmwareRecord): UpgradeReport {
  const { layout, xattrs } = context
  const upper = bytesOf(upperPath(layout))
  const problems = context.unreadable === undefined ? [] : [context.unreadable]
  const { source: next, shipped } = currentSource(context, problems)
  const plan = planUpgrade(upper, xattrs, baseSource(layout, recorded, problems), next, {
    preferFirmware: context.preferFirmware,
  })
  const firmware = firmwareRecord(context, shipped !== undefined)
  const named = describeChange(recorded, firmware)
  const report = reportOf(
    plan,
    {
      from: recorded.identity,
      to: firmware.identity,
      fromDescription: named.from,
      toDescription: named.to,
      ...(problems.length ? { problems } : {}),
    },
    layout,
  )
  let base: BaseFiles
  if (shipped !== undefined) base = { shipped }
  else {
    const known = emptyBase()
    for (const item of plan.entries)
      if (item.verdict.action !== 'drop' && item.lowerPath !== undefined) {
        const record = next.lookup(item.lowerPath)
        if (record === 'absent') known.absent.add(item.lowerPath)
        else if (record !== 'unknown') known.records.set(item.lowerPath, record)
      }
    base = baseFiles(known.records, known.absent)
  }
  process.stderr.write(`ovroot: firmware changed (${named.from} -> ${named.to}): reconciling the upper\n`)
  stageUpgrade(plan, { layout, newRoot: rootOf(context.lower), xattrs, report, firmware, base })
  return report
}

export function countsText(counts: Record<UpgradeClass, number>): string {
  const shown = Object.entries(counts).filter(([, count]) => count > 0)
  return shown.length ? shown.map(([name, count]) => `${count} ${name}`).join(', ') : 'nothing to change'
}

export function summary(report: UpgradeReport | undefined): UpgradeSummary | undefined {
  if (!report) return undefined
  const named = (what: UpgradeClass): string[] =>
    report.entries.filter((entry) => entry.class === what).map((entry) => entry.path)
  return {
    from: report.fromDescription,
    to: report.toDescription,
    counts: report.counts,
    conflicts: named('conflict'),
    firmwareWon: report.entries.filter((entry) => entry.firmwareWon).map((entry) => entry.path),
    hidden: named('hidden'),
    unknown: named('unknown'),
    problems: report.problems ?? [],
  }
}
