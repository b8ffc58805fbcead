/**
 * Turns changes into what `ovroot diff` prints: status lines, JSON Lines or
 * per-kind counts. Output is buffered: a diff of tens of thousands of entries
 * must not cost a write per line. Paths and link targets are bytes; every
 * format prints them in the one escaped form of names.ts `showName` (valid
 * UTF-8 as it is, `\\` for a backslash, `\xNN` for any other byte).
 */
import type { Change, ChangeKind, EntryState } from '../overlay/diff.js'
import type { TreeReader } from '../sys/types.js'
import { showBytes, type BytePath } from '../names.js'
import { ExitCode, type ExitStatus, type OvrootError } from '../errors.js'

export type DiffFormat = 'text' | 'json' | 'stat' | 'patch'

/**
 * What a command that compares a live upper (diff, backup --changes-only, the reset and restore previews) does with
 * an entry the upper lost or replaced meanwhile (OverlayDiff.run's `unsettled`): names it in one line, leaves it
 * out, and does the rest; the status then says the result is whole but for the entries named (ExitCode.io).
 */
export class LeftOut {
  private count = 0

  constructor(
    /** What the entry is left out of: 'the report', 'the backup'. */
    private readonly of: string,
    private readonly command: string,
  ) {}

  readonly note = (path: BytePath, error: OvrootError): void => {
    this.count++
    process.stderr.write(
      `ovroot: ${showBytes(path)}: left out of ${this.of}, it changed while ${this.command} read it (${error.message})\n`,
    )
  }

  status(whole: ExitStatus): ExitStatus {
    return this.count > 0 ? ExitCode.io : whole
  }
}
/** Text, or bytes for --patch (a file's lines as they are). */
export type Renderer = (change: Change) => string | Buffer

/** How each change is printed (`--stat` prints nothing per change); the patch code loads only for --patch. */
export async function loadRenderer(format: DiffFormat, colour: boolean, reader: TreeReader): Promise<Renderer> {
  switch (format) {
    case 'text':
      return (change) => statusLine(change, colour)
    case 'json':
      return jsonLine
    case 'stat':
      return () => ''
    case 'patch': {
      const { patchFor } = await import('./patch.js')
      return (change) => patchFor(change, reader)
    }
  }
}

export const STATUS_LETTER: Record<ChangeKind, string> = {
  added: 'A',
  deleted: 'D',
  modified: 'M',
  metadata: 'm',
  unchanged: '=',
}
const COLOUR: Record<ChangeKind, string> = {
  added: '32',
  deleted: '31',
  modified: '33',
  metadata: '36',
  unchanged: '2',
}

/**
 * Big enough that writes are few, small enough that lines waiting for the
 * write die young: held across a garbage collection they would be promoted,
 * and the heap would grow with the size of the report.
 */
export const OUTPUT_CHUNK = 16 * 1024

export class BufferedOutput {
  private chunks: (string | Buffer)[] = []
  private size = 0
  /** Whether a chunk is bytes (a patch's): text is then written as its UTF-8. */
  private bytes = false
  constructor(private readonly write: (output: string | Buffer) => void) {}

  push(output: string | Buffer): void {
    this.chunks.push(output)
    this.size += output.length
    this.bytes ||= typeof output !== 'string'
    if (this.size >= OUTPUT_CHUNK) this.flush()
  }

  flush(): void {
    if (this.chunks.length === 0) return
    this.write(
      this.bytes
        ? Buffer.concat(this.chunks.map((chunk) => (typeof chunk === 'string' ? Buffer.from(chunk) : chunk)))
        : this.chunks.join(''),
    )
    this.chunks = []
    this.size = 0
    this.bytes = false
  }
}

export function statusLine(change: Change, colour: boolean): string {
  const letter = STATUS_LETTER[change.change]
  const path = showBytes(change.path)
  return colour ? `\x1b[${COLOUR[change.change]}m${letter} ${path}\x1b[0m\n` : `${letter} ${path}\n`
}

/**
 * One JSON Lines record, written out by hand: JSON.stringify of a built-up
 * object costs more than the walk that found the change. Key order is fixed:
 * path, change, type, the merged state, fields, was, from, replaced.
 */
export function jsonLine(change: Change): string {
  const { now, was } = change
  let line = `{"path":${JSON.stringify(showBytes(change.path))},"change":"${change.change}","type":"${(now ?? was)?.type ?? 'file'}"`
  if (now) line += stateFields(now)
  if (change.fields.length > 0) line += `,"fields":["${change.fields.join('","')}"]`
  if (was && change.change !== 'added') line += `,"was":{"type":"${was.type}"${stateFields(was)}}`
  if (change.from !== undefined) line += `,"from":${JSON.stringify(showBytes(change.from))}`
  if (change.replaced) line += ',"replaced":true'
  return `${line}}\n`
}

function stateFields(state: EntryState): string {
  let fields = `,"mode":"${formatMode(state.permissions)}","uid":${state.uid},"gid":${state.gid}`
  if (state.type === 'file') fields += `,"size":${state.size}`
  if (state.target !== undefined) fields += `,"target":${JSON.stringify(showBytes(state.target))}`
  return fields
}

export function formatMode(permissions: number): string {
  return permissions.toString(8).padStart(4, '0')
}

export type ChangeCounts = Record<ChangeKind, number>

export class ChangeCounter {
  readonly counts: ChangeCounts = { added: 0, modified: 0, metadata: 0, deleted: 0, unchanged: 0 }
  add(change: Change): void {
    this.counts[change.change]++
  }

  merge(counts: ChangeCounts): void {
    for (const kind of Object.keys(counts) as ChangeKind[]) this.counts[kind] += counts[kind]
  }

  get changed(): number {
    return this.counts.added + this.counts.modified + this.counts.metadata + this.counts.deleted
  }

  render(json: boolean, all: boolean): string {
    const kinds = (Object.keys(this.counts) as ChangeKind[]).filter((kind) => all || kind !== 'unchanged')
    if (json)
      return `${JSON.stringify({ ...Object.fromEntries(kinds.map((kind) => [kind, this.counts[kind]])), total: this.changed })}\n`
    return `${[...kinds.map((kind) => `${kind.padEnd(9)} ${this.counts[kind]}`), `${'total'.padEnd(9)} ${this.changed}`].join('\n')}\n`
  }
}
