/**
 * A sync under the lock every command that stages a change takes
 * (pending/lock.ts): the daemon and a shutdown script's `ovroot sync` would
 * otherwise stage into the same directory, and a reset or restore remove it.
 */
import { withStagingLock } from '../pending/lock.js'
import { blockingChange, syncOnce, type SyncResult, type SyncSource } from './transaction.js'
import type { FlashLayout } from '../state/flash.js'

export type SyncOutcome = { kind: 'synced'; result: SyncResult } | { kind: 'blocked'; change: string }

export async function lockedSync(runDir: string, source: SyncSource, layout: FlashLayout): Promise<SyncOutcome> {
  return withStagingLock(runDir, async () => {
    const change = blockingChange(layout)
    if (change) return { kind: 'blocked', change }
    return { kind: 'synced', result: await syncOnce(source, layout, runDir) }
  })
}
