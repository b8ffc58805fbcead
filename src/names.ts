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
