/**
 * The system calls Node does not offer (xattrs, lstat into a reused buffer,
 * mknod, mount, pivot_root), bound to libc with koffi. One binding for the whole product keeps
 * boot free of process spawns and lets diff read xattrs at syscall speed.
 */
import { createRequire } from 'node:module'
import { constants as osConstants } from 'node:os'
import { SysError } from '../errors.js'
import type { EntryStat, EntryType } from '../overlay/types.js'

interface KoffiFunction {
  (...args: unknown[]): unknown
}
interface KoffiLibrary {
  func(signature: string): KoffiFunction
}
interface Koffi {
  load(path: string): KoffiLibrary
  errno(): number
}

const requireFromHere = createRequire(import.meta.url)

interface Libc {
  lstat: KoffiFunction
  llistxattr: KoffiFunction
  lgetxattr: KoffiFunction
  lsetxattr: KoffiFunction
  lremovexattr: KoffiFunction
  mknod: KoffiFunction
  mount: KoffiFunction
  umount2: KoffiFunction
  syscall: KoffiFunction
  sync: KoffiFunction
}

let koffi: Koffi | undefined
let libc: Libc | undefined

function bind(): { koffi: Koffi; libc: Libc } {
  if (!koffi || !libc) {
    koffi = requireFromHere('koffi') as Koffi
    const lib = koffi.load('libc.so.6')
    libc = {
      lstat: lib.func('int lstat(const char *path, _Out_ uint8_t *buf)'),
      llistxattr: lib.func('intptr_t llistxattr(const char *path, _Out_ uint8_t *list, size_t size)'),
      lgetxattr: lib.func('intptr_t lgetxattr(const char *path, const char *name, _Out_ uint8_t *value, size_t size)'),
      lsetxattr: lib.func('int lsetxattr(const char *path, const char *name, const uint8_t *value, size_t size, int flags)'),
      lremovexattr: lib.func('int lremovexattr(const char *path, const char *name)'),
      mknod: lib.func('int mknod(const char *path, uint32_t mode, uint64_t dev)'),
      mount: lib.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)'),
      umount2: lib.func('int umount2(const char *target, int flags)'),
      syscall: lib.func('long syscall(long number, const char *a, const char *b)'),
      sync: lib.func('void sync()'),
    }
  }
  return { koffi, libc }
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]))

function errnoName(): string {
  const number = bind().koffi.errno()
  return errnoNames.get(number) ?? `errno ${number}`
}

function check(result: unknown, operation: string, target: string): number {
  const value = typeof result === 'bigint' ? Number(result) : (result as number)
  if (value < 0) throw new SysError(errnoName(), operation, target)
  return value
}

/** struct stat as glibc lays it out, in 32-bit words: x86_64's own, and asm-generic's (arm64, riscv64). */
const STAT_LAYOUT =
  process.arch === 'x64'
    ? { bytes: 144, dev: 0, ino: 2, nlink: 4, mode: 6, uid: 7, gid: 8, rdev: 10, size: 12 }
    : { bytes: 128, dev: 0, ino: 2, mode: 4, nlink: 5, uid: 6, gid: 7, rdev: 8, size: 12 }
const statBuffer = Buffer.alloc(STAT_LAYOUT.bytes)
const statWords = new Uint32Array(statBuffer.buffer, statBuffer.byteOffset, STAT_LAYOUT.bytes / 4)

const u64 = (word: number): number => (statWords[word] ?? 0) + (statWords[word + 1] ?? 0) * 0x100000000

const S_IFMT = 0o170000
const TYPE_OF_FORMAT = new Map<number, EntryType>([
  [0o100000, 'file'],
  [0o040000, 'dir'],
  [0o120000, 'symlink'],
  [0o010000, 'fifo'],
  [0o140000, 'socket'],
  [0o020000, 'char'],
  [0o060000, 'block'],
])

/**
 * lstat(2) straight into a reused buffer, a third cheaper than fs.lstatSync:
 * diff stats every entry of the upper and its lower twin. Answers undefined
 * for a path that does not exist.
 */
export function lstat(path: string): EntryStat | undefined {
  if (bind().libc.lstat(path, statBuffer) !== 0) {
    const errno = errnoName()
    if (errno === 'ENOENT' || errno === 'ENOTDIR') return undefined
    throw new SysError(errno, 'lstat', path)
  }
  const layout = STAT_LAYOUT
  const mode = statWords[layout.mode] ?? 0
  return {
    type: TYPE_OF_FORMAT.get(mode & S_IFMT) ?? 'block',
    permissions: mode & 0o7777,
    uid: statWords[layout.uid] ?? 0,
    gid: statWords[layout.gid] ?? 0,
    size: u64(layout.size),
    rdev: u64(layout.rdev),
    dev: u64(layout.dev),
    ino: u64(layout.ino),
    nlink: process.arch === 'x64' ? u64(layout.nlink) : (statWords[layout.nlink] ?? 0),
  }
}

