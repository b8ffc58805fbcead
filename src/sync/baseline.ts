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
 * sync records a new one only once applied, and only when it left no entry
 * for the next sync.
 *
 * A directory renamed to a path the copy has too (`mv conf.new conf`) gets a
 * new ctime, but its children keep theirs, and they are not what the copy
 * holds at their new path. So the baseline comes with the inode number each
 * directory had at that scan (kept in the run directory, RAM: inode numbers
 * hold only in this boot, and they are the RAM upper's): a directory whose
 * ctime moved and whose inode is not the one its path had is compared whole,
 * every entry below it. Any other entry with an old ctime is where it was: it
 * was not renamed (that moves its ctime) and, by the same test on each
 * directory above it, neither was any of them.
 */
import { createHash, randomBytes } from 'node:crypto'
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
  /** Names the directory inodes recorded with it. */
  token: string
}

interface DirectoryInodes {
  token: string
  /** Each directory of the upper the scan visited, with its inode number (decimal). */
  directories: [string, string][]
}

export interface Scan {
  /** ctime (ns) below which an entry is as the flash copy has it; undefined: compare every entry. */
  unchangedBefore: bigint | undefined
  /** The inode number the directory at `path` had at the baseline's scan; undefined: none was there. */
  directoryInode(path: string): bigint | undefined
  /** This scan's result, whose directories had these inodes, is applied: later scans may start from it. */
  record(directories: ReadonlyMap<string, bigint>): void
}

export function startScan(layout: FlashLayout, source: SyncSource, runDir: string): Scan {
  const now = Date.now()
  const clockOffset = now - Number(process.hrtime.bigint() / 1_000_000n)
  // Without a boot id (no /proc) nothing tells this boot's baseline from another's: none is kept.
  const boot = readTextFileIfExists('/proc/sys/kernel/random/boot_id')?.trim()
  if (!boot) return { unchangedBefore: undefined, directoryInode: () => undefined, record: () => undefined }
  const current = { boot, source: JSON.stringify([source.upper, source.namespace, source.exclude]) }
  // One file per flash copy: a `--to` mirror's syncs do not invalidate the device's.
  const inodesFile = `${runDir}/sync-directories-${createHash('sha256').update(layout.root).digest('hex').slice(0, 16)}`
  const previous = readBaseline(layout)
  const inodes = previous && readDirectoryInodes(inodesFile, previous.token)
  const valid =
    previous !== undefined &&
    inodes !== undefined &&
    previous.boot === current.boot &&
    previous.source === current.source &&
    clockOffset >= previous.clockOffset - SLACK_MS / 2
  return {
    unchangedBefore: valid ? BigInt(previous.since) * 1_000_000n : undefined,
    directoryInode: (path) => inodes?.get(path),
    record: (directories) => {
      const token = randomBytes(8).toString('hex')
      // The inodes first: a baseline is only ever read with the inodes of its own scan. Neither is flushed: both
      // hold only in this boot (a power cut ends it), and an fsync is a journal commit on the flash each.
      writeFileAtomic(
        inodesFile,
        JSON.stringify({
          token,
          directories: [...directories].map(([path, inode]) => [path, inode.toString()]),
        } satisfies DirectoryInodes),
        false,
      )
      writeFileAtomic(
        scanBaselinePath(layout),
        `${JSON.stringify({ ...current, since: now - SLACK_MS, clockOffset, token } satisfies Baseline)}\n`,
        false,
      )
    },
  }
}

function readDirectoryInodes(file: string, token: string): Map<string, bigint> | undefined {
  const text = readTextFileIfExists(file)
  try {
    const parsed = text === undefined ? undefined : (JSON.parse(text) as Partial<DirectoryInodes>)
    if (parsed?.token === token && Array.isArray(parsed.directories))
      return new Map(parsed.directories.map(([path, inode]) => [path, BigInt(inode)]))
  } catch {
    // a torn file: no baseline
  }
  return undefined
}

function readBaseline(layout: FlashLayout): Baseline | undefined {
  const text = readTextFileIfExists(scanBaselinePath(layout))
  try {
    const parsed = text === undefined ? undefined : (JSON.parse(text) as Partial<Baseline>)
    if (
      typeof parsed?.boot === 'string' &&
      typeof parsed.source === 'string' &&
      typeof parsed.since === 'number' &&
      typeof parsed.clockOffset === 'number' &&
      typeof parsed.token === 'string'
    )
      return parsed as Baseline
  } catch {
    // a torn or foreign file is no baseline: compare everything
  }
  return undefined
}
