/**
 * Applying a committed upgrade (pending/apply.ts, kind `upgrade`), in an
 * order a rerun after a power cut finishes: the report and the new base
 * files leave the staging first, then the sync's flat apply (removals,
 * moves, parents; it removes the staging last; the inode flags of what it
 * changes cleared first and set back last), identity metadata cleared
 * within it, once the flags are, from every entry that stays (the staging
 * lists them), and the new firmware record is written last. Until that record is written a boot sees the old record and the
 * marker, and reruns this; after it, the upper is reconciled. Each step
 * leaves nothing for itself to redo, so none is done twice.
 */
import { bytesOf, parseShownName, type BytePath } from '../names.js'
import { clearFilesystemIdentity, clearIdentityOf } from '../overlay/identity.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { applyFlat } from '../pending/flat.js'
import { syncStagingPath, type PendingChange } from '../pending/marker.js'
import { baseAbsentPath, baseManifestPath, upgradeDir, upperPath, type FlashLayout } from '../state/flash.js'
import { makeDirectory, pathExists, readTextFileIfExists, removeFile, removeTree, renamePath } from '../sys/fs.js'
import { under } from '../upper/entry.js'
import { readUpgradeReport, reportPath, writeFirmwareRecord, type UpgradeReport } from './record.js'

/** The staging's list of entries whose identity xattrs the apply clears (reconcile.ts writes it): one a line, the shown path and the names, tab-separated. */
export const IDENTITY_LIST = 'identity'

export function applyUpgrade(
  layout: FlashLayout,
  change: Extract<PendingChange, { kind: 'upgrade' }>,
  xattrs: OverlayXattrs,
): UpgradeReport | undefined {
  const staging = syncStagingPath(layout, change)
  moveIfStaged(`${staging}/upgrade/report.json`, reportPath(layout), () => makeDirectory(upgradeDir(layout)))
  moveIfStaged(`${staging}/upgrade/user`, `${upgradeDir(layout)}/user`, () => removeTree(`${upgradeDir(layout)}/user`))
  // Records taken at boot come with their absent list; a shipped manifest has none.
  if (pathExists(`${staging}/base.absent`)) renamePath(`${staging}/base.absent`, baseAbsentPath(layout))
  if (pathExists(`${staging}/base.manifest`)) {
    if (change.firmware.base === 'shipped') removeFile(baseAbsentPath(layout))
    renamePath(`${staging}/base.manifest`, baseManifestPath(layout))
  }
  if (pathExists(staging)) {
    const list = readTextFileIfExists(`${staging}/${IDENTITY_LIST}`)
    // Once the flags of what it names are cleared: an immutable or append-only entry refuses removexattr.
    applyFlat(staging, upperPath(layout), change, () => {
      if (list !== undefined) clearListedIdentity(list, bytesOf(upperPath(layout)))
    })
    // A staging an older ovroot made lists none: the whole upper is walked instead.
    if (list === undefined) clearFilesystemIdentity(bytesOf(upperPath(layout)), xattrs)
  }
  writeFirmwareRecord(layout, change.firmware)
  return readUpgradeReport(layout)
}

/** The staging's identity list applied (a line done twice is done once). */
function clearListedIdentity(list: string, upper: BytePath): void {
  for (const line of list.split('\n')) {
    const [shown, ...names] = line.split('\t')
    const path = shown && parseShownName(shown)
    if (path) clearIdentityOf(under(upper, path), names)
  }
}

function moveIfStaged(from: string, to: string, prepare: () => void): void {
  if (!pathExists(from)) return
  prepare()
  renamePath(from, to)
}
