/**
 * Where keep lists are read from. At run time that is the live root; at boot
 * the overlay is not mounted yet, so the merged view is reconstructed from
 * the upper and the lower with the overlay model.
 */
import { hostPath, LayerStack, type ResolvedEntry } from '../overlay/stack.js'
import { OverlayXattrs, type XattrNamespace } from '../overlay/xattrs.js'
import { hostTreeReader, listNames, readTextFileIfExists, statPath } from '../sys/fs.js'
import { bytePathBuffer, bytesOf } from '../names.js'
import type { ViewReader } from './keep.js'

export const liveView: ViewReader = {
  readFile: (path) => readTextFileIfExists(bytePathBuffer(path)),
  list: (path) => (statPath(bytePathBuffer(path))?.type === 'dir' ? listNames(path) : undefined),
}

export function offlineView(upper: string, lowers: string[], namespace: XattrNamespace): ViewReader {
  const stack = new LayerStack(
    [
      { root: bytesOf(upper), role: 'upper' },
      ...lowers.map((root) => ({ root: bytesOf(root === '/' ? '' : root), role: 'lower' as const })),
    ],
    hostTreeReader,
    new OverlayXattrs(namespace),
  )
  const resolve = (path: string): ResolvedEntry | undefined => {
    let entry: ResolvedEntry | undefined = stack.root()
    for (const name of path.split('/').filter(Boolean))
      entry = entry?.stat.type === 'dir' ? stack.child(entry, name) : undefined
    return entry
  }
  return {
    readFile: (path) => {
      const entry = resolve(path)
      return entry?.data ? readTextFileIfExists(bytePathBuffer(hostPath(entry.data))) : undefined
    },
    list: (path) => {
      const entry = resolve(path)
      if (entry?.stat.type !== 'dir') return undefined
      return [...stack.candidateNames(entry)].filter((name) => stack.child(entry, name) !== undefined)
    },
  }
}
