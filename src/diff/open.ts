/**
 * Checks that the directories given to `ovroot diff` really are an upper and
 * its lowers, settles the xattr namespace, and builds the two layer stacks.
 */
import { bytesOf } from '../names.js'
import { ExitCode, OvrootError } from '../errors.js'
import { filesystemInfo, hostTreeReader, statPath } from '../sys/fs.js'
import { detectNamespace } from '../overlay/detect.js'
import { OverlayDiff, type DiffOptions } from '../overlay/diff.js'
import { LayerStack, type Layer } from '../overlay/stack.js'
import { OverlayXattrs, type XattrNamespace } from '../overlay/xattrs.js'

export interface DiffRequest extends DiffOptions {
  upper: string
  lowers: string[]
  /** Forced namespace; detected from the upper when absent. */
  namespace?: XattrNamespace
}

const OVERLAYFS_MAGIC = 0x794c7630
const SQUASHFS_MAGIC = 0x73717368

/** A request whose directories were checked and whose namespace is settled. */
export interface CheckedDiffRequest extends DiffRequest {
  namespace: XattrNamespace
}

export function checkDiffRequest(request: DiffRequest): CheckedDiffRequest {
  const upper = requireDirectory(request.upper, 'upper')
  const lowers = request.lowers.map((lower) => requireDirectory(lower, 'lower'))
  for (const [i, lower] of lowers.entries()) {
    if (lower.dev === upper.dev && lower.ino === upper.ino) {
      throw notAnUpper(request.upper, `it is the same directory as lower ${request.lowers[i]}`)
    }
  }
  const fsType = filesystemInfo(request.upper).type
  if (fsType === OVERLAYFS_MAGIC)
    throw notAnUpper(
      request.upper,
      'it is on overlayfs, so it is a merged view (the upper is the directory the overlay was mounted with as upperdir)',
    )
  if (fsType === SQUASHFS_MAGIC)
    throw notAnUpper(request.upper, 'it is on read-only squashfs, which can only be a lower')
  if (looksLikeOverlayDir(request.upper, request.lowers[0] ?? '')) {
    throw notAnUpper(
      request.upper,
      `it holds upper/ and work/, so it is the overlay's own filesystem; pass ${request.upper.replace(/\/$/, '')}/upper`,
    )
  }
  const namespace = request.namespace ?? detectNamespace(hostTreeReader, bytesOf(request.upper)) ?? 'trusted'
  if (namespace === 'trusted' && process.geteuid?.() !== 0) {
    throw new OvrootError(
      'EPERM',
      ExitCode.environment,
      `reading trusted.overlay.* xattrs of ${request.upper} needs root (CAP_SYS_ADMIN); run as root, or pass --xattrs user for a userxattr overlay`,
    )
  }
  return { ...request, namespace }
}

export function openDiff(request: CheckedDiffRequest): OverlayDiff {
  const xattrs = new OverlayXattrs(request.namespace)
  const lowerLayers: Layer[] = request.lowers.map((root) => ({ root: bytesOf(stripSlash(root)), role: 'lower' }))
  const upperLayer: Layer = { root: bytesOf(stripSlash(request.upper)), role: 'upper' }
  const merged = new LayerStack([upperLayer, ...lowerLayers], hostTreeReader, xattrs)
  const lower = new LayerStack(lowerLayers, hostTreeReader, xattrs)
  return new OverlayDiff(merged, lower, hostTreeReader, xattrs, request)
}

function requireDirectory(path: string, role: string): { dev: bigint; ino: bigint } {
  const stat = statPath(path)
  if (!stat) throw new OvrootError('ENOENT', ExitCode.environment, `${role} directory ${path} does not exist`)
  if (stat.type !== 'dir')
    throw new OvrootError('ENOTDIR', ExitCode.environment, `${role} ${path} is a ${stat.type}, expected a directory`)
  return stat
}

function looksLikeOverlayDir(upper: string, lower: string): boolean {
  const isDir = (path: string): boolean => statPath(path)?.type === 'dir'
  return isDir(`${upper}/upper`) && isDir(`${upper}/work`) && !isDir(`${lower}/upper`)
}

function notAnUpper(path: string, why: string): OvrootError {
  return new OvrootError('ENOTUPPER', ExitCode.data, `${path} is not an overlay upper directory: ${why}`)
}

function stripSlash(path: string): string {
  return path.length > 1 ? path.replace(/\/+$/, '') : path === '/' ? '' : path
}
