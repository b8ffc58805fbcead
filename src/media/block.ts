/**
 * Block flash (eMMC, SD, disks): a device named by path, LABEL= (ext4) or
 * PARTUUID= (GPT or MBR), holding ext4 or f2fs.
 */
import type { Config } from '../config/schema.js'
import { isUniform, listDirectoryIfExists, readAt, readTextFileIfExists, realPath, statPath } from '../sys/fs.js'
import { mount, MountFlag } from '../sys/libc.js'
import { runTool } from '../sys/run.js'
import { ExitCode, OvrootError } from '../errors.js'
import { hasFormatMarker, type MediaDriver, type MediumState, type Volume } from './types.js'

const EXT4_MAGIC_OFFSET = 0x438
const EXT4_LABEL_OFFSET = 0x478
/** s_state: VALID_FS (1) once checked or cleanly unmounted, ERROR_FS (2) once the kernel found an inconsistency. */
const EXT4_STATE_OFFSET = 0x43a
const EXT4_VALID_FS = 1
const EXT4_ERROR_FS = 2
/** f2fs keeps two superblocks (4 KiB blocks 0 and 1, 1 KiB in): the kernel mounts with either and repairs the other. */
const F2FS_MAGIC_OFFSETS = [0x400, 0x1400]
const F2FS_MAGIC = 0xf2f52010
/** f2fs is the better choice on large flash; below this ext4 wastes less. */
const F2FS_FROM_BYTES = 512 * 1024 * 1024

type BlockFilesystem = 'ext4' | 'f2fs'

function detectFilesystem(device: string): BlockFilesystem | undefined {
  const head = readAt(device, 0, 0x1500)
  if (head.length >= EXT4_MAGIC_OFFSET + 2 && head.readUInt16LE(EXT4_MAGIC_OFFSET) === 0xef53) return 'ext4'
  // One damaged superblock leaves an f2fs the kernel mounts: never unrecognised (reformat_corrupt would erase it).
  if (F2FS_MAGIC_OFFSETS.some((at) => head.length >= at + 4 && head.readUInt32LE(at) === F2FS_MAGIC)) return 'f2fs'
  return undefined
}

function sizeInBytes(name: string): number {
  return Number(readTextFileIfExists(`/sys/class/block/${name}/size`)?.trim() ?? '0') * 512
}

class BlockVolume implements Volume {
  readonly driver = 'block'
  readonly description: string
  readonly filesystem: BlockFilesystem
  constructor(
    readonly device: string,
    private readonly label: string,
    configured: Config['flash']['filesystem'],
  ) {
    const name = device.slice('/dev/'.length)
    this.filesystem =
      detectFilesystem(device) ??
      (configured === 'auto' ? (sizeInBytes(name) >= F2FS_FROM_BYTES ? 'f2fs' : 'ext4') : configured)
    this.description = `block device ${device}`
  }

  /**
   * Blank only when provably so: the format marker, or every byte of the
   * device zero (or 0xFF). Other filesystems, LUKS, swap and partition tables
   * keep their signatures at many offsets (btrfs at 64 KiB), so a clean head
   * proves nothing. The full read happens once, on the first boot.
   */
  inspect(): MediumState {
    // Neither formatted, checked nor mounted read-write: mount(2) would refuse with EACCES, mkfs and e2fsck fail.
    if (readTextFileIfExists(`/sys/class/block/${this.device.slice('/dev/'.length)}/ro`)?.trim() === '1')
      throw new OvrootError(
        'EROFS',
        ExitCode.io,
        `${this.description} is read-only (write-protected: a locked card, blockdev --setro); left as it is`,
      )
    if (detectFilesystem(this.device)) return 'formatted'
    if (hasFormatMarker(readAt(this.device, 0, 4))) return 'blank'
    return isUniform(this.device) ? 'blank' : 'unrecognised'
  }

  async format(): Promise<void> {
    if (this.filesystem === 'f2fs') await runTool('mkfs.f2fs', ['-q', '-f', '-l', this.label, this.device])
    else await runTool('mkfs.ext4', ['-q', '-F', '-L', this.label, this.device])
  }

