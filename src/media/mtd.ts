/** NOR flash: an MTD partition found by name in /proc/mtd, holding JFFS2. */
import type { Config } from '../config/schema.js'
import { readAt, readTextFileIfExists } from '../sys/fs.js'
import { mount, MountFlag } from '../sys/libc.js'
import { runTool } from '../sys/run.js'
import { hasFormatMarker, isErased, type MediaDriver, type MediumState, type Volume } from './types.js'

interface MtdPartition {
  index: number
  size: number
  eraseSize: number
}

export function parseProcMtd(text: string, name: string): MtdPartition | undefined {
  for (const line of text.split('\n')) {
    const match = /^mtd(\d+): ([0-9a-f]+) ([0-9a-f]+) "(.*)"$/.exec(line.trim())
    if (match && match[4] === name)
      return { index: Number(match[1]), size: parseInt(match[2] ?? '0', 16), eraseSize: parseInt(match[3] ?? '0', 16) }
  }
  return undefined
}

/** A JFFS2 node (or clean marker) starts every block JFFS2 has written. */
const JFFS2_MAGIC_LE = [0x85, 0x19]
const JFFS2_MAGIC_BE = [0x19, 0x85]
const startsWith = (bytes: Buffer, prefix: number[]): boolean => prefix.every((byte, i) => bytes[i] === byte)
const erased = (head: Buffer): boolean => isErased(head, 0xff)

class MtdVolume implements Volume {
  readonly driver = 'mtd'
  readonly filesystem = 'jffs2'
  readonly device: string
  readonly description: string
  private readonly character: string
  constructor(
    private readonly partition: MtdPartition,
    name: string,
  ) {
    this.device = `mtd${partition.index}`
    this.character = `/dev/mtd${partition.index}`
    this.description = `MTD partition "${name}" (mtd${partition.index})`
  }

  /**
   * Erased or marked flash is blank. A block that is neither erased nor JFFS2
   * is what a power cut during an erase leaves, and JFFS2 recovers it on
   * mount, so any JFFS2 block makes the flash JFFS2 and the mount judges it;
   * flash without one is not JFFS2 at all.
   */
  inspect(): MediumState {
    const heads = this.blockHeads()
    if (hasFormatMarker(heads[0] ?? Buffer.alloc(0)) || heads.every(erased)) return 'blank'
    return heads.some((head) => startsWith(head, JFFS2_MAGIC_LE) || startsWith(head, JFFS2_MAGIC_BE))
      ? 'formatted'
      : 'unrecognised'
  }

  /** JFFS2 formats erased flash itself on the first mount: erase only what is not erased. */
  async format(): Promise<void> {
    if (this.blockHeads().every(erased)) return
    // No -q: flash_erase's progress lines are progress for the boot shim's timer.
    await runTool('flash_erase', [this.character, '0', '0'])
  }

  private blockHeads(): Buffer[] {
    const heads: Buffer[] = []
    for (let offset = 0; offset < this.partition.size; offset += this.partition.eraseSize)
      heads.push(readAt(this.character, offset, 16))
    return heads
  }

  mount(target: string): void {
    mount(this.device, target, 'jffs2', MountFlag.noAtime, null)
  }
}

export const mtdDriver: MediaDriver = {
  name: 'mtd',
  find(config: Config) {
    const partition = parseProcMtd(readTextFileIfExists('/proc/mtd') ?? '', config.flash.name)
    return partition
      ? new MtdVolume(partition, config.flash.name)
      : { absent: `no MTD partition named "${config.flash.name}" in /proc/mtd` }
  },
}
