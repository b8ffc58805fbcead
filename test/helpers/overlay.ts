/**
 * Real overlay mounts for tests, and the oracle the diff is checked against:
 * the mounted merged view compared entry by entry with the lower view.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { listXattrs, getXattr, inodeFlags } from '../../src/sys/libc.js'

export const OVROOT = fileURLToPath(new URL('../../dist/ovroot.js', import.meta.url))

/** The overlay mount option sets a device may use; every kernel-backed test runs under each. */
export const MOUNT_VARIANTS: Record<string, string[]> = {
  'default options': [],
  'redirect_dir=on': ['redirect_dir=on'],
  'redirect_dir=on,metacopy=on': ['redirect_dir=on', 'metacopy=on'],
  'index=on': ['index=on'],
  userxattr: ['userxattr'],
}

/**
 * An upper as a faithful copy must reproduce it: names and link targets as
 * bytes, type, mode, owner, mtime and atime to the nanosecond, bytes (or a
 * stub's size), a file's allocated blocks (holes stay holes), device numbers,
 * every xattr, inode flags (chattr a, i, d), and which names share an inode.
 * Keys and targets show bytes that are not printable ASCII as \xNN (an
 * independent oracle: not the form ovroot prints). Stats are taken before
 * the content is read; scratch() mounts noatime, so reading moves no atime.
 */
export function upperSnapshot(root: string): Map<string, string> {
  const entries = new Map<string, string>()
  const firstName = new Map<string, string>()
  const visit = (rel: Buffer): void => {
    const full = Buffer.concat([Buffer.from(root), rel])
    const key = printable(rel) || '/'
    const st = fs.lstatSync(full, { bigint: true })
    const type = typeName(st)
    const inode = `${st.dev}:${st.ino}`
    const link = type !== 'dir' && st.nlink > 1n ? firstName.get(inode) : undefined
    if (type !== 'dir' && st.nlink > 1n && !link) firstName.set(inode, key)
    const content =
      type === 'file'
        ? createHash('sha256').update(fs.readFileSync(full)).digest('hex')
        : type === 'symlink'
          ? printable(fs.readlinkSync(full, { encoding: 'buffer' }))
          : type === 'char' || type === 'block'
            ? String(st.rdev)
            : ''
    const flags = type === 'file' || type === 'dir' ? inodeFlags(full) : 0
    const xattrs = listXattrs(full)
      .sort()
      .map((name) => `${name}=${getXattr(full, name)?.toString('hex')}`)
      .join(',')
    entries.set(
      key,
      link
        ? `hardlink to ${link}`
        : `${type} ${(st.mode & 0o7777n).toString(8)} ${st.uid}:${st.gid} ${st.size}${type === 'file' ? ` blocks ${st.blocks}` : ''} mtime ${st.mtimeNs} atime ${st.atimeNs} ${content} [${xattrs}]${flags ? ` flags ${flags.toString(16)}` : ''}`,
    )
    if (type === 'dir')
      for (const name of fs.readdirSync(full, { encoding: 'buffer' }).sort((a, b) => Buffer.compare(a, b)))
        visit(Buffer.concat([rel, Buffer.from('/'), name]))
  }
  visit(Buffer.alloc(0))
  return entries
}

/** Printable ASCII as it is, every other byte (and the backslash) as \xNN. */
function printable(bytes: Buffer): string {
  return [...bytes]
    .map((byte) =>
      byte >= 0x20 && byte < 0x7f && byte !== 0x5c
        ? String.fromCharCode(byte)
        : `\\x${byte.toString(16).padStart(2, '0')}`,
    )
    .join('')
}

/**
 * A snapshot without the metadata that binds an upper to one filesystem
 * (origin handles, the root's uuid, impure and nlink bookkeeping): a restore
 * clears it, so that the upper mounts with index=on on the device it lands on.
 */
export function withoutIdentity(entries: Map<string, string>): Map<string, string> {
  const identity = /(^|,)(trusted|user)\.overlay\.(origin|uuid|impure|nlink)=[0-9a-f]*/g
  return new Map(
    [...entries].map(([path, entry]) => [
      path,
      entry.replace(/\[([^\]]*)\]$/, (_, xattrs: string) => `[${xattrs.replace(identity, '').replace(/^,/, '')}]`),
    ]),
  )
}

