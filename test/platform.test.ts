/**
 * The system layer (src/sys/libc.ts) against the kernel and Node's own fs:
 * its statx decoding must give what fs.lstatSync gives for every kind of
 * entry, its xattr calls must round-trip with the attr tools, and a platform
 * it cannot serve must get one line, not a wrong answer.
 */
import t from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as path from 'node:path'
import { getXattr, InodeFlag, inodeFlags, listXattrs, lstat, makeNode, removeXattr, setXattr } from '../src/sys/libc.js'
import { INODE_FLAG_IOCTLS, inodeFlagIoctls, SYSCALLS, syscallNumbers } from '../src/sys/platform.js'
import type { EntryStat } from '../src/sys/types.js'
import { readStableFile } from '../src/sys/entries.js'
import { bytesOf } from '../src/names.js'
import { OVROOT, cleanEnvironment, mountOverlay, scratch } from './helpers/overlay.js'

const FIVE_GIB = 5 * 1024 ** 3

/** A socket file: bound by a listening server, which is closed again at once. */
async function makeSocket(file: string): Promise<void> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(file, resolve))
  await new Promise<void>((resolve) => server.close(() => resolve()))
  if (!fs.existsSync(file)) fs.writeFileSync(file, '')
}

/** Every kind of entry an upper can hold, with extreme values where the kernel allows them. */
async function varied(root: string): Promise<void> {
  fs.mkdirSync(`${root}/dir/sub`, { recursive: true })
  fs.writeFileSync(`${root}/dir/file`, 'content\n')
  fs.writeFileSync(`${root}/empty`, '')
  const sparse = fs.openSync(`${root}/sparse-5g`, 'w')
  fs.writeSync(sparse, 'end', FIVE_GIB)
  fs.closeSync(sparse)
  fs.linkSync(`${root}/dir/file`, `${root}/hardlink`)
  fs.symlinkSync('dir/file', `${root}/symlink`)
  fs.symlinkSync('/nowhere/at/all', `${root}/dangling`)
  makeNode(`${root}/fifo`, 'fifo', 0o640)
  makeNode(`${root}/null`, 'char', 0o666, 1, 3)
  makeNode(`${root}/whiteout`, 'char', 0o000)
  makeNode(`${root}/loop`, 'block', 0o660, 7, 0)
  makeNode(`${root}/high-device`, 'char', 0o600, 4095, 1048575)
  await makeSocket(`${root}/socket`)
  fs.writeFileSync(`${root}/setuid`, '#!/bin/sh\n')
  fs.chmodSync(`${root}/setuid`, 0o4755)
  // Before 1970: negative seconds with a positive nanosecond part (hard-cases.md); Node's utimes takes none.
  execFileSync('touch', ['-a', '-d', '@-1.5', `${root}/setuid`])
  execFileSync('touch', ['-m', '-d', '@-86400.25', `${root}/setuid`])
  fs.chmodSync(`${root}/dir/sub`, 0o1777)
  fs.lchownSync(`${root}/dir/file`, 65534, 4294967294)
  fs.lchownSync(`${root}/symlink`, 1000, 1000)
}

function walk(root: string): string[] {
  const paths = [root]
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    const full = path.join(root, entry.name)
    if (entry.isDirectory()) paths.push(...walk(full))
    else paths.push(full)
  }
  return paths
}

const TYPE_OF_NODE_STAT: [keyof fs.BigIntStats, EntryStat['type']][] = [
  ['isFile', 'file'],
  ['isDirectory', 'dir'],
  ['isSymbolicLink', 'symlink'],
  ['isFIFO', 'fifo'],
  ['isSocket', 'socket'],
  ['isCharacterDevice', 'char'],
  ['isBlockDevice', 'block'],
]

/** fs.lstatSync's answer in the binding's terms. Node reports a 64-bit ino as signed; the kernel's is unsigned. */
function nodeView(file: string): EntryStat {
  const stat = fs.lstatSync(file, { bigint: true })
  const type = TYPE_OF_NODE_STAT.find(([method]) => (stat[method] as () => boolean).call(stat))?.[1]
  if (!type) throw new Error(`${file}: no type`)
  return {
    type,
    permissions: Number(stat.mode & 0o7777n),
    uid: Number(stat.uid),
    gid: Number(stat.gid),
    size: Number(stat.size),
    rdev: Number(stat.rdev),
    dev: stat.dev,
    ino: BigInt.asUintN(64, stat.ino),
    nlink: Number(stat.nlink),
    blocks: Number(stat.blocks),
    atimeNs: stat.atimeNs,
    mtimeNs: stat.mtimeNs,
    ctimeNs: stat.ctimeNs,
    // No entry of the varied trees has inode flags; the test below sets some.
    flags: 0,
  }
}

