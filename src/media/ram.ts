/** The last resort: a tmpfs. Always present, never persistent. */
import type { Config } from '../config/schema.js'
import { mount } from '../sys/libc.js'
import type { MediaDriver, Volume } from './types.js'

export function ramVolume(size: string): Volume {
  return {
    driver: 'ram',
    filesystem: 'tmpfs',
    device: 'tmpfs',
    description: `RAM (tmpfs, size ${size})`,
    inspect: () => 'blank',
    format: () => Promise.resolve(),
    mount: (target) => mount('tmpfs', target, 'tmpfs', 0, `size=${size},mode=0755`),
  }
}

export const ramDriver: MediaDriver = {
  name: 'ram',
  find: (config: Config) => ramVolume(config.flash.ram_size),
}
