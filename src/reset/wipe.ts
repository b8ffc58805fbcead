/**
 * Factory reset of an unmounted upper, safe against a power cut at any
 * instant. The kept entries are copied into a staging directory first; a
 * marker on the flash records the phase, so the next boot either starts the
 * copy again (the upper is untouched until the marker says "staged") or
 * finishes the swap. The result is always the old upper with the reset still
 * pending, or the factory state with the keep list applied.
 */
import { ExitCode, OvrootError } from '../errors.js'
import { cloneEntry, linkPath, listDirectory, makeDirectory, pathExists, readTextFileIfExists, removeFile, removeTree, renamePath, statPath, syncDirectory, writeFileAtomic } from '../sys/fs.js'
import { getXattr, syncAll } from '../sys/libc.js'
import { FLASH_STATE_DIR, RESET_MARKER } from '../boot/state.js'
import { KeepList } from './keep.js'

export interface ResetMarker {
  phase: 'scheduled' | 'staged'
  keep: string[]
  requested: string
}

export interface FlashLayout {
  /** The flash filesystem's mount point (or the directory holding an unmounted upper). */
  root: string
  upperName: string
}

const STATE_DIR = FLASH_STATE_DIR
const markerPath = (layout: FlashLayout): string => `${layout.root}/${STATE_DIR}/${RESET_MARKER}`
const stagingPath = (layout: FlashLayout): string => `${layout.root}/${STATE_DIR}/reset-new`
const oldPath = (layout: FlashLayout): string => `${layout.root}/${STATE_DIR}/reset-old`
const upperPath = (layout: FlashLayout): string => `${layout.root}/${layout.upperName}`

export function readResetMarker(layout: FlashLayout): ResetMarker | undefined {
  const text = readTextFileIfExists(markerPath(layout))
  if (text === undefined) return undefined
  try {
    const marker = JSON.parse(text) as ResetMarker
    if ((marker.phase === 'scheduled' || marker.phase === 'staged') && Array.isArray(marker.keep)) return marker
  } catch {
    // fall through: an unreadable marker is reported below
  }
  throw new OvrootError('EMARKER', ExitCode.data, `${markerPath(layout)}: unreadable reset marker; expected JSON with phase and keep`)
}

export function scheduleReset(layout: FlashLayout, keep: string[]): void {
  makeDirectory(`${layout.root}/${STATE_DIR}`)
  writeFileAtomic(markerPath(layout), `${JSON.stringify({ phase: 'scheduled', keep, requested: new Date().toISOString() } satisfies ResetMarker)}\n`)
}

export function cancelReset(layout: FlashLayout): void {
  removeFile(markerPath(layout))
  syncDirectory(`${layout.root}/${STATE_DIR}`)
}

/** Carry out (or finish) a scheduled reset. Returns the paths kept. */
export function performReset(layout: FlashLayout, workDir: string | undefined): string[] {
  const marker = readResetMarker(layout)
  if (!marker) return []
  const kept: string[] = []
  if (marker.phase === 'scheduled') {
    removeTree(stagingPath(layout))
    copyKept(upperPath(layout), stagingPath(layout), new KeepList(marker.keep), kept)
    syncAll()
    writeFileAtomic(markerPath(layout), `${JSON.stringify({ ...marker, phase: 'staged' } satisfies ResetMarker)}\n`)
  }
  if (pathExists(stagingPath(layout))) {
    if (pathExists(upperPath(layout))) {
      removeTree(oldPath(layout))
      renamePath(upperPath(layout), oldPath(layout))
    }
    renamePath(stagingPath(layout), upperPath(layout))
    syncDirectory(layout.root)
  }
  removeTree(oldPath(layout))
  // The work directory may index inodes of the old upper.
  if (workDir) removeTree(workDir)
  syncAll()
  cancelReset(layout)
  return kept
}

/** What a reset would remove and keep, topmost paths only, in the merged view's terms. */
export function planReset(upper: string, keep: KeepList): { remove: string[]; keep: string[] } {
  const plan = { remove: [] as string[], keep: [] as string[] }
  /** Whether anything inside is kept; if not, the caller removes the whole directory. */
  const visit = (path: string): boolean => {
    const children = listDirectory(upper + path).sort().map((name) => `${path}/${name}`)
    const keptInside = children.map((child) => {
      if (keep.keeps(child)) {
        plan.keep.push(child)
        return true
      }
      return statPath(upper + child)?.type === 'dir' && visit(child)
    })
    if (!keptInside.includes(true)) return false
    children.forEach((child, i) => {
      if (!keptInside[i]) plan.remove.push(child)
    })
    return true
  }
  if (!visit('')) plan.remove.push(...listDirectory(upper).sort().map((name) => `/${name}`))
  plan.remove.sort()
  return plan
}

/** Copy what the keep list names; parents are recreated plain, so the lower shows through them. */
function copyKept(upper: string, staging: string, keep: KeepList, kept: string[]): void {
  makeDirectory(staging)
  const links = new Map<string, string>()
  const copyTree = (path: string): void => {
    const from = upper + path
    const stat = statPath(from)
    if (!stat) return
    const key = `${stat.dev}:${stat.ino}`
    const firstCopy = stat.type !== 'dir' && stat.nlink > 1 ? links.get(key) : undefined
    if (firstCopy) linkPath(firstCopy, staging + path)
    else {
      cloneEntry(from, staging + path, { stubOnly: isMetacopyStub(from), overlayXattrs: true })
      if (stat.nlink > 1) links.set(key, staging + path)
    }
    if (stat.type === 'dir') for (const name of listDirectory(from)) copyTree(`${path}/${name}`)
  }
  const visit = (path: string): void => {
    for (const name of listDirectory(upper + path)) {
      const child = `${path}/${name}`
      if (keep.keeps(child)) {
        ensureParents(upper, staging, child)
        copyTree(child)
        kept.push(child)
      } else if (statPath(upper + child)?.type === 'dir') visit(child)
    }
  }
  visit('')
}

function ensureParents(upper: string, staging: string, path: string): void {
  const parts = path.split('/').filter(Boolean).slice(0, -1)
  let current = ''
  for (const part of parts) {
    current += `/${part}`
    if (!pathExists(staging + current)) cloneEntry(upper + current, staging + current, { overlayXattrs: false })
  }
}

function isMetacopyStub(path: string): boolean {
  const stat = statPath(path)
  if (stat?.type !== 'file' || stat.size === 0) return false
  return hasXattr(path, 'trusted.overlay.metacopy') || hasXattr(path, 'user.overlay.metacopy')
}

function hasXattr(path: string, name: string): boolean {
  return getXattr(path, name) !== undefined
}
