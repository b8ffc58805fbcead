/**
 * What `ovroot status` shows about syncing, kept in the run directory (RAM:
 * writing it costs the flash nothing). The day's byte count, and so the
 * budget, starts again at every boot and at midnight (UTC).
 */
import { syncStatsPath } from '../state/run.js'
import { readTextFileIfExists, writeFileAtomic } from '../sys/fs.js'
import { processStart } from '../sys/run.js'

export interface SyncStats {
  lastSync?: string
  lastEntries?: number
  lastBytes?: number
  /** YYYY-MM-DD of bytesToday. */
  day: string
  bytesToday: number
  /** Changes seen and not yet synced, since. */
  pendingSince?: string
  /** `gone`: the daemon that wrote `watching` or `polling` ended without stopping (SIGKILL, the OOM killer). */
  watcher?: 'watching' | 'polling' | 'stopped' | 'gone'
  /** The daemon's pid and start time (sys/run.ts `processStart`): a pid alone may be another process's by now. */
  daemon?: { pid: number; started: string }
  /** Why automatic syncs are waiting (the budget, a scheduled reset). */
  waiting?: string
  /** What they wait for: the budget's wait ends with the day. */
  waitingFor?: 'budget' | 'scheduled change'
  /** The last sync failed (the daemon's: since when, why, and when it tries again; or a command's). */
  failing?: string
}

const today = (): string => new Date().toISOString().slice(0, 10)

export function readStats(runDir: string): SyncStats {
  const text = readTextFileIfExists(syncStatsPath(runDir))
  const stats: SyncStats = text ? (JSON.parse(text) as SyncStats) : { day: today(), bytesToday: 0 }
  if (stats.day === today()) return stats
  const { waiting, waitingFor, ...rest } = stats
  return { ...rest, ...(waitingFor === 'budget' ? {} : { waiting, waitingFor }), day: today(), bytesToday: 0 }
}

/** The stats as they stand: a daemon said to be watching that is not running any more is `gone`. */
export function currentStats(runDir: string): SyncStats {
  const stats = readStats(runDir)
  const running = stats.watcher === 'watching' || stats.watcher === 'polling'
  if (running && (stats.daemon === undefined || processStart(stats.daemon.pid) !== stats.daemon.started))
    return { ...stats, watcher: 'gone' }
  return stats
}

/** Milliseconds until the day of bytesToday ends. */
export function untilTomorrow(): number {
  const now = new Date()
  return Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1) - now.getTime()
}

export function writeStats(runDir: string, stats: SyncStats): void {
  writeFileAtomic(syncStatsPath(runDir), `${JSON.stringify(stats)}\n`)
}

export function recordSync(runDir: string, entries: number, bytes: number): SyncStats {
  const stats = readStats(runDir)
  const { pendingSince: _done, waiting: _cleared, waitingFor: _for, failing: _recovered, ...rest } = stats
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

/** A sync that failed, for status; the next one that succeeds clears it. */
export function recordFailure(runDir: string, failing: string): void {
  writeStats(runDir, { ...readStats(runDir), failing })
}
