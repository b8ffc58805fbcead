/**
 * `ovroot upgrade-check IMAGE`: before flashing, what the first boot on
 * IMAGE would do to this upper, class by class, from the same plan the boot
 * makes (reconcile.ts). It runs on the old firmware, which is still there,
 * so it also records what the boot will need: the running firmware when the
 * flash has no record yet (or records taken at boot for the newest
 * entries), and the old firmware's bytes of every would-be conflict under
 * .ovroot/upgrade/base/, for the three-way view after the upgrade.
 */
import * as nodePath from 'node:path'
import { loadConfig } from '../config/load.js'
import type { Config } from '../config/schema.js'
import { withStagingLock } from '../pending/lock.js'
import { readPending } from '../pending/marker.js'
import { ExitCode, OvrootError, type ExitStatus } from '../errors.js'
import { bytePathBuffer, bytesOf, showBytes, type BytePath } from '../names.js'
import { namespaceForMount, OverlayXattrs } from '../overlay/xattrs.js'
import { flashLayout, upperPath, type FlashLayout } from '../state/flash.js'
import { EntryWriter, readEntry } from '../sys/entries.js'
import { makeDirectory, readHead, removeTree, statPath } from '../sys/fs.js'
import { mountImage } from '../sys/mounts.js'
import { parentOf, under } from '../upper/entry.js'
import { describeRunning, recordFirmware } from './boot.js'
import { UPGRADE_CLASSES } from './classify.js'
import { currentIdentity, isSquashfs } from './identity.js'
import { MANIFEST_PATH, openManifest } from './manifest.js'
import { planUpgrade, reportOf, type UpgradePlan } from './reconcile.js'
import { baseSource, readFirmwareRecord, savedPath, type FirmwareRecord, type UpgradeReport } from './record.js'
import { manifestSource, treeSource } from './sources.js'

export interface UpgradeCheckOptions {
  configFile: string | undefined
  image: string
  /** The running firmware and the upper (a copy of a flash): both, or neither for the device's own. */
  lower: string | undefined
  upper: string | undefined
  json: boolean
}

export async function runUpgradeCheck(options: UpgradeCheckOptions): Promise<ExitStatus> {
  const config = loadConfig(options.configFile)
  const lower = options.lower ?? config.overlay.lower[0] ?? '/rom'
  const layout: FlashLayout = options.upper
    ? { root: nodePath.dirname(options.upper), upperName: nodePath.basename(options.upper) }
    : flashLayout(config)
  if (statPath(upperPath(layout))?.type !== 'dir')
    throw new OvrootError('ENOUPPER', ExitCode.environment, `upgrade-check: ${upperPath(layout)} is not a directory`)
  const xattrs = new OverlayXattrs(namespaceForMount(config.overlay.options))
  // Before anything is recorded on the flash: an image that cannot be read is refused first.
  const isDirectory = checkImage(options.image)
  const check = (): Promise<ExitStatus> => predict(options, config, layout, lower, xattrs, isDirectory)
  // The device's own flash: under the staging lock, so no sync or reset applies a change while the upper is read.
  return options.upper ? check() : withStagingLock(config.boot.run_dir, check)
}

async function predict(
  options: UpgradeCheckOptions,
  config: Config,
  layout: FlashLayout,
  lower: string,
  xattrs: OverlayXattrs,
  isDirectory: boolean,
): Promise<ExitStatus> {
  const recorded = await recordRunning(layout, lower, xattrs)
  const mounted = isDirectory ? { root: options.image, release: () => undefined } : await mountImage(options.image)
  try {
    const root = mounted.root.replace(/\/+$/, '')
    const next = await currentIdentity(root)
    const toDescription = describeRunning(root, next.identity)
    if (next.identity === recorded.identity) {
      process.stdout.write(
        options.json
          ? `${JSON.stringify({ from: recorded.identity, to: next.identity, same: true })}\n`
          : `upgrade-check: ${toDescription} is the firmware this flash was written against: nothing to reconcile\n`,
      )
      return ExitCode.ok
    }
    const source =
      next.source === 'manifest'
        ? manifestSource(openManifest(`${root}/${MANIFEST_PATH}`, `${options.image}: /${MANIFEST_PATH}`))
        : treeSource(bytesOf(root))
    const problems: string[] = []
    const plan = planUpgrade(bytesOf(upperPath(layout)), xattrs, baseSource(layout, recorded, problems), source, {
      preferFirmware: config.upgrade.conflicts === 'firmware',
      live: true,
    })
    saveBases(layout, plan, bytesOf(lower === '/' ? '' : lower.replace(/\/+$/, '')))
    const sides = {
      from: recorded.identity,
      to: next.identity,
      fromDescription: recorded.description,
      toDescription,
      ...(problems.length ? { problems } : {}),
    }
    const report = reportOf(plan, sides, layout)
    const scheduled = scheduledChange(layout)
    const classes = Object.fromEntries(
      UPGRADE_CLASSES.map((name) => [
        name,
        plan.entries
          .filter((item) => item.verdict.class === name && counted(item))
          .map((item) => `/${showBytes(item.path)}`),
      ]),
    )
    process.stdout.write(
      options.json
        ? `${JSON.stringify({ ...report, same: false, classes, ...(scheduled ? { scheduled } : {}) })}\n`
        : render(report, classes),
    )
    if (scheduled)
      process.stderr.write(
        `upgrade-check: a ${scheduled} is scheduled on ${layout.root}: the next boot applies it before the reconcile, so this predicts the upper as it is now, not as the boot will find it\n`,
      )
    const attention = report.counts.conflict + report.counts.hidden + report.counts.unknown
    return attention > 0 || scheduled ? ExitCode.attention : ExitCode.ok
  } finally {
    mounted.release()
  }
}

