/**
 * Turns changes into what `ovroot diff` prints: status lines, JSON Lines or
 * per-kind counts. Output is buffered in large writes: a diff of tens of
 * thousands of entries must not cost a write per line.
 */
import type { Change, ChangeKind, EntryState } from '../overlay/diff.js'

export const STATUS_LETTER: Record<ChangeKind, string> = { added: 'A', deleted: 'D', modified: 'M', metadata: 'm', unchanged: '=' }
const COLOUR: Record<ChangeKind, string> = { added: '32', deleted: '31', modified: '33', metadata: '36', unchanged: '2' }

export class BufferedOutput {
  private chunks: string[] = []
  private size = 0
  constructor(private readonly write: (text: string) => void) {}

  push(text: string): void {
    this.chunks.push(text)
    this.size += text.length
    if (this.size >= 1 << 16) this.flush()
  }

  flush(): void {
    if (this.chunks.length === 0) return
    this.write(this.chunks.join(''))
    this.chunks = []
    this.size = 0
  }
}

export function statusLine(change: Change, colour: boolean): string {
  const letter = STATUS_LETTER[change.change]
  return colour ? `\x1b[${COLOUR[change.change]}m${letter} ${change.path}\x1b[0m\n` : `${letter} ${change.path}\n`
}

export function jsonLine(change: Change): string {
  const state = change.now ?? change.was
  const record: Record<string, unknown> = { path: change.path, change: change.change, type: state?.type }
  if (change.now) Object.assign(record, describeState(change.now))
  if (change.fields.length > 0) record.fields = change.fields
  if (change.was && change.change !== 'added') record.was = { type: change.was.type, ...describeState(change.was) }
  if (change.from !== undefined) record.from = change.from
  if (change.replaced) record.replaced = true
  return `${JSON.stringify(record)}\n`
}

function describeState(state: EntryState): Record<string, unknown> {
  const described: Record<string, unknown> = { mode: formatMode(state.permissions), uid: state.uid, gid: state.gid }
  if (state.type === 'file') described.size = state.size
  if (state.target !== undefined) described.target = state.target
  return described
}

export function formatMode(permissions: number): string {
  return permissions.toString(8).padStart(4, '0')
}

export class ChangeCounter {
  readonly counts: Record<ChangeKind, number> = { added: 0, modified: 0, metadata: 0, deleted: 0, unchanged: 0 }
  add(change: Change): void {
    this.counts[change.change]++
  }

  get changed(): number {
    return this.counts.added + this.counts.modified + this.counts.metadata + this.counts.deleted
  }

  render(json: boolean, all: boolean): string {
    const kinds = (Object.keys(this.counts) as ChangeKind[]).filter((kind) => all || kind !== 'unchanged')
    if (json) return `${JSON.stringify({ ...Object.fromEntries(kinds.map((kind) => [kind, this.counts[kind]])), total: this.changed })}\n`
    return `${[...kinds.map((kind) => `${kind.padEnd(9)} ${this.counts[kind]}`), `${'total'.padEnd(9)} ${this.changed}`].join('\n')}\n`
  }
}
