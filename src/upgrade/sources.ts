/**
 * Where the records of a firmware come from: its manifest (shipped with the
 * image, or the flash's copy), or the tree itself (a mounted lower, read and
 * hashed path by path, only for the paths asked about).
 */
import { showBytes, type BytePath } from '../names.js'
import { readEntryIfPresent, readStableFile } from '../sys/entries.js'
import { hostTreeReader } from '../sys/fs.js'
import { parentOf, under } from '../upper/entry.js'
import { walkUpper } from '../upper/walk.js'
import type { OldSide } from './classify.js'
import { MANIFEST_PATH, recordOf, type Manifest, type ManifestRecord } from './manifest.js'

export interface RecordSource {
  /** The record at a path (relative to the lower's root, `.` the root): `absent` when nothing is there. */
  lookup(path: BytePath): OldSide
  /** Records below a directory, by path relative to the root; `unknown` when they are not known. */
  below(path: BytePath): Map<BytePath, ManifestRecord> | 'unknown'
}

/**
 * A manifest as a source. `complete`: it lists the whole firmware, so a path
 * it lacks is absent; otherwise (records taken at boot) only paths it lists
 * or `absent` names are known.
 */
export function manifestSource(manifest: Manifest, absent?: ReadonlySet<BytePath>): RecordSource {
  const known = (path: BytePath): OldSide => {
    const record = manifest.lookup(path)
    if (record) return record
    if (!absent || absent.has(path)) return 'absent'
    if (path === '.') return 'unknown'
    const parent = known(parentOf(path))
    return parent === 'unknown' ? 'unknown' : parent === 'absent' || parent.type !== 'd' ? 'absent' : 'unknown'
  }
  return { lookup: known, below: (path) => new Map(manifest.below(path)) }
}

/** A mounted lower read directly (byte string root, '' for `/`); what is read is kept. */
export function treeSource(root: BytePath): RecordSource {
  const cache = new Map<BytePath, ManifestRecord | 'absent'>()
  const lookup = (path: BytePath): ManifestRecord | 'absent' => {
    let found = cache.get(path)
    if (found) return found
    // Overlayfs never follows a symlink on the way down: neither does this.
    const parent = path === '.' ? undefined : lookup(parentOf(path))
    found = parent !== undefined && (parent === 'absent' || parent.type !== 'd') ? 'absent' : read(root, path)
    cache.set(path, found)
    return found
  }
  return {
    lookup,
    below(path) {
      const found = new Map<BytePath, ManifestRecord>()
      if (lookup(path) === 'absent') return found
      const base = under(root, path)
      const walk = walkUpper(base, {
        stubXattr: '',
        include: (child) => !(path === '.' && child === MANIFEST_PATH),
        skipped: () => undefined,
      })
      for (const entry of walk) {
        if (entry.path === '.') continue
        const full = path === '.' ? entry.path : `${path}/${entry.path}`
        const first =
          entry.type === 'hardlink'
            ? found.get(path === '.' ? (entry.linkTarget ?? '') : `${path}/${entry.linkTarget ?? ''}`)
            : undefined
        found.set(
          full,
          first ?? recordOf(entry, entry.type === 'file' ? readStableFile(under(base, entry.path)).sha256 : undefined),
        )
      }
      return found
    },
  }
}

function read(root: BytePath, path: BytePath): ManifestRecord | 'absent' {
  if (path === MANIFEST_PATH) return 'absent'
  const full = under(root, path)
  const entry = readEntryIfPresent(full, path, '')
  if (entry === undefined) return 'absent'
  if (entry === 'socket') {
    const stat = hostTreeReader.stat(full)
    if (!stat) return 'absent'
    return { type: 's', mode: stat.permissions, uid: stat.uid, gid: stat.gid, size: 0, data: '-', xattrs: '-' }
  }
  return recordOf(entry, entry.type === 'file' ? readStableFile(full).sha256 : undefined)
}

/** For messages. */
export const shownPath = (path: BytePath): string => (path === '.' ? '/' : `/${showBytes(path)}`)
