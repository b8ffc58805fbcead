/**
 * Every medium the user's data can live on gets the same small interface,
 * tried in the configured priority order (as fstools' volume drivers are):
 * find the flash, say what is on it, format it, mount it.
 */
import type { Config, MediaDriverName } from '../config/schema.js'

/** blank: erased or carrying the format marker, nothing to lose. */
export type MediumState = 'blank' | 'formatted' | 'unrecognised'

export interface Volume {
  readonly driver: MediaDriverName
  /** Human description, e.g. `MTD partition "rootfs_data" (mtd3)`. */
  readonly description: string
  /** What mount(2) takes as the source. */
  readonly device: string
  readonly filesystem: string
  inspect(): MediumState
  format(): Promise<void>
  /** Repair what the filesystem itself says needs it, before it is mounted (ext4: errors recorded, not clean). */
  check?(): Promise<void>
  mount(target: string): void
}

export interface MediaDriver {
  readonly name: MediaDriverName
  /** The volume this driver handles, or why it found none. */
  find(config: Config): Volume | { absent: string }
}

/** 0xdeadc0de at the start: OpenWrt's "format me at next boot" marker. */
export function hasFormatMarker(head: Buffer): boolean {
  return head.length >= 4 && head.readUInt32BE(0) === 0xdeadc0de
}

export function isErased(bytes: Buffer, fill: number): boolean {
  for (const byte of bytes) if (byte !== fill) return false
  return bytes.length > 0
}
