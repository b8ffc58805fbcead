/**
 * A factory reset prunes the upper in place: every entry the keep list does
 * not name is removed, and the directories above kept entries lose their
 * overlay xattrs (opaque, redirect), so the firmware shows through them again.
 * Removing needs no free space, so a reset works on a full flash, and running
 * it again after a power cut ends in the same state. Names are bytes
 * (names.ts `BytePath`): a name that is not UTF-8 is removed, or kept, like any
 * other, and never stops a reset half way.
 */
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { listNames, removeTree, statPath, unprotect } from '../sys/fs.js'
import { bytePathBuffer, bytesOf, showBytes, type BytePath } from '../names.js'
import { listXattrs, removeXattr } from '../sys/libc.js'
import { reportProgress } from '../sys/progress.js'
import { KeepList } from './keep.js'

/** Paths in the merged view's terms (bytes, as `ovroot diff`'s model has them), topmost only. */
export interface ResetPlan {
  remove: BytePath[]
  keep: BytePath[]
  /** Directories kept only because something below them is. */
  ancestors: BytePath[]
}

/**
 * What a reset removes: everything, or with `only` just those subtrees (the
 * rest of the upper is left alone); the keep list wins over both.
 */
export function planReset(upperText: string, keep: KeepList, onlyText?: readonly string[]): ResetPlan {
  const upper = bytesOf(upperText)
  const only = onlyText?.map(bytesOf)
  const plan: ResetPlan = { remove: [], keep: [], ancestors: [] }
  const inScope = (path: string): boolean =>
    only === undefined || only.some((root) => path === root || path.startsWith(`${root}/`))
  const leadsIntoScope = (path: string): boolean => only?.some((root) => root.startsWith(`${path}/`)) ?? false
  /** Whether the directory stays: false when the caller removes it whole. */
  const visit = (path: string): boolean => {
    reportProgress()
    const children = listNames(upper + path)
      .sort()
      .map((name) => `${path}/${name}`)
    const removable = children.filter((child) => !stays(child))
    if (path !== '' && inScope(path) && removable.length === children.length) return false
    plan.remove.push(...removable)
    if (path !== '' && inScope(path)) plan.ancestors.push(path)
    return true
  }
  const stays = (path: string): boolean => {
    if (!inScope(path) && !leadsIntoScope(path)) return true
    if (keep.keeps(path)) {
      plan.keep.push(path)
      return true
    }
    const isDir = statPath(bytePathBuffer(upper + path))?.type === 'dir'
    if (!inScope(path)) return !isDir || visit(path)
    return isDir && visit(path)
  }
  visit('')
  plan.remove.sort()
  return plan
}

/**
 * Carry out a reset of `upper`; answers the kept paths, in the escaped form of names.ts (they are shown and recorded).
 * `removing` runs the removals, given the plan's (paths below the upper, topmost only): the pending change's guard of
 * the inode flags a removal takes off a kept name of the same inode (pending/apply.ts).
 */
export function applyReset(
  upper: string,
  keepPatterns: string[],
  only: string[] | undefined,
  xattrs: OverlayXattrs,
  removing: (removed: readonly BytePath[], remove: () => void) => void,
): string[] {
  const plan = planReset(upper, new KeepList(keepPatterns), only)
  const at = (path: BytePath): Buffer => bytePathBuffer(bytesOf(upper) + path)
  removing(plan.remove, () => {
    for (const path of plan.remove) removeTree(at(path))
  })
  for (const path of plan.ancestors) {
    const overlay = listXattrs(at(path)).filter((name) => xattrs.isOverlay(name))
    if (overlay.length > 0) unprotect(at(path))
    for (const name of overlay) removeXattr(at(path), name)
  }
  return plan.keep.map(showBytes)
}
