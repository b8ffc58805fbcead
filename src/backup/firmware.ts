/** Which firmware a lower is: what a backup records and a restore compares. */
import { bytesOf } from '../names.js'
import { createHash } from 'node:crypto'
import type { Firmware } from '../archive/manifest.js'
import { hostPath, LayerStack, type ResolvedEntry } from '../overlay/stack.js'
import { OverlayXattrs, type XattrNamespace } from '../overlay/xattrs.js'
import { sha256OfFirmwareFile } from '../sys/entries.js'
import { hostTreeReader, readTextFileIfExists } from '../sys/fs.js'

const RELEASE_FILES = ['/etc/openwrt_release', '/etc/openwrt_version', '/etc/os-release']
const RELEASE_KEYS = /^(DISTRIB_ID|DISTRIB_RELEASE|DISTRIB_REVISION|DISTRIB_TARGET|ID|VERSION_ID|BUILD_ID)$/

/** Release files are read from the topmost lower that has them. */
export function firmwareIdentity(lowers: string[]): Firmware {
  const hash = createHash('sha256')
  const release: Record<string, string> = {}
  for (const file of RELEASE_FILES) {
    const text = lowers
      .map((lower) => readTextFileIfExists(`${lower === '/' ? '' : lower}${file}`))
      .find((content) => content !== undefined)
    if (text === undefined) continue
    hash.update(`${file}\0${text}\0`)
    for (const line of text.split('\n')) {
      const match = /^([A-Z_]+)=['"]?(.*?)['"]?\s*$/.exec(line)
      if (match?.[1] && RELEASE_KEYS.test(match[1])) release[match[1]] = match[2] ?? ''
    }
  }
  return { release, digest: hash.digest('hex') }
}

export function describeFirmware(firmware: Firmware): string {
  const { release } = firmware
  const name = [
    release.DISTRIB_ID ?? release.ID,
    release.DISTRIB_RELEASE ?? release.VERSION_ID,
    release.DISTRIB_REVISION ?? release.BUILD_ID,
  ]
    .filter(Boolean)
    .join(' ')
  return name || `firmware ${firmware.digest.slice(0, 12)}`
}

/** The merged view of some layers (the firmware's lowers, perhaps under an upper), by path relative to the upper. */
export interface LayerView {
  lookup(path: string): ResolvedEntry | undefined
  /** sha256 of the regular file at a path, or undefined when there is none. */
  sha256(path: string): string | undefined
}

export function firmwareView(lowers: string[], namespace: XattrNamespace, upper?: string): LayerView {
  const layers = [
    ...(upper ? [{ root: bytesOf(upper), role: 'upper' as const }] : []),
    ...lowers.map((root) => ({ root: bytesOf(root === '/' ? '' : root.replace(/\/+$/, '')), role: 'lower' as const })),
  ]
  const stack = new LayerStack(layers, hostTreeReader, new OverlayXattrs(namespace))
  let root: ResolvedEntry | undefined
  /**
   * The directories above the path looked up last, resolved, top down: paths
   * come in a walk's order, so most lookups start where the last one's
   * parent was, not from the root. Only one path's ancestors are kept.
   */
  const above: { name: string; entry: ResolvedEntry | undefined }[] = []
  const lookup = (path: string): ResolvedEntry | undefined => {
    let entry: ResolvedEntry | undefined = (root ??= stack.root())
    if (path === '.') return entry
    const names = path.split('/')
    let depth = 0
    for (; depth < names.length - 1; depth++) {
      const known = above[depth]
      if (known === undefined || known.name !== names[depth]) break
      entry = known.entry
    }
    above.length = depth
    for (; depth < names.length; depth++) {
      const name = names[depth] ?? ''
      entry = entry?.stat.type === 'dir' ? stack.child(entry, name) : undefined
      if (depth < names.length - 1) above.push({ name, entry })
    }
    return entry
  }
  return {
    lookup,
    sha256(path) {
      const entry = lookup(path)
      return entry?.stat.type === 'file' && entry.data ? sha256OfFirmwareFile(hostPath(entry.data)) : undefined
    },
  }
}
