/**
 * Filesystem-identity metadata: what overlayfs writes that belongs to one
 * pairing of an upper with one lower filesystem. Origin file handles (on
 * every copied-up entry and the upper root), the root's `uuid`, the
 * `impure` and `nlink` bookkeeping, and the index in the work directory.
 * After a restore (the upper comes from another filesystem) or a firmware
 * upgrade (the lower is another squashfs) none of it matches, and `index=on`
 * refuses to mount (ESTALE). Without it overlayfs falls back to lookup by
 * name, which is what ovroot's model of the overlay assumes anyway.
 */
import { bytePathBuffer, type BytePath } from '../names.js'
import { SysError } from '../errors.js'
import { removeXattr } from '../sys/libc.js'
import { removeTree } from '../sys/fs.js'
import { isGone, walkUpper } from '../upper/walk.js'
import { under } from '../upper/entry.js'
import type { OverlayXattrs } from './xattrs.js'

const IDENTITY_KEYS = ['origin', 'uuid', 'impure', 'nlink'] as const

/** Whether an xattr is identity metadata (kept out of a refreshed or restored entry). */
export function isIdentityXattr(xattrs: OverlayXattrs, name: string): boolean {
  return IDENTITY_KEYS.some((key) => name === xattrs.name(key))
}

/** The identity xattrs among an entry's. */
export const identityNames = (xattrs: OverlayXattrs, names: readonly [string, unknown][]): string[] =>
  names.filter(([name]) => isIdentityXattr(xattrs, name)).map(([name]) => name)

/**
 * Clear these names from one entry of an unmounted upper: what a walk found
 * (the reconcile's, which lists every entry's xattrs already). An entry or
 * xattr no longer there is done: a rerun after a cut repeats this.
 */
export function clearIdentityOf(full: BytePath, names: readonly string[]): void {
  for (const name of names)
    try {
      removeXattr(bytePathBuffer(full), name)
    } catch (error) {
      if (!(isGone(error) || (error instanceof SysError && error.errno === 'ENODATA'))) throw error
    }
}

/** Clear it from every entry of an unmounted upper, and drop the work directory (the index) when given. */
export function clearFilesystemIdentity(upper: BytePath, xattrs: OverlayXattrs, work?: string): void {
  const walk = walkUpper(upper, { stubXattr: xattrs.name('metacopy'), include: () => true, skipped: () => undefined })
  for (const entry of walk)
    for (const [name] of entry.xattrs)
      if (isIdentityXattr(xattrs, name)) removeXattr(bytePathBuffer(under(upper, entry.path)), name)
  if (work !== undefined) removeTree(work)
}
