/** A faithful copy of an upper: how boot fills a RAM upper from the flash's copy. */
import { EntryWriter, readStableFile } from '../sys/entries.js'
import { reportProgress } from '../sys/progress.js'
import { under } from './entry.js'
import { walkUpper } from './walk.js'
import { bytesOf, showBytes } from '../names.js'

/**
 * Copy everything of `from` into the existing, empty directory `to`; answers
 * the number of entries. Names are carried as bytes, whatever their
 * encoding. Anything it cannot copy whole (no room, an unreadable entry) throws: boot then shows `from` read-only instead of a
 * partial copy a sync could persist.
 */
export function copyUpper(fromText: string, toText: string, stubXattr: string): number {
  const from = bytesOf(fromText)
  const to = bytesOf(toText)
  const writer = new EntryWriter()
  let entries = 0
  const walk = walkUpper(from, {
    stubXattr,
    include: () => true,
    skipped: (path, why) => process.stderr.write(`ovroot: skipped /${showBytes(path)}: ${why} cannot be copied\n`),
  })
  try {
    for (const entry of walk) {
      writer.begin(
        under(to, entry.path),
        entry,
        entry.type === 'hardlink' ? under(to, entry.linkTarget ?? '') : undefined,
      )
      if (entry.type === 'file' && entry.holeSize === undefined)
        for (const chunk of readStableFile(under(from, entry.path)).chunks()) writer.data(chunk)
      writer.end()
      entries++
      reportProgress()
    }
    writer.finish()
  } catch (error) {
    // An open file would keep the caller from unmounting what was half written.
    writer.abandon()
    throw error
  }
  return entries
}
