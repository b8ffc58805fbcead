/**
 * What an upgrade does with one upper entry, from three sides: U (the upper
 * entry), O (what the old firmware held at its path), N (what the new one
 * holds). Pure: the reconcile (boot), `upgrade-check` (before flashing) and
 * restore's firmware check all decide through here, so they cannot disagree.
 *
 * - own: no O; U kept.
 * - kept: the user changed it, the firmware did not (U≠O, N=O); U kept.
 * - converged: U=N; the copy goes (the lower shows the same).
 * - stale: U=O in content, N≠O: the copy goes; a metadata change the user
 *   made (mode, owner, xattrs) is kept on top of N's data (`refresh`).
 * - gone: U=O in content, N absent: the copy goes.
 * - conflict: U≠O, N≠O, U≠N: the user's kept unless `[upgrade] conflicts = firmware`.
 * - hidden: a whiteout or opaque directory over something N changed or added: kept, reported.
 * - unknown: O not known: treated as the user's (kept), reported.
 *
 * A directory is a container: "drop" means it goes once nothing below it
 * stays (the reconcile decides that), and "refresh" gives it the merged
 * metadata. mtime is not compared: a `touch` is no change of the user's.
 */
import { sameContent, sameRecord, type ManifestRecord } from './manifest.js'

export const UPGRADE_CLASSES = ['own', 'kept', 'converged', 'stale', 'gone', 'conflict', 'hidden', 'unknown'] as const
export type UpgradeClass = (typeof UPGRADE_CLASSES)[number]

/** O: a record, `absent` (the old firmware had nothing there) or `unknown` (nothing recorded). */
export type OldSide = ManifestRecord | 'absent' | 'unknown'

export type UpperSide =
  | { kind: 'entry'; record: ManifestRecord }
  | { kind: 'whiteout' }
  /** A directory marked opaque: the user replaced what the firmware had there. */
  | { kind: 'opaque'; record: ManifestRecord }

export interface Sides {
  upper: UpperSide
  old: OldSide
  /** N: undefined when the new firmware has nothing there. */
  new: ManifestRecord | undefined
  /** For a whiteout or opaque directory: what is below the path differs between O and N. */
  belowChanged?: boolean
  /** A renamed directory (redirect): the user's rename, never a copy to drop. */
  redirected?: boolean
  /** For a renamed directory: the directory it shows was in O and is not a directory in N. */
  redirectLost?: boolean
  /** A file the user renamed (a redirect; `old` and `new` are at the path it was renamed from). */
  renamed?: boolean
  /** A metacopy stub: U's data is whatever the lower has at its data path. */
  stub?: boolean
  /** `[upgrade] conflicts = firmware`. */
  preferFirmware?: boolean
}

export interface Metadata {
  mode: number
  uid: number
  gid: number
  /** Whose xattrs: the user's (U's) or the new firmware's (N's). */
  xattrs: 'user' | 'firmware'
}

export type Verdict =
  | { class: UpgradeClass; action: 'keep' | 'drop'; reason?: string }
  /** N's data (a directory: N's entry) with this metadata. */
  | { class: UpgradeClass; action: 'refresh'; metadata: Metadata }

const keep = (what: UpgradeClass, reason?: string): Verdict => ({
  class: what,
  action: 'keep',
  ...(reason ? { reason } : {}),
})
const drop = (what: UpgradeClass): Verdict => ({ class: what, action: 'drop' })

