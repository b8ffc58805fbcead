/**
 * What the flash knows about firmware (state/flash.ts lists the files): which
 * firmware the upper was written against, that firmware's records for the
 * paths the upper shadows, and the last upgrade's report.
 */
import { ExitCode, OvrootError } from '../errors.js'
import { bytesOf, parseShownName, showBytes, type BytePath } from '../names.js'
import {
  baseAbsentPath,
  baseManifestPath,
  firmwareRecordPath,
  stateDir,
  upgradeDir,
  type FlashLayout,
} from '../state/flash.js'
import {
  copyFileAtomic,
  makeDirectory,
  pathExists,
  readTextFileIfExists,
  removeFile,
  writeFileAtomic,
} from '../sys/fs.js'
import type { UpgradeClass } from './classify.js'
import { manifestText, openManifest, type Manifest, type ManifestRecord } from './manifest.js'
import { manifestSource, type RecordSource } from './sources.js'

export interface FirmwareRecord {
  /** upgrade/identity.ts */
  identity: string
  /** For people: `OpenWrt 23.05.3 r23809`. */
  description: string
  /** `shipped`: base.manifest is the firmware's own manifest (complete); `recorded`: taken at boot, path by path. */
  base: 'shipped' | 'recorded'
  /** ISO time it was recorded. */
  since: string
}

/**
 * The lean path of every boot: one small read. A damaged record (the flash
 * corrupted it) is said in one line and stands for a firmware known to no
 * one: the boot reconciles against the base records it has (safe even when
 * the firmware did not change: O=N keeps every change of the user's) and
 * records the running firmware again, rather than failing every boot.
 */
export function readFirmwareRecord(layout: FlashLayout): FirmwareRecord | undefined {
  const text = readTextFileIfExists(firmwareRecordPath(layout))
  if (text === undefined) return undefined
  try {
    const record = JSON.parse(text) as Partial<FirmwareRecord>
    if (typeof record.identity === 'string' && (record.base === 'shipped' || record.base === 'recorded'))
      return {
        ...(record as FirmwareRecord),
        // An older ovroot named a firmware without release files by the digest of no files: its identity says more.
        ...(record.description === NO_RELEASE_FILES ? { description: describeIdentity(record.identity) } : {}),
      }
  } catch {
    // reported below
  }
  throw new OvrootError(
    'EFIRMWARE',
    ExitCode.data,
    `${firmwareRecordPath(layout)}: unreadable firmware record; expected the JSON ovroot boot writes`,
  )
}

const NO_RELEASE_FILES = 'firmware e3b0c44298fc'

/** `firmware manifest 89dd3d9b3d23` for `manifest:89dd...`: a firmware without release files, for people. */
export const describeIdentity = (identity: string): string => `firmware ${shortIdentity(identity)}`

function shortIdentity(identity: string): string {
  const [kind, hex] = identity.split(':')
  return hex === undefined ? identity : `${kind} ${hex.slice(0, 12)}`
}

type Described = Pick<FirmwareRecord, 'identity' | 'description'>

/** Two firmwares of one name (an image rebuilt with the same release files) told apart by their identities. */
export function describeChange(from: Described, to: Described): { from: string; to: string } {
  if (from.description !== to.description) return { from: from.description, to: to.description }
  return {
    from: `${from.description} (${shortIdentity(from.identity)})`,
    to: `${to.description} (${shortIdentity(to.identity)})`,
  }
}

/** The record as a boot takes it: a damaged one is no reason to stop (the reconcile takes its firmware as unknown, and says why). */
export function firmwareRecordAtBoot(layout: FlashLayout): { recorded?: FirmwareRecord; unreadable?: string } {
  try {
    return { recorded: readFirmwareRecord(layout) }
  } catch (error) {
    if (!(error instanceof OvrootError && error.code === 'EFIRMWARE')) throw error
    return { unreadable: error.message }
  }
}

export function writeFirmwareRecord(layout: FlashLayout, record: FirmwareRecord): void {
  writeFileAtomic(firmwareRecordPath(layout), `${JSON.stringify(record)}\n`)
}

const UNKNOWN: RecordSource = { lookup: () => 'unknown', below: () => 'unknown' }

/**
 * The recorded firmware's records (O), as the reconcile reads them. Damaged
 * records are no reason to stop a boot: every entry's old side is then
 * unknown (kept as the user's, reported), and the damage is added to `problems`.
 */