/** Whether IMAGE is a directory; a missing image, or a file or device that is no squashfs, is refused in one line. */
function checkImage(image: string): boolean {
  const stat = statPath(image)
  if (stat === undefined)
    throw new OvrootError('ENOENT', ExitCode.environment, `upgrade-check: ${image} does not exist`)
  if (stat.type === 'dir') return true
  if (!isSquashfs(readHead(image, 4)))
    throw new OvrootError(
      'EIMAGE',
      ExitCode.data,
      `upgrade-check: ${image} is not a squashfs image (no squashfs superblock at its start)`,
    )
  return false
}

/** A reset, restore or committed sync the next boot applies first: a prediction of today's upper would not hold. */
function scheduledChange(layout: FlashLayout): string | undefined {
  try {
    return readPending(layout)?.kind
  } catch {
    return 'change (its marker is unreadable)'
  }
}

const counted = (item: UpgradePlan['entries'][number]): boolean =>
  !('reason' in item.verdict && item.verdict.reason === 'container')

/** The running firmware, recorded now if the flash has no record (or only records taken at boot): what the boot will compare with. */
async function recordRunning(layout: FlashLayout, lower: string, xattrs: OverlayXattrs): Promise<FirmwareRecord> {
  const recorded = readFirmwareRecord(layout)
  const current = await currentIdentity(lower)
  if (recorded === undefined || (recorded.identity === current.identity && recorded.base === 'recorded'))
    recordFirmware({ layout, lower, xattrs, recorded, current, live: true })
  const now = readFirmwareRecord(layout)
  if (!now)
    throw new OvrootError('EFIRMWARE', ExitCode.internal, 'upgrade-check: the running firmware was not recorded')
  return now
}

/** The old firmware's bytes of every would-be conflict, while the old firmware is here to read. */
function saveBases(layout: FlashLayout, plan: UpgradePlan, lowerRoot: BytePath): void {
  removeTree(bytePathBuffer(savedPath(layout, 'base', '')))
  const writer = new EntryWriter()
  for (const item of plan.entries) {
    const o = item.sides?.old
    if (item.verdict.class !== 'conflict' || o === undefined || o === 'absent' || o === 'unknown' || o.type !== 'f')
      continue
    const source = under(lowerRoot, item.lowerPath ?? item.path)
    const entry = readEntry(source, item.path, '')
    if (entry === 'socket' || entry.type !== 'file') continue
    const saved = savedPath(layout, 'base', item.path)
    makeDirectory(bytePathBuffer(parentOf(saved)))
    writer.copy(saved, { ...entry, xattrs: [] }, source)
  }
}

function render(report: UpgradeReport, byClass: Record<string, string[]>): string {
  const lines = [`upgrade-check: ${report.fromDescription} -> ${report.toDescription}`]
  const reasons = new Map(report.entries.map((entry) => [entry.path, entry]))
  for (const name of UPGRADE_CLASSES)
    for (const path of byClass[name] ?? []) {
      const entry = reasons.get(path)
      const notes = [entry?.reason, entry?.savedBase ? 'base saved' : undefined].filter(Boolean).join('; ')
      lines.push(`${name.padEnd(10)}${path}${notes ? `  (${notes})` : ''}`)
    }
  const counts = UPGRADE_CLASSES.filter((name) => report.counts[name] > 0).map(
    (name) => `${report.counts[name]} ${name}`,
  )
  lines.push(`counts: ${counts.join(', ') || 'nothing to reconcile'}`)
  return `${lines.join('\n')}\n`
}
