/**
 * A stack of layers resolved the way overlayfs's lookup does it: top layer
 * first, stopping at whiteouts, opaque directories and non-directories,
 * following directory redirects (relative or absolute) and metacopy stubs down
 * to their data. The merged view is the stack [upper, ...lowers]; the lower
 * view is [...lowers]. Both share Layer objects, so "comes from the same place"
 * is an identity test.
 */
import { OvrootError, ExitCode } from '../errors.js'
import type { EntryStat, TreeReader } from '../sys/types.js'
import type { OverlayXattrs } from './xattrs.js'
import { showBytes, type BytePath } from '../names.js'

export interface Layer {
  /** Host directory holding the layer, as bytes (names.ts `BytePath`, `bytesOf` of a path the user gave): the model's paths are all bytes. */
  readonly root: BytePath
  readonly role: 'upper' | 'lower'
}

/** One place in one layer. `path` is relative to the layer root: '' or '/a/b'. */
export interface Source {
  readonly layer: Layer
  readonly path: string
}

export interface ResolvedEntry {
  /** Where the entry's own metadata (type, mode, owner, xattrs) comes from. */
  readonly top: Source
  readonly stat: EntryStat
  /** All xattr names of `top`, read on first use. */
  xattrNames(): readonly string[]
  /** Directories whose children show through, top first. */
  readonly dirs: readonly Source[]
  /** Where a regular file's bytes are: `top`, unless top is a metacopy stub. */
  readonly data: Source | undefined
  /** The upper holds this entry's metadata. */
  readonly inUpper: boolean
  /** A directory marked opaque: nothing below it shows through. */
  readonly opaque: boolean
  /** A directory whose lower contents come from another path (a rename). */
  readonly redirectedFrom: string | undefined
}

/** A layer rooted at / has root '' so that paths join without '//'; its own root is '/'. */
export function hostPath(source: Source): string {
  return source.layer.root + source.path || '/'
}

export function sameSource(a: Source | undefined, b: Source | undefined): boolean {
  return a === b || (a !== undefined && b !== undefined && a.layer === b.layer && a.path === b.path)
}

export function sameSources(a: readonly Source[], b: readonly Source[]): boolean {
  return a.length === b.length && a.every((source, i) => sameSource(source, b[i]))
}

/** An entry found in one layer; its xattr names are listed only when asked for. */
class Found {
  private names: string[] | undefined
  constructor(
    readonly source: Source,
    readonly stat: EntryStat,
    private readonly reader: TreeReader,
  ) {}

  xattrNames(): string[] {
    this.names ??=
      this.stat.type === 'char' ||
      this.stat.type === 'block' ||
      this.stat.type === 'fifo' ||
      this.stat.type === 'socket'
        ? []
        : this.reader.xattrNames(hostPath(this.source))
    return this.names
  }
}

export class LayerStack {
  private readonly bottom: Layer | undefined
  constructor(
    readonly layers: readonly Layer[],
    private readonly reader: TreeReader,
    private readonly xattrs: OverlayXattrs,
  ) {
    this.bottom = layers[layers.length - 1]
  }

  root(): ResolvedEntry {
    const root = this.resolve({ absolute: '' })
    if (!root)
      throw new OvrootError(
        'ENOROOT',
        ExitCode.data,
        `${showBytes(this.layers[0]?.root ?? '?')}: layer has no root directory`,
      )
    return root
  }

  /** The entry `name` inside directory `parent`, or undefined when the view has none. */
  child(parent: ResolvedEntry, name: string): ResolvedEntry | undefined {
    return this.resolve({ parent, name })
  }

  /** The names the view shows inside a directory, unsorted and not yet checked for whiteouts. */
  candidateNames(dir: ResolvedEntry): Set<string> {
    const names = new Set<string>()
    for (const source of dir.dirs) for (const name of this.reader.list(hostPath(source))) names.add(name)
    return names
  }

  private find(source: Source): Found | undefined {
    const stat = this.reader.stat(hostPath(source))
    return stat && new Found(source, stat, this.reader)
  }

  /**
   * In the bottom layer opaque, redirect and metacopy have nothing below them
   * to act on, so their xattrs are not read there (only whiteouts matter).
   */
  private overlayValue(found: Found, key: 'opaque' | 'redirect' | 'metacopy' | 'whiteout'): string | undefined {
    if (key !== 'whiteout' && found.source.layer === this.bottom) return undefined
    const name = this.xattrs.name(key)
    if (!found.xattrNames().includes(name)) return undefined
    // latin1: a redirect is a path, and paths here are byte strings (names.ts `BytePath`).
    return this.reader.xattr(hostPath(found.source), name)?.toString('latin1') ?? undefined
  }