export function classify(sides: Sides): Verdict {
  const { upper, old, new: next } = sides
  if (old === 'unknown') return keep('unknown')
  if (upper.kind === 'whiteout') {
    if (next === undefined) return old === 'absent' ? keep('own') : drop('converged')
    if (old === 'absent' || !sameRecord(old, next) || sides.belowChanged) return keep('hidden')
    return keep('kept')
  }
  if (upper.kind === 'opaque') {
    if (next === undefined || old === 'absent') return keep('own')
    return !sameRecord(old, next) || sides.belowChanged ? keep('hidden') : keep('kept')
  }
  const u = upper.record
  if (sides.redirectLost)
    return keep('conflict', 'renamed from a directory the new firmware no longer has: its firmware contents are gone')
  if (sides.redirected) return keep('kept')
  if (sides.renamed) return renamedFile(sides, u, old)
  if (next !== undefined && sameRecord(u, next)) return drop('converged')
  if (old === 'absent') return next === undefined ? keep('own') : conflict(sides, u, next)
  if (next !== undefined && sameRecord(old, next)) return keep('kept')
  if (!sameContent(u, old)) return conflict(sides, u, next)
  if (next === undefined) return drop('gone')
  if (next.type !== u.type) return drop('stale')
  const metadata = mergedMetadata(u, old, next)
  return sameMetadata(metadata, next) ? drop('stale') : { class: 'stale', action: 'refresh', metadata }
}

/**
 * A file the user renamed: its name is the user's, so it never goes as a
 * copy would. A copy with its own data stays; a metacopy stub's data is the
 * old firmware's at the path it was renamed from: it stays while N has the
 * same, becomes a plain copy of N's data when N changed it, and when N has
 * no file there its data is gone with the old firmware: reported.
 */
function renamedFile(sides: Sides, u: ManifestRecord, old: ManifestRecord | 'absent'): Verdict {
  const next = sides.new
  if (!sides.stub || old === 'absent' || !sameContent(u, old)) return keep('own')
  if (next?.type !== 'f') return { class: 'conflict', action: 'drop', reason: RENAMED_GONE }
  if (sameContent(old, next)) return keep('kept')
  return { class: 'stale', action: 'refresh', metadata: mergedMetadata(u, old, next) }
}

export const RENAMED_GONE =
  'renamed from a file the new firmware no longer has: its data was the old firmware’s (a metacopy stub), now gone'

/** Both changed it: the user's stays, unless the configuration prefers the firmware's. */
function conflict(sides: Sides, u: ManifestRecord, next: ManifestRecord | undefined): Verdict {
  if (!sides.preferFirmware) return keep('conflict')
  // A directory cannot give way to the firmware's without losing what is below it: it takes N's metadata.
  if (u.type === 'd' && next?.type === 'd')
    return { class: 'conflict', action: 'refresh', metadata: { ...pick(next), xattrs: 'firmware' } }
  return drop('conflict')
}

const pick = (record: ManifestRecord): Omit<Metadata, 'xattrs'> => ({
  mode: record.mode,
  uid: record.uid,
  gid: record.gid,
})

/** Field by field: the user's value where the user changed it (U≠O), the new firmware's elsewhere. */
export function mergedMetadata(u: ManifestRecord, old: ManifestRecord, next: ManifestRecord): Metadata {
  return {
    mode: u.mode !== old.mode ? u.mode : next.mode,
    uid: u.uid !== old.uid ? u.uid : next.uid,
    gid: u.gid !== old.gid ? u.gid : next.gid,
    xattrs: u.xattrs !== old.xattrs && u.xattrs !== next.xattrs ? 'user' : 'firmware',
  }
}

const sameMetadata = (metadata: Metadata, next: ManifestRecord): boolean =>
  metadata.mode === next.mode &&
  metadata.uid === next.uid &&
  metadata.gid === next.gid &&
  metadata.xattrs === 'firmware'

/**
 * What a restore of a copy-up from other firmware meets (restore/extract.ts):
 * the archive's sha256 of the user's file (U), of its firmware twin when it
 * was backed up (O), and the running firmware's (N, undefined: none). Only
 * content counts: metadata goes with the archive.
 */
export function classifyContent(user: string, base: string, firmware: string | undefined): UpgradeClass {
  const record = (data: string): ManifestRecord => ({ type: 'f', mode: 0, uid: 0, gid: 0, size: 0, data, xattrs: '-' })
  return classify({
    upper: { kind: 'entry', record: record(user) },
    old: record(base),
    new: firmware === undefined ? undefined : record(firmware),
  }).class
}
