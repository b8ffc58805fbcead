/**
 * overlayfs keeps its bookkeeping in xattrs under `trusted.overlay.`, or under
 * `user.overlay.` when mounted with `userxattr`. Which one applies is a
 * property of the whole upper: under the trusted prefix, `user.overlay.*` is
 * ordinary user data, and the other way round.
 */
export type XattrNamespace = 'trusted' | 'user'

export const OVERLAY_KEYS = [
  'opaque',
  'redirect',
  'metacopy',
  'whiteout',
  'origin',
  'impure',
  'nlink',
  'uuid',
  'upper',
  'protattr',
] as const
export type OverlayKey = (typeof OVERLAY_KEYS)[number]

const AUDITED = new Set(['security.capability', 'system.posix_acl_access', 'system.posix_acl_default'])

export class OverlayXattrs {
  readonly prefix: string
  constructor(readonly namespace: XattrNamespace) {
    this.prefix = `${namespace}.overlay.`
  }

  name(key: OverlayKey): string {
    return this.prefix + key
  }

  isOverlay(name: string): boolean {
    return name.startsWith(this.prefix)
  }

  /**
   * What the diff compares: `user.*` (minus overlay's own in userxattr mode),
   * and what decides who may do what, which a security audit must see: file
   * capabilities and POSIX ACLs.
   */
  isCompared(name: string): boolean {
    return (name.startsWith('user.') && !this.isOverlay(name)) || AUDITED.has(name)
  }
}

/** The namespace an overlay mounted with these options writes its xattrs in. */
export function namespaceForMount(options: readonly string[]): XattrNamespace {
  return options.includes('userxattr') ? 'user' : 'trusted'
}

/** Which namespace an xattr name proves, if it is an overlay xattr at all. */
export function namespaceProvedBy(name: string): XattrNamespace | undefined {
  if (name.startsWith('trusted.overlay.')) return 'trusted'
  if (name.startsWith('user.overlay.')) return 'user'
  return undefined
}
