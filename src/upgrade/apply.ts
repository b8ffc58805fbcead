/**
 * Applying a committed upgrade (pending/apply.ts, kind `upgrade`), in an
 * order a rerun after a power cut finishes: the report and the new base
 * files leave the staging first, then the sync's flat apply (removals,
 * moves, parents; it removes the staging last), then identity metadata is
 * cleared from the whole upper, and the new firmware record is written
 * last. Until that record is written a boot sees the old record and the
 * marker, and reruns this; after it, the upper is reconciled. Each step
 * leaves nothing for itself to redo, so none is done twice.
 */
import { bytesOf } from '../names.js'
import { clearFilesystemIdentity } from '../overlay/identity.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { applyFlat } from '../pending/flat.js'
import { syncStagingPath, type PendingChange } from '../pending/marker.js'
import { baseAbsentPath, baseManifestPath, upgradeDir, upperPath, type FlashLayout } from '../state/flash.js'
import { makeDirectory, pathExists, removeFile, removeTree, renamePath } from '../sys/fs.js'
import { readUpgradeReport, reportPath, writeFirmwareRecord, type UpgradeReport } from './record.js'

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
  if (pathExists(staging)) applyFlat(staging, upperPath(layout), change)
  clearFilesystemIdentity(bytesOf(upperPath(layout)), xattrs)
  writeFirmwareRecord(layout, change.firmware)
  return readUpgradeReport(layout)
}

function moveIfStaged(from: string, to: string, prepare: () => void): void {
  if (!pathExists(from)) return
  prepare()
  renamePath(from, to)
}