export function baseSource(layout: FlashLayout, record: FirmwareRecord, problems: string[]): RecordSource {
  const manifest = openBase(
    layout,
    problems,
    "the old firmware's records are unknown, every entry is treated as the user's",
  )
  if (manifest === undefined) return UNKNOWN
  return manifestSource(manifest, record.base === 'shipped' ? undefined : readAbsent(layout))
}

/** The flash's base.manifest, when there is one that opens; a damaged one is added to `problems`, with what follows from it. */
export function openBase(layout: FlashLayout, problems: string[], consequence: string): Manifest | undefined {
  if (!pathExists(baseManifestPath(layout))) return undefined
  try {
    return openManifest(baseManifestPath(layout))
  } catch (error) {
    if (!(error instanceof OvrootError && error.code === 'EMANIFEST')) throw error
    problems.push(`${error.message}: ${consequence}`)
    return undefined
  }
}

/** Paths the recorded firmware did not have (records taken at boot). */
export function readAbsent(layout: FlashLayout): Set<BytePath> {
  const absent = new Set<BytePath>()
  for (const line of (readTextFileIfExists(baseAbsentPath(layout)) ?? '').split('\n')) {
    const path = line && parseShownName(line)
    if (path) absent.add(path)
  }
  return absent
}

/** What base.manifest (and base.absent) become: the firmware's shipped manifest, copied from its file, or records taken at boot. */
export type BaseFiles = { shipped: string } | { manifest: string; absent: string }

/** What base.manifest and base.absent hold for records taken at boot. */
export function baseFiles(records: ReadonlyMap<BytePath, ManifestRecord>, absent: ReadonlySet<BytePath>): BaseFiles {
  return {
    manifest: manifestText(records),
    absent: [...absent]
      .sort()
      .map((path) => `${showBytes(path)}\n`)
      .join(''),
  }
}

/** Base files written in place (never during an upgrade: that stages them). */
export function writeBase(layout: FlashLayout, files: BaseFiles): void {
  makeDirectory(stateDir(layout))
  writeBaseFiles(files, baseManifestPath(layout), baseAbsentPath(layout))
  if ('shipped' in files) removeFile(baseAbsentPath(layout))
}

/** The base files at these paths (a shipped manifest has no absent list: that file is left alone). */
export function writeBaseFiles(files: BaseFiles, manifest: string, absent: string): void {
  if ('shipped' in files) return copyFileAtomic(files.shipped, manifest)
  writeFileAtomic(manifest, files.manifest)
  writeFileAtomic(absent, files.absent)
}

/** One entry the report names: a conflict, a hidden change, an entry whose old side is unknown. */
export interface ReportedEntry {
  /** Shown form (names.ts), with a leading slash. */
  path: string
  /** The path as bytes, for the tools that open it (`diff --conflicts`). */
  bytes: BytePath
  class: UpgradeClass
  reason?: string
  /** The old firmware's sha256 of a file, when known. */
  base?: string
  /** Where the old firmware's bytes were saved (by `upgrade-check`), relative to the flash's .ovroot/upgrade. */
  savedBase?: string
  /** Where the user's copy was saved when the firmware's version won. */
  savedUser?: string
  /** A conflict `[upgrade] conflicts = firmware` gave to the firmware (a directory: N's metadata, its contents kept). */
  firmwareWon?: true
}

/** What an upgrade did (and `upgrade-check` predicts): written to .ovroot/upgrade/report.json. */
export interface UpgradeReport {
  from: string
  to: string
  fromDescription: string
  toDescription: string
  counts: Record<UpgradeClass, number>
  /** Conflicts, hidden and unknown entries, in path order. */
  entries: ReportedEntry[]
  /** Damaged records the reconcile worked around (an unreadable firmware record or manifest). */
  problems?: string[]
}

export const reportPath = (layout: FlashLayout): string => `${upgradeDir(layout)}/report.json`
/** Saved bytes, by the path's bytes below a directory of .ovroot/upgrade. */
export const savedPath = (layout: FlashLayout, kind: 'base' | 'user', path: BytePath): BytePath =>
  `${bytesOf(upgradeDir(layout))}/${kind}/${path}`

export function readUpgradeReport(layout: FlashLayout): UpgradeReport | undefined {
  const text = readTextFileIfExists(reportPath(layout))
  return text === undefined ? undefined : (JSON.parse(text) as UpgradeReport)
}