await t.test('statx through the binding equals fs.lstatSync for every kind of entry', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  await varied(`${s.dir}/plain`)
  // xino gives every entry of a two-filesystem overlay an inode number with its layer in the top bits: above 2^63.
  const [lower, upperFs, merged] = ['lower', 'upperfs', 'merged'].map((name) => `${s.dir}/${name}`) as [
    string,
    string,
    string,
  ]
  fs.mkdirSync(lower)
  await varied(lower)
  fs.mkdirSync(upperFs)
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', upperFs])
  fs.mkdirSync(`${upperFs}/upper`)
  fs.mkdirSync(`${upperFs}/work`)
  fs.writeFileSync(`${upperFs}/upper/added`, 'new\n')
  mountOverlay(merged, [lower], `${upperFs}/upper`, `${upperFs}/work`, ['xino=on'])

  const entries = [...walk(`${s.dir}/plain`), ...walk(merged)]
  let compared = 0
  for (const file of entries) {
    t.same(lstat(file), nodeView(file), file.slice(s.dir.length))
    compared++
  }
  t.equal(compared, 32, 'every entry of both trees compared')
  const highest = entries.map((file) => lstat(file)?.ino ?? 0n).reduce((a, b) => (a > b ? a : b))
  t.ok(highest > 2n ** 63n, `inode numbers above 2^63 occur (${highest}), as stat(1) reports them`)
  t.equal(
    execFileSync('stat', ['-c', '%i', `${merged}/dir/file`], { encoding: 'utf8' }).trim(),
    String(lstat(`${merged}/dir/file`)?.ino),
    'the same inode number as stat(1)',
  )
  t.equal(lstat(`${s.dir}/plain/sparse-5g`)?.size, FIVE_GIB + 3, 'a size above 4 GiB')
  t.equal(lstat(`${s.dir}/plain/setuid`)?.mtimeNs, -86_400_250_000_000n, 'an mtime before 1970 keeps its sign')
  t.equal(lstat(`${s.dir}/plain/setuid`)?.atimeNs, -1_500_000_000n, 'and so does an atime')
  t.equal(
    lstat(`${s.dir}/plain/high-device`)?.rdev,
    Number(fs.lstatSync(`${s.dir}/plain/high-device`).rdev),
    'major 4095, minor 1048575 round-trip through mknod and statx',
  )
  t.equal(lstat(`${s.dir}/plain/missing`), undefined, 'a missing path is undefined')
  t.equal(lstat(`${s.dir}/plain/empty/below`), undefined, 'a path through a file is undefined')
})

await t.test('lstat reports the inode flags chattr sets, as inodeFlags does', async (t) => {
  const s = scratch()
  t.teardown(() => {
    spawnSync('chattr', ['-a', '-i', '-d', `${s.dir}/append`, `${s.dir}/locked`])
    s.cleanup()
  })
  fs.writeFileSync(`${s.dir}/append`, '')
  fs.mkdirSync(`${s.dir}/locked`)
  execFileSync('chattr', ['+a', '+d', `${s.dir}/append`])
  execFileSync('chattr', ['+i', `${s.dir}/locked`])
  t.equal(lstat(`${s.dir}/append`)?.flags, InodeFlag.append | InodeFlag.noDump, 'a file: append-only, no-dump')
  t.equal(lstat(`${s.dir}/locked`)?.flags, InodeFlag.immutable, 'a directory: immutable')
  t.equal(lstat(`${s.dir}/append`)?.flags, inodeFlags(`${s.dir}/append`), 'what inodeFlags reads')
  t.equal(lstat(s.dir)?.flags, 0, 'none')
})

