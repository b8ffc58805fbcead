/**
 * Which firmware a lower is, cheaply: what the flash records and every boot
 * compares. In order of preference:
 *
 * - `manifest:<hex>`: the header digest of the manifest the image ships
 *   (upgrade/manifest.ts `MANIFEST_PATH`): one read of its first line;
 * - `squashfs:<hex>`: sha256 of the squashfs superblock of the lower's block
 *   device (its size, time of making and table offsets change with any
 *   content): one read of 96 bytes;
 * - `release:<hex>`: the release files' digest (backup/firmware.ts
 *   `firmwareIdentity`, which backups record), for a lower that is neither.
 */
import { createHash } from 'node:crypto'
import { readHead } from '../sys/fs.js'
import { blockDeviceOf } from '../sys/mounts.js'
import { MANIFEST_PATH } from './manifest.js'

export interface FirmwareIdentity {
  identity: string
  /** Where it came from: `manifest` means the image ships its manifest. */
  source: 'manifest' | 'squashfs' | 'release'
}

const HEADER = /^ovroot-manifest 1 ([0-9a-f]{64})\n/
const SQUASHFS_MAGIC = 0x73717368
const SQUASHFS_SUPERBLOCK_BYTES = 96

/** Whether the first bytes of an image are a squashfs superblock's. */
export const isSquashfs = (head: Buffer): boolean => head.length >= 4 && head.readUInt32LE(0) === SQUASHFS_MAGIC

/** `lower` is a directory path ('/' at boot); the release-file fallback is loaded only when needed. */
export async function currentIdentity(lower: string): Promise<FirmwareIdentity> {
  const root = lower === '/' ? '' : lower.replace(/\/+$/, '')
  const header = HEADER.exec(readHeadIfExists(`${root}/${MANIFEST_PATH}`, 90).toString('latin1'))
  if (header?.[1]) return { identity: `manifest:${header[1]}`, source: 'manifest' }
  const device = blockDeviceOf(lower)
  const superblock = device === undefined ? Buffer.alloc(0) : readHeadIfExists(device, SQUASHFS_SUPERBLOCK_BYTES)
  if (superblock.length === SQUASHFS_SUPERBLOCK_BYTES && isSquashfs(superblock))
    return { identity: `squashfs:${createHash('sha256').update(superblock).digest('hex')}`, source: 'squashfs' }
  // Rare (a lower that is neither): its code is loaded only then.
  const { firmwareIdentity } = await import('../backup/firmware.js')
  return { identity: `release:${firmwareIdentity([lower]).digest}`, source: 'release' }
}

function readHeadIfExists(path: string, limit: number): Buffer {
  try {
    return readHead(path, limit)
  } catch {
    // No manifest, or a device node that is not there: the next kind of identity.
    return Buffer.alloc(0)
  }
}
