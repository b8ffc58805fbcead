/**
 * What `ovroot status` shows about syncing, kept in the run directory (RAM:
 * writing it costs the flash nothing). The day's byte count, and so the
 * budget, starts again at every boot.
 */
import { syncStatsPath } from '../state/run.js'
import { readTextFileIfExists, writeFileAtomic } from '../sys/fs.js'

export interface SyncStats {
  lastSync?: string
  lastEntries?: number
  lastBytes?: number
  /** YYYY-MM-DD of bytesToday. */
  day: string
  bytesToday: number
  /** Changes seen and not yet synced, since. */
  pendingSince?: string
  watcher?: 'watching' | 'polling' | 'stopped'
  /** Why automatic syncs are waiting (the budget, a scheduled reset). */
  waiting?: string
  /** The daemon's syncs fail: since when, why, and when it tries again. */
  failing?: string
}

const today = (): string => new Date().toISOString().slice(0, 10)

export function readStats(runDir: string): SyncStats {
  const text = readTextFileIfExists(syncStatsPath(runDir))
  const stats: SyncStats = text ? (JSON.parse(text) as SyncStats) : { day: today(), bytesToday: 0 }
  if (stats.day !== today()) return { ...stats, day: today(), bytesToday: 0 }
  return stats
}

export function writeStats(runDir: string, stats: SyncStats): void {
  writeFileAtomic(syncStatsPath(runDir), `${JSON.stringify(stats)}\n`)
}

export function recordSync(runDir: string, entries: number, bytes: number): SyncStats {
  const stats = readStats(runDir)
  const { pendingSince: _done, waiting: _cleared, ...rest } = stats
  const updated: SyncStats = {
    ...rest,
    lastSync: new Date().toISOString(),
    lastEntries: entries,
    lastBytes: bytes,
    bytesToday: stats.bytesToday + bytes,
  }
  writeStats(runDir, updated)
  return updated
}