await t.test('xattrs round-trip with setfattr and getfattr', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const file = `${s.dir}/file`
  const link = `${s.dir}/link`
  fs.writeFileSync(file, '')
  fs.symlinkSync('file', link)
  const binary = Buffer.from([0, 1, 2, 0xff, 0, 0x80, 10])
  const large = Buffer.alloc(60000, 0x5a)
  setXattr(file, 'user.binary', binary)
  setXattr(file, 'trusted.empty', Buffer.alloc(0))
  setXattr(file, 'trusted.large', large)
  setXattr(link, 'trusted.overlay.redirect', Buffer.from('/elsewhere'))
  const names = Array.from({ length: 120 }, (_, i) => `user.a-long-attribute-name-to-outgrow-the-first-buffer-${i}`)
  for (const name of names) setXattr(file, name, Buffer.from(name))

  const dumped = execFileSync('getfattr', ['--absolute-names', '-h', '-d', '-m', '-', '-e', 'hex', file, link], {
    encoding: 'utf8',
  })
  t.match(dumped, `user.binary=0x${binary.toString('hex')}`, 'getfattr reads the binary value the binding wrote')
  t.match(dumped, `trusted.large=0x${large.toString('hex')}`, 'and the 60,000-byte value')
  t.match(
    dumped,
    `trusted.overlay.redirect=0x${Buffer.from('/elsewhere').toString('hex')}`,
    'on the symlink itself, not its target',
  )
  t.same(
    listXattrs(file).sort(),
    ['trusted.empty', 'trusted.large', 'user.binary', ...names].sort(),
    'every name listed, past the first buffer',
  )
  t.same(listXattrs(link), ['trusted.overlay.redirect'], "the symlink's own xattrs only")
  t.same(getXattr(file, 'trusted.empty'), Buffer.alloc(0), 'an empty value is present, not missing')
  t.same(getXattr(file, 'trusted.large'), large, 'a value larger than the first buffer')

  execFileSync('setfattr', ['-n', 'user.written-by-setfattr', '-v', '0x00ff00', file])
  t.same(getXattr(file, 'user.written-by-setfattr'), Buffer.from([0, 0xff, 0]), 'the binding reads what setfattr wrote')
  removeXattr(file, 'user.binary')
  t.equal(getXattr(file, 'user.binary'), undefined, 'removed')
  t.equal(getXattr(file, 'user.never-set'), undefined, 'never set')
  t.throws(
    () => removeXattr(file, 'user.never-set'),
    { code: 'ENODATA' },
    'removing a missing xattr fails with its errno',
  )
})

await t.test('mknod rejects a device number the kernel cannot encode', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  t.throws(() => makeNode(`${s.dir}/big`, 'char', 0o600, 4096, 0), {
    code: 'EINVAL',
    message: /device 4096:0 is out of range/,
  })
  t.notOk(fs.existsSync(`${s.dir}/big`), 'nothing created')
})

await t.test('the system-call table', async (t) => {
  t.same(syscallNumbers(), SYSCALLS[process.arch], "this machine's architecture is in the table")
  for (const arch of ['x64', 'arm64', 'arm', 'ia32', 'ppc64', 's390x', 'riscv64', 'loong64'])
    t.ok(SYSCALLS[arch], `${arch} is in the table`)
  const header = '/usr/include/x86_64-linux-gnu/asm/unistd_64.h'
  if (process.arch === 'x64') {
    const defined = (name: string): number =>
      Number(new RegExp(`#define __NR_${name} (\\d+)`).exec(fs.readFileSync(header, 'utf8'))?.[1])
    t.same(
      SYSCALLS.x64,
      {
        statx: defined('statx'),
        mknodat: defined('mknodat'),
        pivotRoot: defined('pivot_root'),
        utimensat: defined('utimensat'),
      },
      `x64's numbers match ${header}`,
    )
  }
})

