/** What the boot's firmware check (src/boot/agent.ts) hands `onFirmware`, for the host's upgrade tests. */
import { OverlayXattrs } from '../../src/overlay/xattrs.js'
import { currentIdentity } from '../../src/upgrade/identity.js'
import { firmwareRecordAtBoot } from '../../src/upgrade/record.js'
import type { FlashLayout } from '../../src/state/flash.js'

export async function bootContext(
  layout: FlashLayout,
  lower: string,
  options: { preferFirmware?: boolean; xattrs?: OverlayXattrs } = {},
) {
  return {
    layout,
    lower,
    xattrs: options.xattrs ?? new OverlayXattrs('trusted'),
    preferFirmware: options.preferFirmware ?? false,
    ...firmwareRecordAtBoot(layout),
    current: await currentIdentity(lower),
    work: `${layout.root}/work`,
  }
}
