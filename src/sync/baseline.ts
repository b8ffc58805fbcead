/**
 * What lets a sync leave unchanged entries alone without reading their flash
 * copy: the start of the last scan whose result is wholly applied to the
 * flash. The kernel sets an inode's ctime to the current time on every change
 * to it (data, mode, owner, times, xattrs, links, a rename of it) and nothing
 * sets it back, so an entry of the RAM upper whose ctime is older than that
 * start is as the flash copy has it, and a directory that old has the same
 * names. As git's index does with the same stamps, this is a hint with limits:
 * it holds only in the boot that wrote it (the RAM upper is new each boot),
 * for the same upper and excludes, and while the wall clock (which ctime
 * follows) has not been stepped back; otherwise every entry is compared.
 * Every committed change to the flash copy drops it (commitPending), and a
 * sync records a new one only once applied.
 */
import { readTextFileIfExists, writeFileAtomic } from '../sys/fs.js'
import type { SyncSource } from './transaction.js'
import { scanBaselinePath, type FlashLayout } from '../state/flash.js'

/** ctime is stamped from a coarse clock (up to a jiffy behind), and a step back of under half this passes the clock check unseen. */
const SLACK_MS = 2000

interface Baseline {
  boot: string
  source: string
  /** Wall-clock ms: entries with an older ctime are unchanged. */
  since: number
  /** Wall clock minus the monotonic clock, ms: it shrinks when the clock is stepped back. */
  clockOffset: number
}

export interface Scan {
  /** ctime (ns) below which an entry is as the flash copy has it; undefined: compare every entry. */
  unchangedBefore: bigint | undefined
  /** This scan's result is applied: later scans may start from it. */
  record(): void
}

export function startScan(layout: FlashLayout, source: SyncSource): Scan {
  const now = Date.now()
  const clockOffset = now - Number(process.hrtime.bigint() / 1_000_000n)
  // Without a boot id (no /proc) nothing tells this boot's baseline from another's: none is kept.
  const boot = readTextFileIfExists('/proc/sys/kernel/random/boot_id')?.trim()
  if (!boot) return { unchangedBefore: undefined, record: () => undefined }
  const current = { boot, source: JSON.stringify([source.upper, source.namespace, source.exclude]) }
  const previous = readBaseline(layout)
  const valid =
    previous !== undefined &&
    previous.boot === current.boot &&
    previous.source === current.source &&
    clockOffset >= previous.clockOffset - SLACK_MS / 2
  return {
    unchangedBefore: valid ? BigInt(previous.since) * 1_000_000n : undefined,
    record: () =>
      writeFileAtomic(
        scanBaselinePath(layout),
        `${JSON.stringify({ ...current, since: now - SLACK_MS, clockOffset } satisfies Baseline)}\n`,
      ),
  }
}

function readBaseline(layout: FlashLayout): Baseline | undefined {
  const text = readTextFileIfExists(scanBaselinePath(layout))
  try {
    const parsed = text === undefined ? undefined : (JSON.parse(text) as Partial<Baseline>)
    if (
      typeof parsed?.boot === 'string' &&
      typeof parsed.source === 'string' &&
      typeof parsed.since === 'number' &&
      typeof parsed.clockOffset === 'number'
    )
      return parsed as Baseline
  } catch {
    // a torn or foreign file is no baseline: compare everything
  }
  return undefined
}
