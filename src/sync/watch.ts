/**
 * `ovroot sync --watch`: the daemon. inotify's events (sys/watch.ts) are hints that
 * something changed, never the list of changes (a file in a just-created
 * directory comes before its watch, a rename is two names, the inotify limit
 * stops watches): every sync rescans the whole upper against the flash copy
 * (baseline.ts keeps that cheap). It watches directories only, and their
 * events stand for the files in them. A sync runs after `quiet` seconds without events, or
 * `max_delay` after the first unsynced event; a watch that fails falls back
 * to a rescan every `quiet` seconds, saying so once. SIGTERM (shutdown) makes
 * a last sync, whatever the budget. A file mapped shared and writable is
 * synced at least every `max_delay`: writes through the mapping raise no event.
 */
import type { Config } from '../config/schema.js'
import { ExitCode, OvrootError, type ExitStatus } from '../errors.js'
import { filesystemInfo } from '../sys/fs.js'
import { sharedWritableInodes } from '../sys/mappings.js'
import { watchTree } from '../sys/watch.js'
import { lockedSync } from './lock.js'
import { processStart } from '../sys/run.js'
import { readStats, recordSync, untilTomorrow, writeStats, type SyncStats } from './stats.js'
import type { SyncSource } from './transaction.js'
import type { FlashLayout } from '../state/flash.js'

/** The RAM upper this full is worth a warning: past it, writes fail. */
const RAM_WARNING = 0.9
/** A failing sync is retried after `quiet`, doubled at each failure up to this: never a spin writing the flash and the log. */
const MAX_BACKOFF_MS = 10 * 60 * 1000
/** SIGTERM: the final sync's time (shutdown kills what is left soon after anyway); then the daemon exits regardless. */
const FINAL_SYNC_MS = 60 * 1000

