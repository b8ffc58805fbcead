/**
 * The system calls Node does not offer (xattrs, a stat that reuses its buffer,
 * mknod, mount, pivot_root), bound with koffi to the libc this process already
 * runs on (glibc or musl, whatever its soname). One binding for the whole
 * product keeps boot free of process spawns and lets diff read xattrs at
 * syscall speed. Nothing here depends on the architecture's struct layouts:
 * stat goes through statx(2), whose layout is the same everywhere, decoded in
 * the host's byte order; the few raw system calls take their numbers from
 * sys/platform.ts.
 */
import { createRequire } from 'node:module'
import { endianness, constants as osConstants } from 'node:os'
import { SysError } from '../errors.js'
import { showName } from '../names.js'
import type { EntryStat, EntryType } from './types.js'
import { inodeFlagIoctls, noNativeBinding, syscallNumbers, type SyscallNumbers } from './platform.js'

interface KoffiFunction {
  (...args: unknown[]): unknown
}
interface KoffiLibrary {
  func(signature: string): KoffiFunction
}
interface Koffi {
  load(path: string | null): KoffiLibrary
  errno(): number
}

const requireFromHere = createRequire(import.meta.url)

interface Libc {
  llistxattr: KoffiFunction
  lgetxattr: KoffiFunction
  lsetxattr: KoffiFunction
  fsetxattr: KoffiFunction
  lremovexattr: KoffiFunction
  mount: KoffiFunction
  umount2: KoffiFunction
  sync: KoffiFunction
  /** lseek with a 64-bit offset, whatever the libc's off_t (see seekFunction). */
  lseek: KoffiFunction
  /** ioctl(2) is variadic: the argument passes with its koffi type. */
  ioctl: KoffiFunction
  /** syscall(2) is variadic: every call passes a koffi type before each argument. */
  syscall: KoffiFunction
  numbers: SyscallNumbers
}

let koffi: Koffi | undefined
let libc: Libc | undefined

function loadKoffi(): Koffi {
  try {
    return requireFromHere('koffi') as Koffi
  } catch (error) {
    throw noNativeBinding(error)
  }
}

function bind(): { koffi: Koffi; libc: Libc } {
  if (!koffi || !libc) {
    const numbers = syscallNumbers()
    koffi = loadKoffi()
    // null: the symbols the process already has, so whichever libc Node was linked with.
    const lib = koffi.load(null)
    libc = {
      llistxattr: lib.func('intptr_t llistxattr(const char *path, _Out_ uint8_t *list, size_t size)'),
      lgetxattr: lib.func('intptr_t lgetxattr(const char *path, const char *name, _Out_ uint8_t *value, size_t size)'),
      lsetxattr: lib.func(
        'int lsetxattr(const char *path, const char *name, const uint8_t *value, size_t size, int flags)',
      ),
      fsetxattr: lib.func('int fsetxattr(int fd, const char *name, const uint8_t *value, size_t size, int flags)'),
      lremovexattr: lib.func('int lremovexattr(const char *path, const char *name)'),
      mount: lib.func(
        'int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)',
      ),
      umount2: lib.func('int umount2(const char *target, int flags)'),
      sync: lib.func('void sync()'),
      lseek: seekFunction(lib),
      ioctl: lib.func('int ioctl(int fd, unsigned long request, ...)'),
      syscall: lib.func('long syscall(long number, ...)'),
      numbers,
    }
  }
  return { koffi, libc }
}

/**
 * glibc's lseek takes a 32-bit off_t on 32-bit architectures (unless built
 * with _FILE_OFFSET_BITS=64) and exports lseek64 with a 64-bit one on every
 * architecture; musl's off_t is 64-bit everywhere and its lseek64 symbol may
 * be gone (1.2.4 dropped the LFS64 names). So: lseek64 when libc has it, else
 * lseek, which is then the 64-bit one.
 */
function seekFunction(lib: KoffiLibrary): KoffiFunction {
  try {
    return lib.func('int64_t lseek64(int fd, int64_t offset, int whence)')
  } catch {
    return lib.func('int64_t lseek(int fd, int64_t offset, int whence)')
  }
}

