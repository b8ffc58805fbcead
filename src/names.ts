/**
 * How output shows a Linux name or link target, which is bytes, not text:
 * one escaped form for every output (diff's text, JSON and patch, error
 * messages). Valid UTF-8 is shown as it is; a backslash is `\\`; every other
 * byte (one that is not part of valid UTF-8, a control character, DEL) is
 * `\xNN` (two lower-case hex digits). The form is unambiguous, so two names
 * never print alike, and it is plain text, so it stays a valid JSON string
 * and one line of a listing.
 */
export function showName(name: Buffer | string): string {
  if (typeof name === 'string') name = Buffer.from(name)
  let shown = ''
  let plainFrom = 0
  const flush = (to: number): void => {
    if (to > plainFrom) shown += name.toString('utf8', plainFrom, to)
  }
  for (let i = 0; i < name.length;) {
    const byte = name[i] ?? 0
    const length = byte >= 0x20 && byte < 0x7f && byte !== 0x5c ? 1 : byte >= 0x80 ? utf8SequenceLength(name, i) : 0
    if (length > 0) {
      i += length
      continue
    }
    flush(i)
    shown += byte === 0x5c ? '\\\\' : `\\x${byte.toString(16).padStart(2, '0')}`
    plainFrom = ++i
  }
  flush(name.length)
  return shown
}

/** The length of the well-formed UTF-8 sequence at `at` (Unicode's table 3-7), or 0 when there is none. */
function utf8SequenceLength(bytes: Buffer, at: number): number {
  const lead = bytes[at] ?? 0
  const continuation = (offset: number, low = 0x80, high = 0xbf): boolean => {
    const byte = bytes[at + offset]
    return byte !== undefined && byte >= low && byte <= high
  }
  if (lead >= 0xc2 && lead <= 0xdf) return continuation(1) ? 2 : 0
  if (lead >= 0xe0 && lead <= 0xef) {
    // No overlong forms (E0 80..9F) and no UTF-16 surrogates (ED A0..BF).
    const ok = continuation(1, lead === 0xe0 ? 0xa0 : 0x80, lead === 0xed ? 0x9f : 0xbf) && continuation(2)
    return ok ? 3 : 0
  }
  if (lead >= 0xf0 && lead <= 0xf4) {
    // No overlong forms (F0 80..8F) and nothing past U+10FFFF (F4 90..).
    const ok =
      continuation(1, lead === 0xf0 ? 0x90 : 0x80, lead === 0xf4 ? 0x8f : 0xbf) && continuation(2) && continuation(3)
    return ok ? 4 : 0
  }
  return 0
}

/**
 * A Linux path or name as its bytes, carried in a JS string with one char per
 * byte (latin1). Linux names are bytes, not text: a name that is not UTF-8
 * (`caf\xe9`, written by a Latin-1 program) must be backed up, restored,
 * diffed, reset and synced like any other. A byte string is lossless, sorts in
 * byte order with plain `<`, works as a Map key, survives JSON (every char is
 * below 256), and costs nothing for ASCII, where it equals the text. The
 * conversions happen only at the edges: in sys/ (`bytePathBuffer` for every
 * path handed to the kernel, `byteString` for what it answers), in output
 * (`showBytes`) and for text from the user (`bytesOf`: a config glob, a CLI
 * path, a directory given on the command line).
 */
export type BytePath = string

/** The bytes of UTF-8 text (a path from the user or the config), as a byte string. */
export const bytesOf = (text: string): BytePath => Buffer.from(text, 'utf8').toString('latin1')

/** A byte string as the Buffer the kernel takes. */
export const bytePathBuffer = (path: BytePath): Buffer => Buffer.from(path, 'latin1')

/** Bytes from the kernel (a name, a link target) as a byte string. */
export const byteString = (bytes: Buffer): BytePath => bytes.toString('latin1')

/** A byte string in the escaped form of `showName`: what every output prints. */
export const showBytes = (path: BytePath): string => showName(bytePathBuffer(path))

/** A byte string as text when its bytes are valid UTF-8 (undefined otherwise): for a field that must be text. */
export function textOf(path: BytePath): string | undefined {
  const bytes = bytePathBuffer(path)
  const text = bytes.toString('utf8')
  return Buffer.from(text).equals(bytes) ? text : undefined
}

/**
 * The inverse of `showName`, as a byte string: `\\` is a backslash, `\xNN` a
 * byte, anything else its UTF-8 bytes. Undefined for text `showName` never
 * prints (a lone backslash, a short escape), so a damaged file is refused.
 */
export function parseShownName(shown: string): BytePath | undefined {
  let bytes = ''
  let plainFrom = 0
  for (let i = shown.indexOf('\\'); i >= 0; i = shown.indexOf('\\', plainFrom)) {
    bytes += bytesOf(shown.slice(plainFrom, i))
    if (shown[i + 1] === '\\') {
      bytes += '\\'
      plainFrom = i + 2
      continue
    }
    const hex = /^x([0-9a-f]{2})/.exec(shown.slice(i + 1, i + 4))
    if (!hex?.[1]) return undefined
    bytes += String.fromCharCode(parseInt(hex[1], 16))
    plainFrom = i + 4
  }
  return bytes + bytesOf(shown.slice(plainFrom))
}