export async function watchAndSync(config: Config, source: SyncSource, layout: FlashLayout): Promise<ExitStatus> {
  const runDir = config.boot.run_dir
  const quietMs = config.sync.quiet * 1000
  const maxDelayMs = config.sync.max_delay * 1000
  let firstChange: number | undefined
  let lastChange = 0
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> | undefined
  let warnedFull = false
  /** Set once watching failed: a rescan every `quiet` instead. */
  let poll: NodeJS.Timeout | undefined
  // Status tells this daemon from a dead one whose pid another process may have now.
  const started = processStart(process.pid)
  const self = started === undefined ? {} : { daemon: { pid: process.pid, started } }
  let failures = 0
  /** Not before this (ms): a failing sync backs off. */
  let retryAt = 0
  // An object, not lets: callbacks set these, and TypeScript would take a let for never changed.
  const daemon = { failed: false, stopping: false }
  const log = (line: string): void => {
    process.stderr.write(`ovroot sync: ${line}\n`)
  }
  const update = (change: (stats: SyncStats) => SyncStats): void => writeStats(runDir, change(readStats(runDir)))

  const sync = async ({ automatic }: { automatic: boolean }): Promise<void> => {
    if (automatic && daemon.stopping) return
    const stats = readStats(runDir)
    if (automatic && config.sync.budget > 0 && stats.bytesToday >= config.sync.budget) {
      update((current) => ({
        ...current,
        waiting: `the day's write budget (${config.sync.budget} bytes) is spent: automatic syncs wait for ovroot sync, shutdown or tomorrow`,
        waitingFor: 'budget',
      }))
      // The count starts again at midnight: what waits is synced then, with no new change needed.
      retryAt = Date.now() + untilTomorrow()
      schedule()
      return
    }
    const scanned = new Date().toISOString()
    const changesFrom = firstChange
    firstChange = undefined
    try {
      const outcome = await lockedSync(runDir, source, layout)
      if (outcome.kind === 'blocked') {
        update((current) => ({
          ...current,
          waiting: `a ${outcome.change} is scheduled for the next boot: syncing would undo it`,
          waitingFor: 'scheduled change',
        }))
        return
      }
      if (outcome.result.written + outcome.result.removed > 0)
        recordSync(runDir, outcome.result.written + outcome.result.removed, outcome.result.bytes)
      else update(({ pendingSince: _synced, waiting: _cleared, waitingFor: _for, failing: _ok, ...current }) => current)
      // Polling sees no change: any made since this scan began is found only by the next one.
      if (poll) update((current) => ({ ...current, pendingSince: scanned }))
      daemon.failed = false
      failures = 0
      retryAt = 0
    } catch (error) {
      daemon.failed = true
      failures++
      const backoffMs = Math.min(quietMs * 2 ** (failures - 1), MAX_BACKOFF_MS)
      retryAt = Date.now() + backoffMs
      // What failed is still only in RAM, changed or not since: a first sync that failed is retried too.
      firstChange ??= changesFrom ?? Date.now()
      const message = error instanceof OvrootError ? error.message : String(error)
      update((current) => ({
        ...current,
        failing: `${new Date().toISOString()}: ${message} (${failures} failures in a row; next try in ${Math.round(backoffMs / 1000)} s)`,
      }))
      log(`sync failed: ${message}; retrying in ${Math.round(backoffMs / 1000)} s`)
      if (!daemon.stopping) schedule()
    }
    warnWhenFull()
  }

  const warnWhenFull = (): void => {
    const info = filesystemInfo(source.upper)
    const used = 1 - info.availableBlocks / Math.max(1, info.blocks)
    if (used >= RAM_WARNING && !warnedFull)
      log(
        `the RAM upper is ${Math.round(used * 100)}% full ([flash] ram_size): writes will soon fail with "no space left"`,
      )
    warnedFull = used >= RAM_WARNING
  }

  const run = (how: { automatic: boolean }): Promise<void> => {
    running = (running ?? Promise.resolve()).then(() => sync(how))
    return running
  }

  function schedule(): void {
    if (timer) clearTimeout(timer)
    if (firstChange === undefined) return
    const due = Math.max(Math.min(lastChange + quietMs, firstChange + maxDelayMs), retryAt)
    timer = setTimeout(() => void run({ automatic: true }), Math.max(0, due - Date.now()))
  }

  const changed = (): void => {
    const now = Date.now()
    if (firstChange === undefined)
      update((stats) => ({ ...stats, pendingSince: stats.pendingSince ?? new Date(now).toISOString() }))
    firstChange ??= now
    lastChange = now
    schedule()
  }

  // A file's change is its directory's event: one inotify watch per directory, and no work per event (sys/watch.ts).
  const watcher = watchTree(source.upper, changed, (error) => {
    log(`watching ${source.upper} failed (${error.message}): rescanning every ${config.sync.quiet} s instead`)
    update((stats) => ({
      ...stats,
      watcher: 'polling',
      ...self,
      pendingSince: stats.pendingSince ?? new Date().toISOString(),
    }))
    poll = setInterval(() => void run({ automatic: true }), quietMs)
  })
  // A write through a shared writable mapping raises no event and moves no time (sys/mappings.ts): while a file of
  // the upper is mapped so, a sync (which compares it) runs at least every max_delay.
  const mappedCheck = setInterval(() => {
    if (firstChange === undefined && sharedWritableInodes(source.upper).size > 0) changed()
  }, maxDelayMs)
  // From the start: a SIGTERM during the first sync still gets its final sync, after that one.
  let stopped: () => void = () => undefined
  const finished = new Promise<void>((resolve) => (stopped = resolve))
  const stop = (): void => {
    if (daemon.stopping) return
    daemon.stopping = true
    if (timer) clearTimeout(timer)
    if (poll) clearInterval(poll)
    clearInterval(mappedCheck)
    watcher.close()
    const deadline = setTimeout(() => {
      log(`the final sync took over ${FINAL_SYNC_MS / 1000} s: stopping without it`)
      daemon.failed = true
      stopped()
    }, FINAL_SYNC_MS)
    void run({ automatic: false }).finally(() => {
      clearTimeout(deadline)
      stopped()
    })
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
  // Once the watch is in place, what changed before (or while the daemon was down) is synced; only then is the daemon "watching".
  if (!daemon.stopping) await run({ automatic: true })
  if (!daemon.stopping) update((stats) => ({ ...stats, watcher: poll ? 'polling' : 'watching', ...self }))

  await finished
  update((stats) => ({ ...stats, watcher: 'stopped' }))
  // A final sync given up while it waits for the lock would keep the process alive: it must not.
  setTimeout(() => process.exit(), 1000).unref()
  if (daemon.failed)
    throw new OvrootError(
      'ESYNC',
      ExitCode.io,
      'the last sync before stopping failed: changes since the previous sync are only in RAM',
    )
  return ExitCode.ok
}