/** Fails with the one-line platform message when this platform cannot run ovroot's system layer. */
export function requireSystemLayer(): void {
  bind()
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]))

function errnoName(): string {
  const number = bind().koffi.errno()
  return errnoNames.get(number) ?? `errno ${number}`
}

/** `target` is shown (names.ts) only when the call failed: escaping a path costs more than the call. */
function check(result: unknown, operation: string, target: SysPath): number {
  const value = typeof result === 'bigint' ? Number(result) : (result as number)
  if (value < 0) throw new SysError(errnoName(), operation, shown(target))
  return value
}

/** A path as the kernel takes it: a string (UTF-8), or the bytes of a name that is not UTF-8. */
export type SysPath = string | Buffer

let pathBuffer = Buffer.alloc(4096)

/**
 * The NUL-terminated bytes of a path, for a `const char *` argument: written
 * into one reused buffer (a walk passes two or three paths per entry), valid
 * until the next call. Each system call here takes one path.
 */
function cPath(path: SysPath): Buffer {
  const length = typeof path === 'string' ? Buffer.byteLength(path) : path.length
  if (length >= pathBuffer.length) pathBuffer = Buffer.alloc(2 * (length + 1))
  if (typeof path === 'string') pathBuffer.write(path)
  else path.copy(pathBuffer)
  pathBuffer[length] = 0
  return pathBuffer
}

/** A path in a message: a Buffer in the escaped form of names.ts. */
const shown = (path: SysPath): string => (typeof path === 'string' ? path : showName(path))

/** Values the kernel defines once for every architecture. */
const AT_FDCWD = -100
const AT_SYMLINK_NOFOLLOW = 0x100
const STATX_BASIC_STATS = 0x7ff

/** struct statx (include/uapi/linux/stat.h): byte offsets, one layout on every architecture. */
const STATX = {
  bytes: 256,
  attributes: 8,
  nlink: 16,
  uid: 20,
  gid: 24,
  mode: 28,
  ino: 32,
  size: 40,
  blocks: 48,
  attributesMask: 56,
  /** struct statx_timestamp: __s64 tv_sec, then __u32 tv_nsec. */
  atime: 64,
  ctime: 96,
  mtime: 112,
  rdevMajor: 128,
  rdevMinor: 132,
  devMajor: 136,
  devMinor: 140,
} as const
const NANOSECONDS = 1_000_000_000n
const statxBuffer = Buffer.alloc(STATX.bytes)
const statxView = new DataView(statxBuffer.buffer, statxBuffer.byteOffset, STATX.bytes)
const littleEndian = endianness() === 'LE'

/** The dev_t encoding glibc's and musl's makedev produce, which Node's fs.Stats report too. */
function makeDeviceNumber(major: number, minor: number): bigint {
  const ma = BigInt(major)
  const mi = BigInt(minor)
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn)
}

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
 * statx(2) of a path into the reused buffer, not following a final symlink,
 * asking for the `mask` fields; false when nothing is at the path.
 */
function statx(path: SysPath, mask: number): boolean {
  const { libc } = bind()
  const result = libc.syscall(
    libc.numbers.statx,
    'int',
    AT_FDCWD,
    'void *',
    cPath(path),
    'int',
    AT_SYMLINK_NOFOLLOW,
    'uint32_t',
    mask,
    'void *',
    statxBuffer,
  )
  if (Number(result) === 0) return true
  const errno = errnoName()
  if (errno === 'ENOENT' || errno === 'ENOTDIR') return false
  throw new SysError(errno, 'statx', shown(path))
}

/**
 * statx(2) of a path, not following a final symlink, into a reused buffer:
 * one plain object and no Stats, and diff stats every entry of the upper and
 * its lower twin, a sync's scan every entry of the upper. The inode flags come
 * with it (statx reports them unasked). Undefined for a path that does not exist.
 */
