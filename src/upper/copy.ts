/** A faithful copy of an upper (holes and inode flags kept): how boot fills a RAM upper from the flash's copy. */
import { EntryWriter } from '../sys/entries.js'
import { reportProgress } from '../sys/progress.js'
import { under } from './entry.js'
import { walkUpper } from './walk.js'
import { bytesOf, showBytes, type BytePath } from '../names.js'
import { counted } from '../plural.js'

/**
 * Copy everything of `from` into the existing, empty directory `to`; answers
 * the number of entries. Names are carried as bytes, whatever their
 * encoding. Anything it cannot copy whole (no room, an unreadable entry) throws: boot then shows `from` read-only instead of a
 * partial copy a sync could persist.
 */
export function copyUpper(fromText: string, toText: string, stubXattr: string): number {
  const from = bytesOf(fromText)
  const to = bytesOf(toText)
  // Inode flags too (chattr +i, +a, +d), set once everything is in place; holes the flash does not report kept too.
  const writer = new EntryWriter({ flags: true, zeroPagesAsHoles: true })
  let entries = 0
  const walk = walkUpper(from, {
    stubXattr,
    flags: true,
    include: () => true,
    skipped: (path, why) => process.stderr.write(`ovroot: skipped /${showBytes(path)}: ${why} cannot be copied\n`),
  })
  try {
    for (const entry of walk) {
      writer.copy(under(to, entry.path), entry, under(from, entry.path), {
        linkTargetFull: entry.type === 'hardlink' ? under(to, entry.linkTarget ?? '') : undefined,
      })
      entries++
      reportProgress()
    }
    writer.finish()
    reportFlagsNotKept(writer.flagsNotKept)
  } catch (error) {
    // An open file would keep the caller from unmounting what was half written.
    writer.abandon()
    throw error
  }
  return entries
}

/** Flags the RAM's filesystem cannot hold (tmpfs before Linux 6.0) are named, never dropped silently. */
function reportFlagsNotKept(paths: readonly BytePath[]): void {
  if (paths.length === 0) return
  const more = paths.length > 5 ? ` and ${paths.length - 5} more` : ''
  const named = paths.slice(0, 5).map((path) => `/${showBytes(path)}`)
  process.stderr.write(
    `ovroot: inode flags (chattr) not kept in the RAM upper on ${counted(paths.length, 'entry', 'entries')}: ${named.join(' ')}${more}\n`,
  )
}
