/**
 * Stands in for the `string-width` package inside the bundle (see the
 * esbuild alias in package.json). yargs renders every command's help before
 * running it, and string-width segments each cell into graphemes and builds
 * ICU emoji tables on first use: 25 ms on every ovroot command. ovroot's help
 * is ASCII; other text gets Markus Kuhn's wcwidth rules, which are what
 * terminals use to lay out columns.
 */
/* eslint-disable no-control-regex, no-misleading-character-class -- ANSI escapes (ESC ... BEL) and control characters are what these match;
   combining marks in ZERO_WIDTH are matched one code point at a time on purpose. */
const ANSI_ESCAPE = /\u001b\[[0-9;]*[A-Za-z]|\u001b\]8;;[^\u0007]*\u0007/g
const PRINTABLE_ASCII = /^[\u0020-\u007e]*$/
const ZERO_WIDTH =
  /[\u0000-\u001f\u007f-\u009f\u0300-\u036f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufe00-\ufe0f\ufeff]/u
/* eslint-enable no-control-regex, no-misleading-character-class */

/** [first, last] code points that take two columns. */
const WIDE: readonly (readonly [number, number])[] = [
  [0x1100, 0x115f],
  [0x2e80, 0x303e],
  [0x3041, 0x33ff],
  [0x3400, 0x4dbf],
  [0x4e00, 0x9fff],
  [0xa000, 0xa4cf],
  [0xac00, 0xd7a3],
  [0xf900, 0xfaff],
  [0xfe30, 0xfe4f],
  [0xff00, 0xff60],
  [0xffe0, 0xffe6],
  [0x1f300, 0x1f64f],
  [0x1f900, 0x1f9ff],
  [0x20000, 0x2fffd],
  [0x30000, 0x3fffd],
]

export default function textWidth(text: string): number {
  const plain = text.replace(ANSI_ESCAPE, '')
  if (PRINTABLE_ASCII.test(plain)) return plain.length
  let width = 0
  for (const character of plain) {
    if (ZERO_WIDTH.test(character)) continue
    const codePoint = character.codePointAt(0) ?? 0
    width += WIDE.some(([first, last]) => codePoint >= first && codePoint <= last) ? 2 : 1
  }
  return width
}
