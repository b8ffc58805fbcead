/**
 * Which xattr namespace an upper was written with. The kernel puts overlay
 * xattrs on nearly every copy-up (origin, opaque on new directories), so the
 * first one found settles it; the scan stops there.
 */
import type { TreeReader } from '../sys/types.js'
import type { BytePath } from '../names.js'
import { namespaceProvedBy, type XattrNamespace } from './xattrs.js'

/** `upperRoot` is a byte string, like every path of the overlay model. */
export function detectNamespace(reader: TreeReader, upperRoot: BytePath): XattrNamespace | undefined {
  const pending = ['']
  for (let path = pending.pop(); path !== undefined; path = pending.pop()) {
    const full = upperRoot + path
    for (const name of reader.xattrNames(full)) {
      const namespace = namespaceProvedBy(name)
      if (namespace) return namespace
    }
    for (const name of reader.list(full)) {
      const child = `${path}/${name}`
      const stat = reader.stat(upperRoot + child)
      if (stat?.type === 'dir') pending.push(child)
      else if (stat?.type === 'file' || stat?.type === 'symlink') {
        for (const xattr of reader.xattrNames(upperRoot + child)) {
          const namespace = namespaceProvedBy(xattr)
          if (namespace) return namespace
        }
      }
    }
  }
  return undefined
}
