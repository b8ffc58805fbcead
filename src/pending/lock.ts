/**
 * One command at a time stages a change on the flash: the sync daemon, a
 * shutdown script's `ovroot sync`, reset, restore and their `--cancel` all
 * write `.ovroot/staged` and the marker, and one's cleanup would remove
 * another's staging or marker. The lock is a directory in the run directory
 * (RAM: a reboot frees it) holding the owner's pid and command line; a dead
 * owner's lock is taken over. A command that finds it taken says once whom
 * it waits for, and gives up after a bound with the same words.
 */
import { stagingLockPath } from '../state/run.js'
import { ExitCode, OvrootError } from '../errors.js'
import { createDirectoryExclusive, readTextFileIfExists, removeTree, writeFileAtomic } from '../sys/fs.js'
import { processAlive } from '../sys/run.js'
import { statEntry } from '../sys/entries.js'

/** A sync of a large change on slow NOR flash takes minutes; longer than this is a stuck holder. */
export const LOCK_WAIT_MS = 10 * 60 * 1000

export async function withStagingLock<T>(runDir: string, work: () => Promise<T> | T): Promise<T> {
  const lock = stagingLockPath(runDir)
  await acquire(lock)
  try {
    return await work()
  } finally {
    removeTree(lock)
  }
}

/**
 * A lock that names no owner long after it was made: its maker was killed (SIGKILL, the OOM killer) between
 * making it and writing its pid, which takes microseconds. Left, it would hold every sync off until a reboot.
 */
function ownerless(lock: string, pidLine: string): boolean {
  if (pidLine.trim() !== '') return false
  const made = statEntry(lock)
  return made !== undefined && Date.now() - Number(made.mtimeNs / 1_000_000n) > OWNERLESS_MS
}
const OWNERLESS_MS = 10_000

async function acquire(lock: string): Promise<void> {
  const started = Date.now()
  let told = false
  for (;;) {
    if (createDirectoryExclusive(lock)) {
      writeFileAtomic(`${lock}/pid`, `${process.pid}\novroot ${process.argv.slice(2).join(' ')}\n`)
      return
    }
    const [pidLine = '', command = 'ovroot'] = (readTextFileIfExists(`${lock}/pid`) ?? '').split('\n')
    const owner = Number(pidLine.trim())
    const holder = `pid ${owner} (${command.trim()})`
    if ((Number.isInteger(owner) && owner > 0 && !processAlive(owner)) || ownerless(lock, pidLine)) removeTree(lock)
    else if (Date.now() - started > LOCK_WAIT_MS)
      throw new OvrootError(
        'ELOCKED',
        ExitCode.environment,
        `${lock}: ${holder} has been staging a change for ${LOCK_WAIT_MS / 60_000} minutes; try again when it is done`,
      )
    else {
      if (!told) process.stderr.write(`ovroot: waiting for ${holder} to finish staging a change (${lock})\n`)
      told = true
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}