  private isWhiteout(found: Found): boolean {
    if (found.stat.type === 'char') return found.stat.rdev === 0
    if (found.stat.type !== 'file' || found.stat.size !== 0) return false
    if (this.overlayValue(found, 'whiteout') === undefined) return false
    const parent = found.source.path.slice(0, found.source.path.lastIndexOf('/'))
    const parentFound = this.find({ layer: found.source.layer, path: parent })
    return parentFound !== undefined && this.overlayValue(parentFound, 'opaque') === 'x'
  }

  /**
   * Walk the layers top down. A relative lookup finds the name under the
   * parent's directory in each layer; a redirect replaces the name (relative)
   * or switches to a path from each layer's root (absolute).
   */
  private resolve(initial: Lookup): ResolvedEntry | undefined {
    let lookup = initial
    let top: Found | undefined
    let data: Source | undefined
    let opaque = false
    let redirectedFrom: string | undefined
    const dirs: Source[] = []

    for (const layer of this.layers) {
      const source = this.locate(lookup, layer)
      if (!source) continue
      const found = this.find(source)
      if (!found) continue
      if (this.isWhiteout(found)) break
      const first = top === undefined
      top ??= found
      if (top.stat.type === 'dir') {
        if (found.stat.type !== 'dir') break
        dirs.push(found.source)
        opaque = this.overlayValue(found, 'opaque') === 'y'
        if (opaque) break
      } else if (top.stat.type !== 'file' || (first ? false : found.stat.type !== 'file')) {
        break
      } else if (this.overlayValue(found, 'metacopy') === undefined) {
        data = found.source
        break
      }
      const redirect = this.overlayValue(found, 'redirect')
      if (redirect !== undefined) {
        lookup = this.redirected(lookup, found.source, redirect)
        if (first && top.stat.type === 'dir') redirectedFrom = this.displayPath(lookup)
      }
    }
    if (!top) return undefined
    if (top.stat.type === 'file' && !data) {
      throw new OvrootError(
        'EMETACOPY',
        ExitCode.data,
        `${showBytes(hostPath(top.source))}: metacopy file whose data is in no lower layer (was the lower replaced?)`,
      )
    }
    return {
      top: top.source,
      stat: top.stat,
      xattrNames: () => top.xattrNames(),
      dirs,
      data,
      inUpper: top.source.layer.role === 'upper',
      opaque,
      redirectedFrom,
    }
  }

  private locate(lookup: Lookup, layer: Layer): Source | undefined {
    if ('absolute' in lookup)
      return this.belowDirectories(layer, lookup.absolute) ? { layer, path: lookup.absolute } : undefined
    const dir = lookup.parent.dirs.find((source) => source.layer === layer)
    return dir && { layer, path: `${dir.path}/${lookup.name}` }
  }

  private redirected(lookup: Lookup, source: Source, redirect: string): Lookup {
    if (redirect.startsWith('/')) return { absolute: redirect.replace(/\/+$/, '') }
    if (redirect.includes('/') || redirect === '' || redirect === '.' || redirect === '..') {
      throw new OvrootError(
        'EREDIRECT',
        ExitCode.data,
        `${showBytes(hostPath(source))}: invalid relative overlay redirect "${showBytes(redirect)}"`,
      )
    }
    if ('absolute' in lookup)
      return { absolute: `${lookup.absolute.slice(0, lookup.absolute.lastIndexOf('/'))}/${redirect}` }
    return { parent: lookup.parent, name: redirect }
  }

  /**
   * Whether every directory above `path` is one in `layer`: the kernel walks an absolute redirect
   * component by component and stops at a symlink (a firmware's `/var -> /tmp`), where a host path
   * would follow it out of the layer.
   */
  private belowDirectories(layer: Layer, path: string): boolean {
    for (let at = path.lastIndexOf('/'); at > 0; at = path.lastIndexOf('/', at - 1))
      if (this.find({ layer, path: path.slice(0, at) })?.stat.type !== 'dir') return false
    return true
  }

  /** Where a redirect points, as a path of the lower view (for reports). */
  private displayPath(lookup: Lookup): string {
    if ('absolute' in lookup) return lookup.absolute
    const lowerParent = lookup.parent.dirs.find((source) => source.layer.role === 'lower')
    return `${lowerParent?.path ?? ''}/${lookup.name}`
  }
}

type Lookup = { absolute: string } | { parent: ResolvedEntry; name: string }
