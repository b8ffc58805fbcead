/** What the boot's firmware check (src/boot/agent.ts) hands `onFirmware`, for the host's upgrade tests. */
import { OverlayXattrs } from '../../src/overlay/xattrs.js'
import { currentIdentity } from '../../src/upgrade/identity.js'
import { firmwareRecordAtBoot } from '../../src/upgrade/record.js'
import * as fs from 'node:fs'
import type { FlashLayout } from '../../src/state/flash.js'
import type { FirmwareContext } from '../../src/upgrade/boot.js'

export async function bootContext(
  layout: FlashLayout,
  lower: string,
  options: { preferFirmware?: boolean; xattrs?: OverlayXattrs } = {},
): Promise<FirmwareContext> {
  return {
    recorded: undefined,
    layout,
    lower,
    xattrs: options.xattrs ?? new OverlayXattrs('trusted'),
    preferFirmware: options.preferFirmware ?? false,
    ...firmwareRecordAtBoot(layout),
    current: await currentIdentity(lower),
    work: `${layout.root}/work`,
  }
}

/** A flash directory under `dir` with its upper and work made, as the boot leaves them. */
export function emptyFlash(dir: string): { layout: FlashLayout; upper: string; work: string } {
  const layout = { root: `${dir}/flash`, upperName: 'upper' }
  const upper = `${layout.root}/upper`
  const work = `${layout.root}/work`
  fs.mkdirSync(upper, { recursive: true })
  fs.mkdirSync(work)
  return { layout, upper, work }
}
