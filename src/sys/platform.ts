/**
 * Everything ovroot knows that depends on the CPU architecture, in one table:
 * the numbers of the four system calls it makes without a libc wrapper. libc
 * has no pivot_root wrapper at all, statx's wrapper is missing from musl before
 * 1.2.5, glibc exports no mknod symbol before 2.33, and libc's utimensat takes
 * a timespec whose layout depends on the libc and its build (32-bit time_t or
 * not); the kernel's own entry points work on every libc. Numbers are from each architecture's
 * asm/unistd.h (Linux 6.1 headers); MIPS is the o32 ABI, the one Node's
 * mips/mipsel builds use.
 */
import { endianness } from 'node:os'
import { ExitCode, OvrootError } from '../errors.js'

export interface SyscallNumbers {
  statx: number
  mknodat: number
  pivotRoot: number
  /**
   * utimensat with 64-bit seconds on every architecture: utimensat itself on
   * 64-bit ones, utimensat_time64 on 32-bit ones (whose utimensat takes a
   * 32-bit time_t, which ends in 2038). Either takes two __kernel_timespec.
   */
  utimensat: number
}

/** Keyed by Node's process.arch. arm64, riscv64 and loong64 use the asm-generic table. */
export const SYSCALLS: Readonly<Record<string, SyscallNumbers>> = {
  x64: { statx: 332, mknodat: 259, pivotRoot: 155, utimensat: 280 },
  ia32: { statx: 383, mknodat: 297, pivotRoot: 217, utimensat: 412 },
  arm: { statx: 397, mknodat: 324, pivotRoot: 218, utimensat: 412 },
  arm64: { statx: 291, mknodat: 33, pivotRoot: 41, utimensat: 88 },
  riscv64: { statx: 291, mknodat: 33, pivotRoot: 41, utimensat: 88 },
  loong64: { statx: 291, mknodat: 33, pivotRoot: 41, utimensat: 88 },
  ppc: { statx: 383, mknodat: 288, pivotRoot: 203, utimensat: 412 },
  ppc64: { statx: 383, mknodat: 288, pivotRoot: 203, utimensat: 304 },
  s390: { statx: 379, mknodat: 290, pivotRoot: 217, utimensat: 412 },
  s390x: { statx: 379, mknodat: 290, pivotRoot: 217, utimensat: 315 },
  mips: { statx: 4366, mknodat: 4290, pivotRoot: 4216, utimensat: 4412 },
  mipsel: { statx: 4366, mknodat: 4290, pivotRoot: 4216, utimensat: 4412 },
}

/**
 * FS_IOC_GETFLAGS and FS_IOC_SETFLAGS (`chattr`'s inode flags), keyed like
 * SYSCALLS. They are _IOR('f', 1, long) and _IOW('f', 2, long), so they
 * depend on the size of a long (4 bytes on 32-bit architectures) and on how
 * the architecture lays out ioctl numbers: powerpc and mips have 3 direction
 * bits at bit 29 (read 2, write 4), the others 2 at bit 30 (read 2, write 1).
 * The kernel reads and writes an int through the pointer either way.
 */
export interface InodeFlagIoctls {
  get: number
  set: number
}

const GENERIC_64 = { get: 0x80086601, set: 0x40086602 }
const GENERIC_32 = { get: 0x80046601, set: 0x40046602 }
const POWERPC_MIPS_64 = { get: 0x40086601, set: 0x80086602 }
const POWERPC_MIPS_32 = { get: 0x40046601, set: 0x80046602 }

export const INODE_FLAG_IOCTLS: Readonly<Record<string, InodeFlagIoctls>> = {
  x64: GENERIC_64,
  ia32: GENERIC_32,
  arm: GENERIC_32,
  arm64: GENERIC_64,
  riscv64: GENERIC_64,
  loong64: GENERIC_64,
  ppc: POWERPC_MIPS_32,
  ppc64: POWERPC_MIPS_64,
  s390: GENERIC_32,
  s390x: GENERIC_64,
  mips: POWERPC_MIPS_32,
  mipsel: POWERPC_MIPS_32,
}

/** How messages name the running platform: linux-arm64, linux-mips (big-endian). */
export function platformName(): string {
  return `${process.platform}-${process.arch}${endianness() === 'BE' ? ' (big-endian)' : ''}`
}

export function inodeFlagIoctls(): InodeFlagIoctls {
  const numbers = INODE_FLAG_IOCTLS[process.arch]
  if (!numbers) throw unsupported(`its ioctl numbers are not in ovroot's table (src/sys/platform.ts)`)
  return numbers
}

export function syscallNumbers(): SyscallNumbers {
  if (process.platform !== 'linux') throw unsupported('ovroot manages Linux overlay roots only')
  const numbers = SYSCALLS[process.arch]
  if (!numbers)
    throw unsupported(
      `its system-call numbers are not in ovroot's table (src/sys/platform.ts knows ${Object.keys(SYSCALLS).join(', ')})`,
    )
  return numbers
}

/** koffi, the FFI ovroot reaches libc through, publishes no build for this platform. */
export function noNativeBinding(cause: unknown): OvrootError {
  const detail = cause instanceof Error ? cause.message.split('\n')[0] : String(cause)
  return unsupported(
    `koffi (the FFI that reaches libc) has no native build for it, or its build does not load (${detail}); koffi ships Linux builds for x64, ia32, arm, arm64, riscv64, loong64 and ppc64 little-endian, on glibc and musl`,
    cause,
  )
}

function unsupported(why: string, cause?: unknown): OvrootError {
  return new OvrootError(
    'EPLATFORM',
    ExitCode.environment,
    `this platform (${platformName()}) is not supported: ${why}`,
    { cause },
  )
}
