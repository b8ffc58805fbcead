/**
 * archive/pax.ts as a codec: exact bytes out for given entries, exact entries
 * in for given bytes. The expected headers are built here from the ustar
 * layout of POSIX (offsets written out again on purpose: a second, independent
 * reading of the standard), so a shifted field or a wrong length fails.
 */
import t from 'tap'
import { entryHeader, globalComment, PaxReader, type TarEntry } from '../src/archive/pax.js'

const SECOND = 1_000_000_000n

interface Ustar {
  name: string
  mode?: number
  uid?: number
  gid?: number
  size?: number
  mtime?: number
  flag: string
  linkName?: string
}

/** A ustar header block as POSIX lays it out; numbers in octal, NUL-terminated, clamped as a writer that adds pax records does. */
function ustar(fields: Ustar): Buffer {
  const block = Buffer.alloc(512)
  const octal = (value: number, offset: number, width: number): void => {
    block.write(
      `${Math.min(value, 8 ** (width - 1) - 1)
        .toString(8)
        .padStart(width - 1, '0')}\0`,
      offset,
      'latin1',
    )
  }
  block.write(fields.name.slice(0, 100), 0, 'latin1')
  octal(fields.mode ?? 0o644, 100, 8)
  octal(fields.uid ?? 0, 108, 8)
  octal(fields.gid ?? 0, 116, 8)
  octal(fields.size ?? 0, 124, 12)
  octal(fields.mtime ?? 0, 136, 12)
  block.write(fields.flag, 156, 'latin1')
  block.write((fields.linkName ?? '').slice(0, 100), 157, 'latin1')
  block.write('ustar\x0000', 257, 'latin1')
  octal(0, 329, 8)
  octal(0, 337, 8)
  block.fill(' ', 148, 156)
  const sum = block.reduce((total, byte) => total + byte, 0)
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1')
  return block
}

/** An extended header ('x' or 'g') holding `body`, padded to whole blocks. */
function extended(flag: string, name: string, body: string): Buffer {
  const bytes = Buffer.from(body, 'latin1')
  return Buffer.concat([
    ustar({ name, size: bytes.length, flag }),
    bytes,
    Buffer.alloc((512 - (bytes.length % 512)) % 512),
  ])
}

const file = (fields: Partial<TarEntry>): TarEntry => ({
  path: 'etc/x',
  type: 'file',
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtimeNs: 1700000000n * SECOND,
  atimeNs: 1700000000n * SECOND,
  size: 0,
  devMajor: 0,
  devMinor: 0,
  xattrs: [],
  ...fields,
})

/** What PaxReader makes of these bytes: the entries, in order. */
function read(bytes: Buffer): TarEntry[] {
  const entries: TarEntry[] = []
  const reader = new PaxReader({
    globalComment: () => undefined,
    entry: (entry) => entries.push(entry),
    data: () => undefined,
    end: () => undefined,
  })
  reader.push(bytes)
  return entries
}

await t.test('record length: the length counts its own digits, the fixpoint past 99', async (t) => {
  // " comment=" + 87 bytes + "\n" is 97 bytes: 2 digits make 99.
  t.same(globalComment('a'.repeat(87)), extended('g', 'pax_global_header', `99 comment=${'a'.repeat(87)}\n`))
  // One byte more: 2 digits would make 100, which takes 3 digits, so 101 (no record is 100 bytes long).
  t.same(globalComment('a'.repeat(88)), extended('g', 'pax_global_header', `101 comment=${'a'.repeat(88)}\n`))
  // The same past 999: 1000 takes 4 digits, so 1001.
  t.same(globalComment('a'.repeat(987)), extended('g', 'pax_global_header', `1001 comment=${'a'.repeat(987)}\n`))
})