export function lstat(path: SysPath): EntryStat | undefined {
  if (!statx(path, STATX_BASIC_STATS)) return undefined
  const u32 = (offset: number): number => statxView.getUint32(offset, littleEndian)
  const u64 = (offset: number): bigint => statxView.getBigUint64(offset, littleEndian)
  const mode = statxView.getUint16(STATX.mode, littleEndian)
  return {
    type: TYPE_OF_FORMAT.get(mode & S_IFMT) ?? 'block',
    permissions: mode & 0o7777,
    uid: u32(STATX.uid),
    gid: u32(STATX.gid),
    size: Number(u64(STATX.size)),
    rdev: Number(makeDeviceNumber(u32(STATX.rdevMajor), u32(STATX.rdevMinor))),
    dev: makeDeviceNumber(u32(STATX.devMajor), u32(STATX.devMinor)),
    ino: u64(STATX.ino),
    nlink: u32(STATX.nlink),
    blocks: Number(u64(STATX.blocks)),
    atimeNs: timestamp(STATX.atime),
    mtimeNs: timestamp(STATX.mtime),
    ctimeNs: timestamp(STATX.ctime),
    flags: keptFlags(),
  }
}

/** A statx_timestamp of the buffer in nanoseconds: signed seconds (before 1970 negative), then nanoseconds 0 to 999,999,999. */
function timestamp(offset: number): bigint {
  const seconds = statxView.getBigInt64(offset, littleEndian)
  return seconds * NANOSECONDS + BigInt(statxView.getUint32(offset + 8, littleEndian))
}

/** The kept inode flags in the buffer, of those its filesystem reports. */
function keptFlags(): number {
  return lowWord(STATX.attributes) & lowWord(STATX.attributesMask) & KEPT_FLAGS
}

/** The low 32 bits of a __u64 of the buffer (the kept flags are all there), without a BigInt. */
const lowWord = (offset: number): number => statxView.getUint32(littleEndian ? offset : offset + 4, littleEndian)

const ENODATA_NAMES = new Set(['ENODATA', 'ENOTSUP', 'EOPNOTSUPP'])
let listBuffer = Buffer.alloc(4096)
let valueBuffer = Buffer.alloc(4096)

/** Names of all xattrs of a path (not following symlinks) that this process may see. */
export function listXattrs(path: SysPath): string[] {
  const { libc } = bind()
  for (;;) {
    const size = Number(libc.llistxattr(cPath(path), listBuffer, listBuffer.length))
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
    throw new SysError(errno, 'listxattr', shown(path))
  }
}

/** The value of one xattr, or undefined when the path does not carry it. */
export function getXattr(path: SysPath, name: string): Buffer | undefined {
  const { libc } = bind()
  for (;;) {
    const size = Number(libc.lgetxattr(cPath(path), name, valueBuffer, valueBuffer.length))
    if (size >= 0) return Buffer.from(valueBuffer.subarray(0, size))
    const errno = errnoName()
    if (errno === 'ERANGE') {
      valueBuffer = Buffer.alloc(Math.max(valueBuffer.length * 4, 65536))
      continue
    }
    if (ENODATA_NAMES.has(errno)) return undefined
    throw new SysError(errno, `getxattr ${name}`, shown(path))
  }
}

export function setXattr(path: SysPath, name: string, value: Buffer): void {
  check(bind().libc.lsetxattr(cPath(path), name, value, value.length, 0), `setxattr ${name}`, path)
}

/** setXattr on an open file: no path to resolve again. `target` names it in an error. */
export function setXattrOf(fd: number, name: string, value: Buffer, target: SysPath): void {
  check(bind().libc.fsetxattr(fd, name, value, value.length, 0), `setxattr ${name}`, target)
}

export function removeXattr(path: SysPath, name: string): void {
  check(bind().libc.lremovexattr(cPath(path), name), `removexattr ${name}`, path)
}

/**
 * atime and mtime to the nanosecond, not following a final symlink:
 * utimensat(2) with two struct __kernel_timespec (64-bit seconds, then
 * nanoseconds, in the host's byte order; the same layout on every
 * architecture). Times before 1970 are negative seconds with a positive
 * nanosecond part, as the kernel keeps them.
 */