  /**
   * An ext4 the kernel found inconsistent still mounts read-write, and writing to it (a block
   * bitmap that calls a file's blocks free) overwrites the user's files: e2fsck -p repairs it
   * first, as fstools does. A clean one (every boot but those) is not checked: a journal that a
   * power cut left to replay, the kernel replays.
   */
  async check(): Promise<void> {
    if (this.filesystem !== 'ext4') return
    const state = readAt(this.device, EXT4_STATE_OFFSET, 2).readUInt16LE(0)
    if ((state & EXT4_VALID_FS) !== 0 && (state & EXT4_ERROR_FS) === 0) return
    const why = (state & EXT4_ERROR_FS) !== 0 ? 'has errors the kernel recorded' : 'was not cleanly unmounted'
    try {
      // 1: errors repaired; 2: repaired, reboot (for a mounted root, which this is not).
      await runTool('e2fsck', ['-p', this.device], 600, [1, 2])
    } catch (error) {
      // e2fsck missing or not executable: nothing was checked, and mounting it as it is could overwrite the user's files.
      if (error instanceof OvrootError && error.code !== 'ETOOL')
        throw new OvrootError(
          error.code,
          error.exitStatus,
          `${this.description} (ext4) ${why}: it is checked (e2fsck -p) before it is mounted, and e2fsck did not run (${error.message}); left untouched`,
        )
      throw new OvrootError(
        'ECORRUPT',
        ExitCode.data,
        `${this.description} (ext4) ${why}, and e2fsck -p left errors for a person (${(error as Error).message}); left untouched: run e2fsck on it by hand`,
      )
    }
  }

  mount(target: string): void {
    mount(this.device, target, this.filesystem, MountFlag.noAtime, null)
  }
}

function blockDevices(): string[] {
  return listDirectoryIfExists('/sys/class/block').filter((name) => statPath(`/dev/${name}`)?.type === 'block')
}

/** A scan reads every block device; one it may not read is not the one looked for. */
function probe(device: string, offset: number, length: number): Buffer {
  try {
    return readAt(device, offset, length)
  } catch {
    return Buffer.alloc(0)
  }
}

function findByLabel(label: string): string | undefined {
  return blockDevices().find((name) => {
    const head = probe(`/dev/${name}`, 0, EXT4_LABEL_OFFSET + 16)
    if (head.length < EXT4_LABEL_OFFSET + 16 || head.readUInt16LE(EXT4_MAGIC_OFFSET) !== 0xef53) return false
    return head.toString('latin1', EXT4_LABEL_OFFSET, EXT4_LABEL_OFFSET + 16).replace(/\0+$/, '') === label
  })
}

/** GUIDs are stored with their first three fields little-endian. */
function formatGuid(bytes: Buffer): string {
  const littleEndian = (from: number, to: number): string =>
    Buffer.from(bytes.subarray(from, to)).reverse().toString('hex')
  const bigEndian = (from: number, to: number): string => bytes.subarray(from, to).toString('hex')
  return `${littleEndian(0, 4)}-${littleEndian(4, 6)}-${littleEndian(6, 8)}-${bigEndian(8, 10)}-${bigEndian(10, 16)}`
}

function partitionUuid(disk: string, number: number): string | undefined {
  const mbr = probe(`/dev/${disk}`, 0, 512)
  if (mbr.length < 512 || mbr.readUInt16LE(510) !== 0xaa55) return undefined
  const gpt = probe(`/dev/${disk}`, 512, 92)
  if (gpt.length === 92 && gpt.toString('latin1', 0, 8) === 'EFI PART') {
    const entriesAt = Number(gpt.readBigUInt64LE(72)) * 512
    const entrySize = gpt.readUInt32LE(84)
    return formatGuid(probe(`/dev/${disk}`, entriesAt + (number - 1) * entrySize + 16, 16))
  }
  return `${mbr.readUInt32LE(440).toString(16).padStart(8, '0')}-${number.toString(16).padStart(2, '0')}`
}

function findByPartUuid(uuid: string): string | undefined {
  return blockDevices().find((name) => {
    const number = Number(readTextFileIfExists(`/sys/class/block/${name}/partition`)?.trim() ?? 'NaN')
    const disk = blockDevices().find(
      (candidate) =>
        candidate !== name && name.startsWith(candidate) && statPath(`/sys/class/block/${candidate}/${name}`),
    )
    return (
      Number.isInteger(number) &&
      disk !== undefined &&
      partitionUuid(disk, number)?.toLowerCase() === uuid.toLowerCase()
    )
  })
}

export function resolveBlockDevice(spec: string): string | { absent: string } {
  if (spec === '') return { absent: 'no block device configured ([flash] device is empty)' }
  if (spec.startsWith('/dev/')) {
    // udev's /dev/disk/by-* names are symlinks to the device node.
    const device = realPath(spec)
    if (device === undefined) return { absent: `${spec} does not exist` }
    return statPath(device)?.type === 'block' ? device : { absent: `${spec} is not a block device` }
  }
  const [kind, value = ''] = spec.split(/=(.*)/)
  const name = kind === 'LABEL' ? findByLabel(value) : findByPartUuid(value)
  return name ? `/dev/${name}` : { absent: `no block device with ${spec}` }
}

export const blockDriver: MediaDriver = {
  name: 'block',
  find(config: Config) {
    const device = resolveBlockDevice(config.flash.device)
    return typeof device === 'string' ? new BlockVolume(device, config.flash.name, config.flash.filesystem) : device
  },
}
