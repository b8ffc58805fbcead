/** NAND flash: a UBI volume found by name, holding UBIFS (created on first boot). */
import type { Config } from '../config/schema.js'
import { listDirectory, readAt, readTextFileIfExists, statPath } from '../sys/fs.js'
import { mount, MountFlag } from '../sys/libc.js'
import { runTool } from '../sys/run.js'
import { isErased, type MediaDriver, type MediumState, type Volume } from './types.js'

const UBI_CLASS = '/sys/class/ubi'
const UBIFS_MAGIC_LE = Buffer.from([0x31, 0x18, 0x10, 0x06])

class UbiVolume implements Volume {
  readonly driver = 'ubi'
  readonly filesystem = 'ubifs'
  readonly device: string
  readonly description: string
  constructor(
    private readonly ubiDevice: string,
    private readonly name: string,
    private readonly volumeNode: string | undefined,
  ) {
    this.device = `${ubiDevice}:${name}`
    this.description = `UBI volume "${name}" on ${ubiDevice}`
  }

  inspect(): MediumState {
    if (!this.volumeNode) return 'blank'
    const head = readAt(`/dev/${this.volumeNode}`, 0, 4096)
    if (isErased(head, 0xff) || head.length === 0) return 'blank'
    return head.subarray(0, 4).equals(UBIFS_MAGIC_LE) ? 'formatted' : 'unrecognised'
  }

  /** UBIFS formats an empty volume on its first mount: create it, or empty it. */
  async format(): Promise<void> {
    if (!this.volumeNode) await runTool('ubimkvol', [`/dev/${this.ubiDevice}`, '-N', this.name, '-m'])
    else if (!isErased(readAt(`/dev/${this.volumeNode}`, 0, 4096), 0xff))
      await runTool('ubiupdatevol', [`/dev/${this.volumeNode}`, '-t'])
  }

  mount(target: string): void {
    mount(this.device, target, 'ubifs', MountFlag.noAtime, null)
  }
}

export const ubiDriver: MediaDriver = {
  name: 'ubi',
  find(config: Config) {
    // The class directory lists devices (ubi0) and volumes (ubi0_3) side by side.
    const entries = statPath(UBI_CLASS) ? listDirectory(UBI_CLASS) : []
    const devices = entries.filter((entry) => /^ubi\d+$/.test(entry)).sort()
    if (devices.length === 0) return { absent: 'no UBI device attached' }
    for (const volume of entries.filter((entry) => /^ubi\d+_\d+$/.test(entry))) {
      if (readTextFileIfExists(`${UBI_CLASS}/${volume}/name`)?.trim() === config.flash.name)
        return new UbiVolume(volume.split('_')[0] ?? 'ubi0', config.flash.name, volume)
    }
    return new UbiVolume(devices[0] ?? 'ubi0', config.flash.name, undefined)
  },
}