await t.test(
  'numbers past the octal range: a pax record and the octal field at its largest; base-256 read',
  async (t) => {
    const uid = 8 ** 7 // one past 7777777
    const size = 8 ** 11 // one past 77777777777 (8 GiB)
    const header = entryHeader(file({ uid, size }))
    t.same(
      header,
      Buffer.concat([
        extended('x', '././@PaxHeader', `19 size=${size}\n15 uid=${uid}\n`),
        ustar({ name: 'etc/x', uid, size, mtime: 1700000000, flag: '0' }),
      ]),
    )
    t.equal(
      header.toString('latin1', header.length - 512 + 108, header.length - 512 + 116),
      '7777777\0',
      'uid field: the largest octal',
    )
    t.same(
      read(header).map((entry) => [entry.uid, entry.size]),
      [[uid, size]],
      'the pax records win over the octal fields',
    )

    // GNU base-256: high bit set, then the value big-endian in the rest of the field.
    const gnu = ustar({ name: 'etc/big', flag: '0' })
    Buffer.from([0x80, 0, 0, 0, 0, 0x20, 0, 0]).copy(gnu, 108) // uid 2097152
    Buffer.from([0x80, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0]).copy(gnu, 124) // size 2^33
    gnu.fill(' ', 148, 156)
    gnu.write(
      `${gnu
        .reduce((total, byte) => total + byte, 0)
        .toString(8)
        .padStart(6, '0')}\0 `,
      148,
      'latin1',
    )
    t.same(
      read(gnu).map((entry) => [entry.path, entry.uid, entry.size]),
      [['etc/big', 2097152, 2 ** 33]],
    )
  },
)

await t.test('long names: a pax path record, the ustar field holding the first 100 bytes; GNU L read', async (t) => {
  const path = `etc/${'d'.repeat(60)}/${'f'.repeat(60)}`
  const target = `/${'t'.repeat(120)}`
  const header = entryHeader(file({ path, type: 'symlink', linkTarget: target, mode: 0o777 }))
  const records = `135 path=${path}\n135 linkpath=${target}\n`
  t.same(
    header,
    Buffer.concat([
      extended('x', '././@PaxHeader', records),
      ustar({ name: path, mode: 0o777, mtime: 1700000000, flag: '2', linkName: target }),
    ]),
  )
  t.same(
    read(header).map((entry) => [entry.path, entry.linkTarget]),
    [[path, target]],
  )

  // A name of exactly 100 bytes fits the field: no record.
  const hundred = `etc/${'h'.repeat(96)}`
  t.same(entryHeader(file({ path: hundred })), ustar({ name: hundred, mtime: 1700000000, flag: '0' }))

  // GNU tar's ././@LongLink: an 'L' block carries the name, NUL-terminated.
  const longLink = Buffer.concat([
    ustar({ name: '././@LongLink', size: path.length + 1, flag: 'L' }),
    Buffer.from(`${path}\0`),
    Buffer.alloc(512 - path.length - 1),
  ])
  t.same(
    read(Buffer.concat([longLink, ustar({ name: path, mtime: 1700000000, flag: '0' })])).map((entry) => entry.path),
    [path],
  )
})

await t.test(
  'times: whole seconds in the octal field; fractions, pre-1970 and a distinct atime as signed pax times to the nanosecond',
  async (t) => {
    const at = (mtimeNs: bigint, atimeNs = mtimeNs): Buffer => entryHeader(file({ mtimeNs, atimeNs }))
    const whole = ustar({ name: 'etc/x', mtime: 1700000000, flag: '0' })
    t.same(at(1700000000n * SECOND), whole, 'a whole second, atime equal: no record')
    t.same(
      at(1700000000n * SECOND + 500000000n),
      Buffer.concat([extended('x', '././@PaxHeader', '30 mtime=1700000000.500000000\n'), whole]),
    )
    t.same(
      at(1700000000n * SECOND, 1700000000n * SECOND + 1n),
      Buffer.concat([extended('x', '././@PaxHeader', '30 atime=1700000000.000000001\n'), whole]),
      'an atime of its own',
    )
    const before1970 = at(-1500000000n)
    t.match(
      before1970.toString('latin1'),
      /22 mtime=-1\.500000000\n/,
      '1.5 s before the epoch: the sign covers the fraction',
    )
    t.equal(read(before1970)[0]?.mtimeNs, -1500000000n)
    // GNU tar writes what it has, trailing zeros dropped; every digit to the ninth is kept.
    const nanos = Buffer.concat([extended('x', 'PaxHeaders/etc/x', '30 mtime=1700000000.123456789\n'), whole])
    t.equal(read(nanos)[0]?.mtimeNs, 1700000000123456789n)
    t.equal(read(nanos)[0]?.atimeNs, 1700000000123456789n, 'no atime: the mtime')
  },
)