export function setTimes(path: SysPath, atimeNs: bigint, mtimeNs: bigint): void {
  const { libc } = bind()
  const times = timespecs(atimeNs, mtimeNs)
  check(
    libc.syscall(
      libc.numbers.utimensat,
      'int',
      AT_FDCWD,
      'void *',
      cPath(path),
      'void *',
      times,
      'int',
      AT_SYMLINK_NOFOLLOW,
    ),
    'set times of',
    path,
  )
}

/** setTimes on an open file (utimensat with no path: what futimens does). `target` names it in an error. */
export function setTimesOf(fd: number, atimeNs: bigint, mtimeNs: bigint, target: SysPath): void {
  const { libc } = bind()
  const times = timespecs(atimeNs, mtimeNs)
  check(
    libc.syscall(libc.numbers.utimensat, 'int', fd, 'void *', null, 'void *', times, 'int', 0),
    'set times of',
    target,
  )
}

const timesBuffer = Buffer.alloc(32)

/** The two timespecs utimensat takes, in a reused buffer. */
function timespecs(atimeNs: bigint, mtimeNs: bigint): Buffer {
  const put = (offset: number, ns: bigint): void => {
    // Floor division: -1.5 s is -2 s and 500,000,000 ns.
    const seconds = ns >= 0n || ns % NANOSECONDS === 0n ? ns / NANOSECONDS : ns / NANOSECONDS - 1n
    const nanoseconds = ns - seconds * NANOSECONDS
    if (littleEndian) {
      timesBuffer.writeBigInt64LE(seconds, offset)
      timesBuffer.writeBigInt64LE(nanoseconds, offset + 8)
    } else {
      timesBuffer.writeBigInt64BE(seconds, offset)
      timesBuffer.writeBigInt64BE(nanoseconds, offset + 8)
    }
  }
  put(0, atimeNs)
  put(16, mtimeNs)
  return timesBuffer
}

const S_IFCHR = 0o020000
const S_IFBLK = 0o060000
const S_IFIFO = 0o010000

export type NodeKind = 'char' | 'block' | 'fifo'

/** The 32-bit dev_t the mknodat system call takes (the kernel's new_encode_dev). */
function kernelDeviceNumber(path: SysPath, major: number, minor: number): number {
  if (major > 0xfff || minor > 0xfffff)
    throw new SysError(
      'EINVAL',
      'mknod',
      shown(path),
      `device ${major}:${minor} is out of range (major up to 4095, minor up to 1048575)`,
    )
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0
}

export function makeNode(path: SysPath, kind: NodeKind, permissions: number, major = 0, minor = 0): void {
  const { libc } = bind()
  const type = kind === 'char' ? S_IFCHR : kind === 'block' ? S_IFBLK : S_IFIFO
  const result = libc.syscall(
    libc.numbers.mknodat,
    'int',
    AT_FDCWD,
    'void *',
    cPath(path),
    'uint32_t',
    type | (permissions & 0o7777),
    'uint32_t',
    kernelDeviceNumber(path, major, minor),
  )
  check(result, 'mknod', path)
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
  check(
    bind().libc.mount(source, target, fstype, flags, data),
    `mount ${fstype ?? ''}`.trimEnd(),
    `${source} on ${target}`,
  )
}

/** Flip a mounted filesystem between read-only and read-write (source and type are ignored on a remount). */
export function remount(target: string, options: { readOnly: boolean }): void {
  mount('none', target, null, MountFlag.remount | MountFlag.noAtime | (options.readOnly ? MountFlag.readOnly : 0), null)
}

const MNT_DETACH = 2
export function unmount(target: string, options: { lazy: boolean } = { lazy: false }): void {
  check(bind().libc.umount2(target, options.lazy ? MNT_DETACH : 0), 'umount', target)
}

export function pivotRoot(newRoot: string, putOld: string): void {
  const { libc } = bind()
  check(
    libc.syscall(libc.numbers.pivotRoot, 'str', newRoot, 'str', putOld),
    'pivot_root',
    `${newRoot} (old root to ${putOld})`,
  )
}

/**
 * The inode flags ovroot keeps (`chattr` a, i, d): the FS_*_FL bits, which
 * statx(2) reports under the same values as STATX_ATTR_APPEND, _IMMUTABLE and
 * _NODUMP (include/uapi/linux/fs.h, stat.h), so reading them costs one statx.
 */
