import type { MediaDriverName } from '../config/schema.js'
import { blockDriver } from './block.js'
import { mtdDriver } from './mtd.js'
import { ramDriver } from './ram.js'
import type { MediaDriver } from './types.js'
import { ubiDriver } from './ubi.js'

export const MEDIA_DRIVER_TABLE: Record<MediaDriverName, MediaDriver> = {
  mtd: mtdDriver,
  ubi: ubiDriver,
  block: blockDriver,
  ram: ramDriver,
}