/** A snapshot without atimes: for a copy made by a tool that does not keep them (GNU tar's extraction). */
export function withoutAtime(entries: Map<string, string>): Map<string, string> {
  return new Map([...entries].map(([path, entry]) => [path, entry.replace(/ atime -?\d+ /, ' ')]))
}

/** A snapshot without allocated blocks: for a copy made from an archive that stored holes as zeros. */
export function withoutBlocks(entries: Map<string, string>): Map<string, string> {
  return new Map([...entries].map(([path, entry]) => [path, entry.replace(/ blocks \d+ /, ' ')]))
}

/**
 * The kernel shares one whiteout inode among many names; a copy that gives
 * each name a whiteout of its own means the same to overlayfs. Hardlinks
 * between regular files stay significant.
 */
export function withoutSharedWhiteouts(entries: Map<string, string>): Map<string, string> {
  const resolve = (entry: string): string => {
    const target = entry.startsWith('hardlink to ') ? entries.get(entry.slice('hardlink to '.length)) : undefined
    return target?.startsWith('char 0 ') ? target : entry
  }
  return new Map([...entries].map(([path, entry]) => [path, resolve(entry)]))
}

export interface Scratch {
  dir: string
  cleanup(): void
}

/** A fresh tmpfs (trusted and user xattrs, whiteouts) that is unmounted afterwards. */
export function scratch(): Scratch {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovroot-test-'))
  // noatime: a test's own reads must not move the atimes a copy is checked against.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512m,noatime', 'tmpfs', dir])
  return {
    dir,
    cleanup() {
      for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n').reverse()) {
        const target = line.split(' ')[1]
        if (target && target.startsWith(`${dir}/`)) spawnSync('umount', ['-l', target])
      }
      spawnSync('umount', ['-l', dir])
      fs.rmSync(dir, { recursive: true, force: true })
    },
  }
}

export function mountOverlay(
  merged: string,
  lowers: string[],
  upper: string | undefined,
  work: string | undefined,
  options: string[],
): void {
  const parts = [`lowerdir=${lowers.join(':')}`]
  if (upper && work) parts.push(`upperdir=${upper}`, `workdir=${work}`)
  parts.push(...options)
  fs.mkdirSync(merged, { recursive: true })
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', parts.join(','), merged])
}

export function unmount(target: string): void {
  execFileSync('umount', [target])
}

export interface Described {
  type: string
  permissions: number
  uid: number
  gid: number
  content: string
  xattrs: string
}

const typeName = (st: fs.Stats | fs.BigIntStats): string =>
  st.isFile()
    ? 'file'
    : st.isDirectory()
      ? 'dir'
      : st.isSymbolicLink()
        ? 'symlink'
        : st.isFIFO()
          ? 'fifo'
          : st.isSocket()
            ? 'socket'
            : st.isCharacterDevice()
              ? 'char'
              : 'block'

/** The xattrs the diff contract compares: user data, file capabilities, POSIX ACLs. */
const AUDITED_XATTR = /^(user\.|security\.capability$|system\.posix_acl_(access|default)$)/

/** Bytes as text when they are UTF-8, otherwise in the \\xNN form of `printable`: names are bytes. */
const asKey = (bytes: Buffer): string => {
  const text = bytes.toString('utf8')
  return Buffer.from(text).equals(bytes) ? text : printable(bytes)
}

/** Every entry of a tree, described by what the diff contract compares. */
export function snapshot(root: string, userXattrPrefixToIgnore?: string): Map<string, Described> {
  const entries = new Map<string, Described>()
  const visit = (relBytes: Buffer): void => {
    const rel = asKey(relBytes)
    const full = Buffer.concat([Buffer.from(root), relBytes])
    const st = fs.lstatSync(full)
    const type = typeName(st)
    let content = ''
    if (type === 'file') content = createHash('sha256').update(fs.readFileSync(full)).digest('hex')
    else if (type === 'symlink') content = asKey(fs.readlinkSync(full, { encoding: 'buffer' }))
    else if (type === 'char' || type === 'block') content = String(st.rdev)
    const xattrs =
      type === 'symlink' || type === 'file' || type === 'dir'
        ? listXattrs(full)
            .filter(
              (name) =>
                AUDITED_XATTR.test(name) && !(userXattrPrefixToIgnore && name.startsWith(userXattrPrefixToIgnore)),
            )
            .sort()
            .map((name) => `${name}=${getXattr(full, name)?.toString('hex')}`)
            .join(',')
        : ''
    entries.set(rel || '/', { type, permissions: st.mode & 0o7777, uid: st.uid, gid: st.gid, content, xattrs })
    if (type === 'dir')
      for (const name of fs.readdirSync(full, { encoding: 'buffer' }))
        visit(Buffer.concat([relBytes, Buffer.from('/'), name]))
  }
  visit(Buffer.alloc(0))
  return entries
}