await t.test(
  "the inode-flag ioctl table: _IOR('f', 1, long) and _IOW('f', 2, long) for each architecture",
  async (t) => {
    t.same(inodeFlagIoctls(), INODE_FLAG_IOCTLS[process.arch], "this machine's architecture is in the table")
    // asm-generic/ioctl.h and the powerpc and mips variants, written out again: direction, then size, type and number.
    const ioctl = (layout: 'generic' | 'powerpc-mips', write: boolean, longBytes: number, nr: number): number => {
      const [shift, read, written] = layout === 'generic' ? [30, 2, 1] : [29, 2, 4]
      return ((write ? written : read) * 2 ** shift + (longBytes << 16) + (0x66 << 8) + nr) >>> 0
    }
    const expect: Record<string, ['generic' | 'powerpc-mips', number]> = {
      x64: ['generic', 8],
      ia32: ['generic', 4],
      arm: ['generic', 4],
      arm64: ['generic', 8],
      riscv64: ['generic', 8],
      loong64: ['generic', 8],
      ppc: ['powerpc-mips', 4],
      ppc64: ['powerpc-mips', 8],
      s390: ['generic', 4],
      s390x: ['generic', 8],
      mips: ['powerpc-mips', 4],
      mipsel: ['powerpc-mips', 4],
    }
    t.same(
      Object.keys(INODE_FLAG_IOCTLS).sort(),
      Object.keys(SYSCALLS).sort(),
      'every architecture of the system-call table',
    )
    for (const [arch, [layout, longBytes]] of Object.entries(expect))
      t.same(
        INODE_FLAG_IOCTLS[arch],
        { get: ioctl(layout, false, longBytes, 1), set: ioctl(layout, true, longBytes, 2) },
        arch,
      )
    if (process.arch === 'x64') {
      // What the C headers say on this machine.
      const s = scratch()
      t.teardown(() => s.cleanup())
      fs.writeFileSync(
        `${s.dir}/flags.c`,
        '#include <stdio.h>\n#include <linux/fs.h>\nint main(void) { printf("%lu %lu", (unsigned long)FS_IOC_GETFLAGS, (unsigned long)FS_IOC_SETFLAGS); return 0; }\n',
      )
      execFileSync('cc', ['-o', `${s.dir}/flags`, `${s.dir}/flags.c`])
      const [get, set] = execFileSync(`${s.dir}/flags`, { encoding: 'utf8' }).split(' ').map(Number)
      t.same(INODE_FLAG_IOCTLS.x64, { get, set }, "x64's numbers match <linux/fs.h>")
    }
  },
)

/** ovroot started as if Node reported another architecture (the preload overrides process.arch). */
function ovrootAs(arch: string, dir: string, args: string[]): { status: number; stderr: string } {
  const preload = `${dir}/arch.cjs`
  fs.writeFileSync(preload, `Object.defineProperty(process, 'arch', { value: ${JSON.stringify(arch)} })\n`)
  const result = spawnSync('env', ['-u', 'NODE_OPTIONS', process.execPath, '--require', preload, OVROOT, ...args], {
    encoding: 'utf8',
    env: cleanEnvironment(),
  })
  return { status: result.status ?? -1, stderr: result.stderr }
}

await t.test('an unsupported platform gets one line and exit 4', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  fs.mkdirSync(`${s.dir}/lower`)
  fs.mkdirSync(`${s.dir}/upper`)
  const unknown = ovrootAs('sparc', s.dir, ['diff', '--lower', `${s.dir}/lower`, '--upper', `${s.dir}/upper`])
  t.equal(unknown.status, 4)
  t.match(
    unknown.stderr,
    /^ovroot: this platform \(linux-sparc\) is not supported: its system-call numbers are not in ovroot's table[^\n]*\n$/,
  )
  // mips is in the table, but koffi publishes no MIPS build: its loader finds nothing to load.
  const noBuild = ovrootAs('mips', s.dir, ['reset', '--dry-run'])
  t.equal(noBuild.status, 4)
  t.match(
    noBuild.stderr,
    /^ovroot: this platform \(linux-mips\) is not supported: koffi \(the FFI that reaches libc\) has no native build for it[^\n]*\n$/,
  )
  t.notMatch(
    ovrootAs('sparc', s.dir, ['status']).stderr,
    /not supported/,
    'status needs no system layer and still answers',
  )
})

await t.test('a file the walk saw, replaced since by a symlink or a FIFO, is never read through it', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  fs.writeFileSync(`${s.dir}/outside`, "not the upper's\n")
  for (const size of [5, 5 << 20]) {
    const name = bytesOf(`${s.dir}/f`)
    fs.writeFileSync(`${s.dir}/f`, Buffer.alloc(size, 'x'))
    const walked = lstat(`${s.dir}/f`)
    fs.rmSync(`${s.dir}/f`)
    fs.symlinkSync(`${s.dir}/outside`, `${s.dir}/f`)
    t.throws(
      () => readStableFile(name, { holes: true, stat: walked }),
      { code: 'ECHANGED' },
      `${size} bytes, now a symlink: refused`,
    )
    fs.rmSync(`${s.dir}/f`)
    execFileSync('mkfifo', [`${s.dir}/f`])
    t.throws(
      () => readStableFile(name, { holes: true, stat: walked }),
      { code: 'ECHANGED' },
      `${size} bytes, now a FIFO: refused, not waited on`,
    )
    fs.rmSync(`${s.dir}/f`)
  }
})
