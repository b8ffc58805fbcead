/** A faithful copy of an upper: how boot fills a RAM upper from the flash's copy. */
import { EntryWriter, readStableFile } from '../sys/entries.js'
import { reportProgress } from '../sys/progress.js'
import { escapedName, under } from './entry.js'
import { walkUpper } from './walk.js'

/** Copy everything of `from` into the existing, empty directory `to`; answers the number of entries. */
export function copyUpper(from: string, to: string, stubXattr: string): number {
  const writer = new EntryWriter()
  let entries = 0
  const walk = walkUpper(from, {
    stubXattr,
    include: () => true,
    skipped: (path, why) => process.stderr.write(`ovroot: skipped /${path}: ${why} cannot be copied\n`),
    // One such name must not cost the whole persisted state at boot; it stays on the flash (sync leaves it there).
    notUtf8: (directory, name) => process.stderr.write(`ovroot: skipped /${directory === '.' ? '' : `${directory}/`}${escapedName(name)}: a name that is not UTF-8 cannot be copied yet; it stays on the flash\n`),
  })
  for (const entry of walk) {
    writer.begin(under(to, entry.path), entry, entry.type === 'hardlink' ? under(to, entry.linkTarget ?? '') : undefined)
    if (entry.type === 'file' && entry.holeSize === undefined) for (const chunk of readStableFile(under(from, entry.path)).chunks()) writer.data(chunk)
    writer.end()
    entries++
    reportProgress()
  }
  writer.finish()
  return entries
}
