/** NAND flash: a UBI volume found by name, holding UBIFS (created on first boot). */
import type { Config } from '../config/schema.js'
import { listDirectoryIfExists, readAt, readTextFileIfExists } from '../sys/fs.js'
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

  async format(): Promise<void> {
    // An empty UBI volume is formatted by UBIFS on its first mount.
    if (this.volumeNode) await runTool('ubirmvol', [`/dev/${this.ubiDevice}`, '-N', this.name])
    await runTool('ubimkvol', [`/dev/${this.ubiDevice}`, '-N', this.name, '-m'])
  }

  mount(target: string): void {
    mount(this.device, target, 'ubifs', MountFlag.noAtime, null)
  }
}

export const ubiDriver: MediaDriver = {
  name: 'ubi',
  find(config: Config) {
    const devices = listDirectoryIfExists(UBI_CLASS).filter((entry) => /^ubi\d+$/.test(entry))
    if (devices.length === 0) return { absent: 'no UBI device attached' }
    for (const device of devices) {
      for (const volume of listDirectoryIfExists(`${UBI_CLASS}/${device}`).filter((entry) => entry.startsWith(`${device}_`))) {
        if (readTextFileIfExists(`${UBI_CLASS}/${device}/${volume}/name`)?.trim() === config.flash.name) return new UbiVolume(device, config.flash.name, volume)
      }
    }
    return new UbiVolume(devices[0] ?? 'ubi0', config.flash.name, undefined)
  },
}
