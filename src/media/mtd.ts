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
    if (match && match[4] === name) return { index: Number(match[1]), size: parseInt(match[2] ?? '0', 16), eraseSize: parseInt(match[3] ?? '0', 16) }
  }
  return undefined
}

/** A JFFS2 node (or clean marker) starts every block JFFS2 has written. */
const JFFS2_MAGIC_LE = [0x85, 0x19]
const JFFS2_MAGIC_BE = [0x19, 0x85]
const startsWith = (bytes: Buffer, prefix: number[]): boolean => prefix.every((byte, i) => bytes[i] === byte)

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

  inspect(): MediumState {
    let erased = true
    for (let offset = 0; offset < this.partition.size; offset += this.partition.eraseSize) {
      const head = readAt(this.character, offset, 16)
      if (offset === 0 && hasFormatMarker(head)) return 'blank'
      if (isErased(head, 0xff)) continue
      if (!startsWith(head, JFFS2_MAGIC_LE) && !startsWith(head, JFFS2_MAGIC_BE)) return 'unrecognised'
      erased = false
    }
    return erased ? 'blank' : 'formatted'
  }

  async format(): Promise<void> {
    // JFFS2 formats erased flash itself on the first mount; erase what is not erased.
    await runTool('flash_erase', ['-q', this.character, '0', '0'])
  }

  mount(target: string): void {
    mount(this.device, target, 'jffs2', MountFlag.noAtime, null)
  }
}

export const mtdDriver: MediaDriver = {
  name: 'mtd',
  find(config: Config) {
    const partition = parseProcMtd(readTextFileIfExists('/proc/mtd') ?? '', config.flash.name)
    return partition ? new MtdVolume(partition, config.flash.name) : { absent: `no MTD partition named "${config.flash.name}" in /proc/mtd` }
  },
}