await t.test(
  'GNU sparse 1.0: the map written as GNU tar writes it; a map that lies about the data is refused',
  async (t) => {
    const written = entryHeader(file({ size: 1 << 20, regions: [[4096, 10]] }))
    t.match(written.toString('latin1'), /GNU\.sparse\.realsize=1048576\n/)
    t.equal(
      written.subarray(-512).toString('latin1').replace(/\0+$/, ''),
      '2\n4096\n10\n1048576\n0\n',
      'a last empty region where the file ends in a hole',
    )
    t.same(read(Buffer.concat([written, Buffer.alloc(512)]))[0]?.regions, [[4096, 10]], 'read back')
    /** A sparse entry with this map text and `data` bytes of data after it. */
    const crafted = (map: string, data: number, realSize = 1 << 20): Buffer => {
      const records = `22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n25 GNU.sparse.name=etc/x\n${`GNU.sparse.realsize=${realSize}\n`.length + 3} GNU.sparse.realsize=${realSize}\n`
      const mapBlocks = Math.ceil(map.length / 512) * 512
      return Buffer.concat([
        extended('x', 'PaxHeaders/etc/x', records),
        ustar({ name: 'GNUSparseFile.0/x', size: mapBlocks + data, flag: '0' }),
        Buffer.from(map.padEnd(mapBlocks, '\0'), 'latin1'),
        Buffer.alloc(Math.ceil(data / 512) * 512),
      ])
    }
    t.same(read(crafted('1\n0\n10\n', 10))[0]?.regions, [[0, 10]], 'a well-formed crafted map is read')
    const refused: [string, Buffer, RegExp][] = [
      ['overlapping regions', crafted('2\n0\n100\n50\n10\n', 110), /out of order or past the end/],
      ['a region past the end', crafted('1\n1048570\n10\n', 10), /out of order or past the end/],
      [
        'more data than the map says',
        crafted('1\n0\n10\n', 1024),
        /accounts for 10 bytes of data, the header for 1024/,
      ],
      ['less data than the map says', crafted('1\n0\n4096\n', 10), /accounts for 4096 bytes of data/],
      ['a map without an end', crafted(`9999\n${'1\n'.repeat(300)}`, 0), /does not end/],
      ['not numbers', crafted('1\n0x10\n10\n', 10), /something other than numbers/],
    ]
    for (const [name, bytes, pattern] of refused)
      t.throws(() => read(bytes), { code: 'EARCHIVE', message: pattern }, name)
  },
)

await t.test('header checksum: every byte of a header counts, its own field as spaces', async (t) => {
  const header = ustar({ name: 'etc/x', flag: '0' })
  t.equal(read(Buffer.concat([header, Buffer.alloc(1024)]))[0]?.path, 'etc/x', 'a right checksum is read')
  // A byte before, inside and after the checksum field (148..155) changed: each is refused.
  for (const at of [0, 147, 150, 156, 511]) {
    const changed = Buffer.from(header)
    changed[at] = (changed[at] ?? 0) ^ 0x01
    t.throws(
      () => read(Buffer.concat([changed, Buffer.alloc(1024)])),
      { code: 'EARCHIVE', message: /header checksum mismatch at byte 0/ },
      `byte ${at} changed`,
    )
  }
})