export const InodeFlag = { append: 0x20, immutable: 0x10, noDump: 0x40 } as const
const KEPT_FLAGS = InodeFlag.append | InodeFlag.immutable | InodeFlag.noDump

/** The kept inode flags of a path, not following a symlink: 0 when it has none or its filesystem reports none. */
export function inodeFlags(path: SysPath): number {
  // The attributes come with every statx: no field needs asking for.
  if (!statx(path, 0)) throw new SysError('ENOENT', 'statx', shown(path))
  return keptFlags()
}

/** inodeFlags, or 0 when nothing is at `path`. */
export function inodeFlagsIfPresent(path: SysPath): number {
  return statx(path, 0) ? keptFlags() : 0
}

/** Which of the kept inode flags the filesystem of `path` holds (tmpfs from Linux 6.0 and ext4 all, UBIFS a and i, JFFS2 none). */
export function inodeFlagsHeld(path: SysPath): number {
  if (!statx(path, 0)) throw new SysError('ENOENT', 'statx', shown(path))
  return lowWord(STATX.attributesMask) & KEPT_FLAGS
}

/** Filesystems without inode flags (JFFS2, a FAT or 9p mount) answer these. */
const NO_FLAGS = new Set(['ENOTTY', 'EOPNOTSUPP', 'ENOTSUP', 'EINVAL'])

/**
 * Set the kept inode flags of an open file or directory to `flags`, leaving
 * every other flag as it is (FS_IOC_GETFLAGS, then FS_IOC_SETFLAGS). Answers
 * false when the filesystem has no inode flags.
 */
export function setInodeFlags(fd: number, flags: number, target: SysPath): boolean {
  const { libc } = bind()
  const requests = inodeFlagIoctls()
  // The kernel reads and writes an int; a long's room keeps a 64-bit big-endian kernel's view of it at offset 0 either way.
  const value = Buffer.alloc(8)
  if (Number(libc.ioctl(fd, requests.get, 'void *', value)) < 0) {
    const errno = errnoName()
    if (NO_FLAGS.has(errno)) return false
    throw new SysError(errno, 'get inode flags of', shown(target))
  }
  const current = littleEndian ? value.readInt32LE(0) : value.readInt32BE(0)
  const wanted = (current & ~KEPT_FLAGS) | (flags & KEPT_FLAGS)
  if (wanted === current) return true
  if (littleEndian) value.writeInt32LE(wanted, 0)
  else value.writeInt32BE(wanted, 0)
  if (Number(libc.ioctl(fd, requests.set, 'void *', value)) < 0) {
    const errno = errnoName()
    if (NO_FLAGS.has(errno)) return false
    throw new SysError(errno, 'set inode flags of', shown(target))
  }
  return true
}

/** lseek(2)'s whence values for holes: the same on every Linux architecture (include/uapi/linux/fs.h). */
const SEEK_DATA = 3
const SEEK_HOLE = 4

/**
 * Where a file's data lies, as (offset, length) pairs in order, the rest of
 * its first `size` bytes being holes (SEEK_DATA/SEEK_HOLE). A filesystem that
 * does not track holes reports all of the file as data, which is still right.
 */
export function dataRegions(fd: number, size: number, target: SysPath): [offset: number, length: number][] {
  const { libc } = bind()
  const regions: [number, number][] = []
  for (let position = 0; position < size;) {
    const data = Number(libc.lseek(fd, position, SEEK_DATA))
    if (data < 0) {
      const errno = errnoName()
      // ENXIO: no data from here to the end of the file.
      if (errno === 'ENXIO') break
      throw new SysError(errno, 'lseek SEEK_DATA', shown(target))
    }
    if (data >= size) break
    const hole = check(libc.lseek(fd, data, SEEK_HOLE), 'lseek SEEK_HOLE', target)
    const end = Math.min(hole, size)
    regions.push([data, end - data])
    position = end
  }
  return regions
}

export function syncAll(): void {
  bind().libc.sync()
}