export interface Expected {
  path: string
  change: string
  type: string
}

/** The contract, applied to two full snapshots. */
export function oracle(merged: Map<string, Described>, lower: Map<string, Described>): Expected[] {
  const changes: Expected[] = []
  const parentOf = (p: string): string => (p.lastIndexOf('/') <= 0 ? '/' : p.slice(0, p.lastIndexOf('/')))
  for (const [p, now] of merged) {
    const was = lower.get(p)
    if (!was) {
      changes.push({ path: p, change: 'added', type: now.type })
      continue
    }
    const content = now.type !== was.type || now.content !== was.content
    const meta =
      now.permissions !== was.permissions || now.uid !== was.uid || now.gid !== was.gid || now.xattrs !== was.xattrs
    if (content || meta) changes.push({ path: p, change: content ? 'modified' : 'metadata', type: now.type })
  }
  for (const [p, was] of lower) {
    if (merged.has(p)) continue
    const parent = parentOf(p)
    const parentNow = merged.get(parent)
    // Only the topmost deletion; below a non-directory everything is implied.
    if (parentNow?.type === 'dir' && lower.get(parent)?.type === 'dir')
      changes.push({ path: p, change: 'deleted', type: was.type })
  }
  return changes.sort((a, b) => comparePathsForTest(a.path, b.path))
}

function comparePathsForTest(a: string, b: string): number {
  const pa = a.split('/')
  const pb = b.split('/')
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const order = Buffer.compare(Buffer.from(pa[i] ?? ''), Buffer.from(pb[i] ?? ''))
    if (order !== 0) return order
  }
  return pa.length - pb.length
}

export interface RunResult {
  status: number
  stdout: string
  stderr: string
}

/** ovroot runs as a user would run it: without the test runner's NODE_OPTIONS hooks. */
export function cleanEnvironment(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, HOME: '/root', LANG: 'C.UTF-8', NO_COLOR: '1', ...extra }
}

export function ovroot(
  args: string[],
  options: { uid?: number; env?: NodeJS.ProcessEnv; input?: string } = {},
): RunResult {
  // tap's process tracker re-injects its NODE_OPTIONS into every child; env -u drops it.
  const result = spawnSync('env', ['-u', 'NODE_OPTIONS', process.execPath, OVROOT, ...args], {
    encoding: 'utf8',
    uid: options.uid,
    env: options.env ?? cleanEnvironment(),
    input: options.input ?? '',
    maxBuffer: 1 << 28,
  })
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr }
}

export function diffJson(lowers: string[], upper: string, extra: string[] = []): Expected[] {
  const result = ovroot([
    'diff',
    '--json',
    ...lowers.flatMap((lower) => ['--lower', lower]),
    '--upper',
    upper,
    ...extra,
  ])
  if (result.status !== 0) throw new Error(`ovroot diff failed (${result.status}): ${result.stderr}`)
  return result.stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const record = JSON.parse(line) as Expected
      return { path: record.path, change: record.change, type: record.type }
    })
}

export interface HeldOpen {
  /** on-open.py's exit status, once the file was opened and its action done. */
  done: Promise<number | null>
  kill(): void
}

/**
 * test/helpers/on-open.py, once its fanotify mark is set: the first open(2) of `file` waits while
 * `action` (rewrite or remove, see there) changes the tree: a race between a command's stat of an
 * entry and its read, provoked every time. The command must then run without blocking this event loop
 * (ovroot() does: spawnSync).
 */
export async function holdFirstOpen(file: string, ...action: string[]): Promise<HeldOpen> {
  const script = fileURLToPath(new URL('on-open.py', import.meta.url))
  const child = spawn('python3', [script, file, ...action], { stdio: ['ignore', 'pipe', 'inherit'] })
  const done = new Promise<number | null>((resolve) => child.once('exit', resolve))
  await new Promise<void>((resolve, reject) => {
    child.stdout.once('data', () => resolve())
    void done.then((status) => reject(new Error(`on-open.py exited ${status} before its mark was set`)))
  })
  return { done, kill: () => child.kill() }
}