const ENODATA_NAMES = new Set(['ENODATA', 'ENOTSUP', 'EOPNOTSUPP'])
let listBuffer = Buffer.alloc(4096)
let valueBuffer = Buffer.alloc(4096)

/** Names of all xattrs of a path (not following symlinks) that this process may see. */
export function listXattrs(path: string): string[] {
  const { libc } = bind()
  for (;;) {
    const size = Number(libc.llistxattr(path, listBuffer, listBuffer.length))
    if (size >= 0) {
      if (size === 0) return []
      return listBuffer.toString('utf8', 0, size - 1).split('\0')
    }
    const errno = errnoName()
    if (errno === 'ERANGE') {
      listBuffer = Buffer.alloc(listBuffer.length * 4)
      continue
    }
    if (ENODATA_NAMES.has(errno)) return []
    throw new SysError(errno, 'listxattr', path)
  }
}

/** The value of one xattr, or undefined when the path does not carry it. */
export function getXattr(path: string, name: string): Buffer | undefined {
  const { libc } = bind()
  for (;;) {
    const size = Number(libc.lgetxattr(path, name, valueBuffer, valueBuffer.length))
    if (size >= 0) return Buffer.from(valueBuffer.subarray(0, size))
    const errno = errnoName()
    if (errno === 'ERANGE') {
      valueBuffer = Buffer.alloc(Math.max(valueBuffer.length * 4, 65536))
      continue
    }
    if (ENODATA_NAMES.has(errno)) return undefined
    throw new SysError(errno, `getxattr ${name}`, path)
  }
}

export function setXattr(path: string, name: string, value: Buffer): void {
  check(bind().libc.lsetxattr(path, name, value, value.length, 0), `setxattr ${name}`, path)
}

export function removeXattr(path: string, name: string): void {
  check(bind().libc.lremovexattr(path, name), `removexattr ${name}`, path)
}

const S_IFCHR = 0o020000
const S_IFBLK = 0o060000
const S_IFIFO = 0o010000

export type NodeKind = 'char' | 'block' | 'fifo'

/** glibc's makedev: the 64-bit encoding the kernel's new_encode_dev expects. */
function makeDevice(major: number, minor: number): bigint {
  const ma = BigInt(major)
  const mi = BigInt(minor)
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn)
}

export function makeNode(path: string, kind: NodeKind, permissions: number, major = 0, minor = 0): void {
  const type = kind === 'char' ? S_IFCHR : kind === 'block' ? S_IFBLK : S_IFIFO
  check(bind().libc.mknod(path, type | (permissions & 0o7777), makeDevice(major, minor)), 'mknod', path)
}

export const MountFlag = {
  readOnly: 1,
  noSuid: 2,
  noDev: 4,
  noExec: 8,
  remount: 32,
  noAtime: 1024,
  bind: 4096,
  move: 8192,
  recursive: 16384,
  private: 1 << 18,
} as const

export function mount(source: string, target: string, fstype: string | null, flags: number, data: string | null): void {
  check(bind().libc.mount(source, target, fstype, flags, data), `mount ${fstype ?? ''}`.trimEnd(), `${source} on ${target}`)
}

/** Flip a mounted filesystem between read-only and read-write (source and type are ignored on a remount). */
export function remount(target: string, readOnly: boolean): void {
  mount('none', target, null, MountFlag.remount | MountFlag.noAtime | (readOnly ? MountFlag.readOnly : 0), null)
}

const MNT_DETACH = 2
export function unmount(target: string, lazy = false): void {
  check(bind().libc.umount2(target, lazy ? MNT_DETACH : 0), 'umount', target)
}

const SYS_PIVOT_ROOT_X86_64 = 155
const SYS_PIVOT_ROOT_GENERIC = 41
export function pivotRoot(newRoot: string, putOld: string): void {
  const number = process.arch === 'x64' ? SYS_PIVOT_ROOT_X86_64 : SYS_PIVOT_ROOT_GENERIC
  check(bind().libc.syscall(number, newRoot, putOld), 'pivot_root', `${newRoot} (old root to ${putOld})`)
}

export function syncAll(): void {
  bind().libc.sync()
}
