/**
 * `ovroot diff --patch`: a unified diff of each changed regular file, laid out
 * as `git diff` does (a/ and b/ prefixes, new/deleted file and mode lines,
 * "Binary files ... differ"). A patch is bytes: a file's lines come out as
 * they are, UTF-8 or not (a Latin-1 file), as git prints them; its header
 * lines are text (names in names.ts's escaped form).
 */
import { structuredPatch } from 'diff'
import type { Change, EntryState } from '../overlay/diff.js'
import type { TreeReader } from '../sys/types.js'
import { showBytes } from '../names.js'

/** Larger files are named, not diffed: a patch is for reading. */
export const TEXT_LIMIT = 8 * 1024 * 1024
/** git's heuristic: a NUL byte in the first 8000 bytes means binary. */
const BINARY_PROBE = 8000

export function patchFor(change: Change, reader: TreeReader): Buffer | '' {
  const now = change.now?.type === 'file' ? change.now : undefined
  const was = change.was?.type === 'file' ? change.was : undefined
  // A type change is the file's deletion or creation, as git shows it.
  const contentChanged =
    change.change === 'added' ||
    change.change === 'deleted' ||
    change.fields.includes('content') ||
    change.fields.includes('type')
  const modeChanged = change.fields.includes('mode')
  if ((!now && !was) || (!contentChanged && !modeChanged)) return ''
  // The escaped form of names.ts, as in the text and JSON output.
  const name = showBytes(change.path.slice(1))
  const lines = [`diff --git a/${name} b/${name}`]
  if (!was && now) lines.push(`new file mode ${gitMode(now)}`)
  else if (was && !now) lines.push(`deleted file mode ${gitMode(was)}`)
  else if (was && now && modeChanged) lines.push(`old mode ${gitMode(was)}`, `new mode ${gitMode(now)}`)
  const header = Buffer.from(`${lines.join('\n')}\n`)
  return contentChanged ? Buffer.concat([header, contentLines(name, was, now, reader)]) : header
}

function contentLines(
  name: string,
  was: EntryState | undefined,
  now: EntryState | undefined,
  reader: TreeReader,
): Buffer {
  const oldBytes = was?.dataPath ? reader.readHead(was.dataPath, TEXT_LIMIT + 1) : Buffer.alloc(0)
  const newBytes = now?.dataPath ? reader.readHead(now.dataPath, TEXT_LIMIT + 1) : Buffer.alloc(0)
  return unifiedDiff(was ? `a/${name}` : '/dev/null', now ? `b/${name}` : '/dev/null', oldBytes, newBytes)
}

/**
 * A unified diff of two contents (read up to TEXT_LIMIT + 1 bytes), or the line saying why there is
 * none to read, as bytes, each line ending in a newline: labels are text (UTF-8), a content's lines
 * its own bytes.
 */
export function unifiedDiff(oldLabel: string, newLabel: string, oldBytes: Buffer, newBytes: Buffer): Buffer {
  const text = (lines: string[]): Buffer => Buffer.from(lines.map((line) => `${line}\n`).join(''))
  if (isBinary(oldBytes) || isBinary(newBytes)) return text([`Binary files ${oldLabel} and ${newLabel} differ`])
  if (oldBytes.length > TEXT_LIMIT || newBytes.length > TEXT_LIMIT)
    return text([`Large files ${oldLabel} and ${newLabel} differ (over ${TEXT_LIMIT} bytes)`])
  // Lines compared and printed as bytes, one character each: a Latin-1 file's come out as they are
  // (as UTF-8 they would print, and apply, as U+FFFD); jsdiff splits lines at \n alone, which no
  // byte of a multi-byte UTF-8 character is.
  const patch = structuredPatch('', '', oldBytes.toString('latin1'), newBytes.toString('latin1'), '', '', {
    context: 3,
  })
  if (patch.hunks.length === 0) return Buffer.alloc(0)
  const lines: string[] = []
  for (const hunk of patch.hunks) {
    lines.push(`@@ -${range(hunk.oldStart, hunk.oldLines)} +${range(hunk.newStart, hunk.newLines)} @@`, ...hunk.lines)
  }
  return Buffer.concat([text([`--- ${oldLabel}`, `+++ ${newLabel}`]), Buffer.from(`${lines.join('\n')}\n`, 'latin1')])
}

/** Unified-diff ranges omit a count of 1 and start at 0 for an empty side. */
function range(start: number, count: number): string {
  const first = count === 0 ? Math.max(start - 1, 0) : start
  return count === 1 ? `${first}` : `${first},${count}`
}

function isBinary(bytes: Buffer): boolean {
  return bytes.subarray(0, BINARY_PROBE).includes(0)
}

function gitMode(state: EntryState): string {
  return `100${(state.permissions & 0o777).toString(8).padStart(3, '0')}`
}
