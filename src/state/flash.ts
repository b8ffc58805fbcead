/**
 * Everything ovroot keeps on the flash, under [overlay] dir (a mounted flash
 * filesystem, or the directory holding an unmounted upper):
 *
 *   upper/               the overlay's upper (or, with [sync], the copy a sync keeps)
 *   work/                the overlay's work directory
 *   .ovroot/state.json   written once, when boot formats the flash (`FormatRecord`)
 *   .ovroot/pending      the marker that commits a staged change (pending/marker.ts)
 *   .ovroot/staged/      a change being staged, or staged and committed
 *   .ovroot/replaced/    the replaced upper, between the swap and its removal
 *   .ovroot/sync-baseline  where the last sync's scan began (sync/baseline.ts)
 *   .ovroot/reserve      random bytes held back so a change can be committed on a full flash
 *   .ovroot/firmware     which firmware the upper was written against (upgrade/record.ts)
 *   .ovroot/base.manifest  that firmware's records: its shipped manifest, or those taken at boot
 *   .ovroot/base.absent    (records taken at boot) paths that firmware did not have
 *   .ovroot/upgrade/     the last upgrade's report.json, the user's copies a
 *                        `conflicts = firmware` upgrade replaced (user/), and the
 *                        old firmware's bytes `upgrade-check` saved for would-be conflicts (base/)
 *
 * Everything in .ovroot/ is replaced atomically.
 */

export const FLASH_STATE_DIR = '.ovroot'

export interface FlashLayout {
  /** The flash filesystem's mount point (or the directory holding an unmounted upper). */
  root: string
  upperName: string
}

/** The device's own flash: [overlay] dir, holding upper/ and work/. */
export function flashLayout(config: { overlay: { dir: string } }): FlashLayout {
  return { root: config.overlay.dir, upperName: 'upper' }
}

export const upperPath = (layout: FlashLayout): string => `${layout.root}/${layout.upperName}`
export const workPath = (layout: FlashLayout): string => `${layout.root}/work`
/** The device's upper: `<[overlay] dir>/upper`. */
export const upperDir = (config: { overlay: { dir: string } }): string => upperPath(flashLayout(config))
export const workDir = (config: { overlay: { dir: string } }): string => workPath(flashLayout(config))

export const stateDir = (layout: FlashLayout): string => `${layout.root}/${FLASH_STATE_DIR}`
export const markerPath = (layout: FlashLayout): string => `${stateDir(layout)}/pending`
/** A change being staged (a restored upper, a sync's entries), or staged and committed. */
export const stagedPath = (layout: FlashLayout): string => `${stateDir(layout)}/staged`
/** The replaced upper, between the swap and its removal. */
export const replacedPath = (layout: FlashLayout): string => `${stateDir(layout)}/replaced`
/** Where the last sync's scan began (src/sync/baseline.ts): every committed change drops it. */
export const scanBaselinePath = (layout: FlashLayout): string => `${stateDir(layout)}/sync-baseline`
/** Held back so that a change can still be scheduled on a full flash (pending/marker.ts). */
export const reservePath = (layout: FlashLayout): string => `${stateDir(layout)}/reserve`
/** Firmware upgrades (upgrade/record.ts). */
export const firmwareRecordPath = (layout: FlashLayout): string => `${stateDir(layout)}/firmware`
export const baseManifestPath = (layout: FlashLayout): string => `${stateDir(layout)}/base.manifest`
export const baseAbsentPath = (layout: FlashLayout): string => `${stateDir(layout)}/base.absent`
export const upgradeDir = (layout: FlashLayout): string => `${stateDir(layout)}/upgrade`
export const formatRecordPath = (layout: FlashLayout): string => `${stateDir(layout)}/state.json`

/** What boot writes to .ovroot/state.json when it formats the flash. */
export interface FormatRecord {
  /** ISO time of the format. */
  formatted: string
  /** `ovroot VERSION` */
  by: string
  filesystem: string
}
