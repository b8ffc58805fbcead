/**
 * One sync at a time: the daemon and a shutdown script's `ovroot sync` would
 * otherwise stage into the same directory. The lock is a directory in the
 * run directory (RAM) holding the owner's pid; a dead owner's lock is taken over.
 */
import { ExitCode, OvrootError } from '../errors.js'
import { createDirectoryExclusive, readTextFileIfExists, removeTree, writeFileAtomic } from '../sys/fs.js'
import { processAlive } from '../sys/run.js'
import type { FlashLayout } from '../pending/marker.js'
import { blockingChange, syncOnce, type SyncResult, type SyncSource } from './transaction.js'

const WAIT_MS = 10 * 60 * 1000

export type SyncOutcome = { kind: 'synced'; result: SyncResult } | { kind: 'blocked'; change: string }

export async function lockedSync(runDir: string, source: SyncSource, layout: FlashLayout): Promise<SyncOutcome> {
  const lock = `${runDir}/sync.lock`
  await acquire(lock)
  try {
    const change = blockingChange(layout)
    if (change) return { kind: 'blocked', change }
    return { kind: 'synced', result: await syncOnce(source, layout, runDir) }
  } finally {
    removeTree(lock)
  }
}

async function acquire(lock: string): Promise<void> {
  const started = Date.now()
  for (;;) {
    if (createDirectoryExclusive(lock)) {
      writeFileAtomic(`${lock}/pid`, `${process.pid}\n`)
      return
    }
    const owner = Number(readTextFileIfExists(`${lock}/pid`)?.trim())
    if (Number.isInteger(owner) && owner > 0 && !processAlive(owner)) removeTree(lock)
    else if (Date.now() - started > WAIT_MS) throw new OvrootError('ELOCKED', ExitCode.environment, `${lock}: another sync has held the lock for 10 minutes (pid ${owner})`)
    else await new Promise((resolve) => setTimeout(resolve, 100))
  }
}
