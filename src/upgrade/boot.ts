/**
 * What boot does when the firmware is not the one the flash recorded
 * (boot/agent.ts loads this only then): record it on a flash that has no
 * record, keep the records taken at boot up to date, or reconcile the upper
 * with the new firmware as one pending change, applied before the overlay
 * mounts.
 */
import { describeFirmware, firmwareIdentity } from '../backup/firmware.js'
import { bytesOf, type BytePath } from '../names.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { applyPending } from '../pending/apply.js'
import { upperPath, type FlashLayout } from '../state/flash.js'
import { statPath } from '../sys/fs.js'
import type { UpgradeClass } from './classify.js'
import type { FirmwareIdentity } from './identity.js'
import { MANIFEST_PATH, openManifest, type ManifestRecord } from './manifest.js'
import { planUpgrade, shadowEntries, stageUpgrade, reportOf } from './reconcile.js'
import {
  baseFiles,
  baseSource,
  openBase,
  type BaseFiles,
  readAbsent,
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
  hidden: string[]
  unknown: string[]
}

export async function onFirmware(context: FirmwareContext): Promise<UpgradeSummary | undefined> {
  const { recorded, current } = context
  if (recorded === undefined) {
    recordFirmware(context)
    return undefined
  }
  if (recorded.identity === current.identity) {
    if (recorded.base === 'recorded') recordFirmware(context)
    return undefined
  }
  if (statPath(upperPath(context.layout))?.type !== 'dir') {
    recordFirmware(context)
    return undefined
  }
  return summary(await reconcile(context, recorded))
}

const rootOf = (lower: string): BytePath => bytesOf(lower === '/' ? '' : lower.replace(/\/+$/, ''))

/** The new firmware's records: its manifest when it ships one, else the tree itself. */
function currentSource(context: Pick<FirmwareContext, 'current' | 'lower'>): {
  source: RecordSource
  /** The shipped manifest's file. */
  shipped: string | undefined
} {
  if (context.current.source === 'manifest') {
    const shipped = `${context.lower === '/' ? '' : context.lower}/${MANIFEST_PATH}`
    return { source: manifestSource(openManifest(shipped)), shipped }
  }
  return { source: treeSource(rootOf(context.lower)), shipped: undefined }
}

function firmwareRecord(context: Pick<FirmwareContext, 'current' | 'lower'>, shipped: boolean): FirmwareRecord {
  return {
    identity: context.current.identity,
    description: describeFirmware(firmwareIdentity([context.lower])),
    base: shipped ? 'shipped' : 'recorded',
    since: new Date().toISOString(),
  }
}

/**
 * The running firmware becomes the flash's: its manifest copied, or (none
 * shipped) its records for every upper entry not yet recorded, taken now
 * while it is still there. Records only grow, so a cut loses nothing.
 */
export function recordFirmware(context: Omit<FirmwareContext, 'preferFirmware' | 'work'>): void {
  const { layout } = context
  const { source, shipped } = currentSource(context)
  if (shipped !== undefined) {
    writeBase(layout, { shipped })
  } else {
    const known = context.recorded?.identity === context.current.identity ? existingBase(layout) : emptyBase()
    takeRecords(context, source, known)
    writeBase(layout, baseFiles(known.records, known.absent))
  }
  if (
    context.recorded?.identity !== context.current.identity ||
    context.recorded.base !== (shipped ? 'shipped' : 'recorded')
  )
    writeFirmwareRecord(layout, firmwareRecord(context, shipped !== undefined))
}

interface KnownRecords {
  records: Map<BytePath, ManifestRecord>
  absent: Set<BytePath>
}

const emptyBase = (): KnownRecords => ({ records: new Map(), absent: new Set() })

function existingBase(layout: FlashLayout): KnownRecords {
  const manifest = openBase(layout)
  if (manifest === undefined) return emptyBase()
  const root = manifest.lookup('.')
  const records = new Map<BytePath, ManifestRecord>([...(root ? [['.', root] as const] : []), ...manifest.below('.')])
  return { records, absent: readAbsent(layout) }
}

/** Records of the firmware for the upper's entries not yet known, and for what whiteouts and opaque directories hide. */
function takeRecords(
  context: Pick<FirmwareContext, 'layout' | 'xattrs'>,
  source: RecordSource,
  known: KnownRecords,
): void {
  const upper = bytesOf(upperPath(context.layout))
  if (statPath(upperPath(context.layout))?.type !== 'dir') return
  const note = (path: BytePath): void => {
    if (known.records.has(path) || known.absent.has(path)) return
    const record = source.lookup(path)
    if (record === 'absent') known.absent.add(path)
    else if (record !== 'unknown') known.records.set(path, record)
  }
  for (const shadow of shadowEntries(upper, context.xattrs)) {
    if (shadow.lowerPath === undefined) continue
    note(shadow.lowerPath)
    if (shadow.dataPath !== undefined) note(shadow.dataPath)
    const hides = shadow.kind !== 'entry' && known.records.get(shadow.lowerPath)?.type === 'd'
    const below = hides ? source.below(shadow.lowerPath) : 'unknown'
    if (below !== 'unknown') for (const [path, record] of below) known.records.set(path, record)
  }
}

/** Plan against the recorded firmware, stage, commit, and apply at once (the overlay is not mounted yet). */
async function reconcile(context: FirmwareContext, recorded: FirmwareRecord): Promise<UpgradeReport | undefined> {
  const { layout, xattrs } = context
  const report = commitUpgrade(context, recorded)
  process.stderr.write(`ovroot: applying the reconcile\n`)
  const applied = await applyPending(layout, context.work, xattrs)
  process.stderr.write(`ovroot: reconciled: ${countsText(report.counts)}\n`)
  return applied?.kind === 'upgrade' ? applied.report : report
}

/** The plan against the recorded firmware, staged and committed (a pending change): nothing in the upper changes yet. */
export function commitUpgrade(context: FirmwareContext, recorded: FirmwareRecord): UpgradeReport {
  const { layout, xattrs } = context
  const upper = bytesOf(upperPath(layout))
  const { source: next, shipped } = currentSource(context)
  const plan = planUpgrade(upper, xattrs, baseSource(layout, recorded), next, {
    preferFirmware: context.preferFirmware,
  })
  const firmware = firmwareRecord(context, shipped !== undefined)
  const report = reportOf(
    plan,
    {
      from: recorded.identity,
      to: firmware.identity,
      fromDescription: recorded.description,
      toDescription: firmware.description,
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
  process.stderr.write(
    `ovroot: firmware changed (${recorded.description} -> ${firmware.description}): reconciling the upper\n`,
  )
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
    hidden: named('hidden'),
    unknown: named('unknown'),
  }
}
