/**
 * What the boot runs on the firmware it finds (src/upgrade/boot.ts
 * onFirmware), outside a boot, for the upgrade benchmark: FLASH holds
 * upper/, work/ and .ovroot/ as a device's flash does, LOWER is the
 * firmware. Prints the counts of the reconcile when there was one.
 * Bundled by upgrade-bench.mjs.
 */
import { OverlayXattrs } from '../../src/overlay/xattrs.js'
import { workPath } from '../../src/state/flash.js'
import { countsText, onFirmware } from '../../src/upgrade/boot.js'
import { currentIdentity } from '../../src/upgrade/identity.js'
import { readFirmwareRecord } from '../../src/upgrade/record.js'

const [root, lower] = process.argv.slice(2)
if (!root || !lower) throw new Error('usage: upgrade-firmware FLASH LOWER')
const layout = { root, upperName: 'upper' }
const summary = await onFirmware({
  layout,
  lower,
  xattrs: new OverlayXattrs('trusted'),
  preferFirmware: false,
  recorded: readFirmwareRecord(layout),
  current: await currentIdentity(lower),
  work: workPath(layout),
})
process.stdout.write(`${summary ? countsText(summary.counts) : 'recorded'}\n`)
