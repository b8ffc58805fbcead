/**
 * Changes made through a mounted merged view, as a user on the device would
 * make them: the kernel decides what lands in the upper.
 */
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { setXattr } from '../../src/sys/libc.js'

export function writeTree(
  root: string,
  files: Record<string, string | { link: string } | { dir: true } | { fifo: true }>,
): void {
  for (const [rel, content] of Object.entries(files)) {
    const full = path.join(root, rel)
    fs.mkdirSync(path.dirname(full), { recursive: true })
    if (typeof content === 'string') fs.writeFileSync(full, content)
    else if ('link' in content) fs.symlinkSync(content.link, full)
    else if ('dir' in content) fs.mkdirSync(full, { recursive: true })
    else execFileSync('mkfifo', [full])
  }
}

/** `mv`, which falls back to copy and delete where overlayfs answers EXDEV (no redirect_dir). */
export function move(from: string, to: string): void {
  execFileSync('mv', ['-T', from, to])
}

export type Operation = (merged: string) => void

/** Every kind of change the contract names, applied to the standard lower. */
export const STANDARD_LOWER = {
  '/etc/config/network': 'config interface lan\n\toption proto static\n',
  '/etc/config/wireless': 'config wifi-device radio0\n',
  '/etc/config/system': 'config system\n\toption hostname OpenWrt\n',
  '/etc/passwd': 'root:x:0:0:root:/root:/bin/ash\n',
  '/etc/group': 'root:x:0:\n',
  '/etc/hosts': '127.0.0.1 localhost\n',
  '/etc/hosts.allow': 'ALL: LOCAL\n',
  '/etc/profile': 'export PATH=/usr/bin:/bin\n',
  '/etc/shells': '/bin/ash\n',
  '/etc/protocols': 'ip 0 IP\n',
  '/etc/banner': 'Welcome\n',
  '/etc/motd': 'hello\n',
  '/etc/init.d/network': '#!/bin/sh\necho network\n',
  '/etc/init.d/dropbear': '#!/bin/sh\necho dropbear\n',
  '/usr/lib/libc.so': 'ELF\0\0\0libc',
  '/usr/lib/libm.so': 'ELF\0\0\0libm',
  '/usr/bin/tool': '#!/bin/sh\n',
  '/usr/share/doc/readme': 'docs\n',
  '/usr/share/doc/deep/nested/file': 'deep\n',
  '/usr/share/dir/a': 'a\n',
  '/usr/share/dir/sub/b': 'b\n',
  '/www/index.html': '<html></html>\n',
  '/bin/sh': { link: 'busybox' },
  '/bin/busybox': 'busybox binary\n',
  '/run/fifo': { fifo: true },
  '/empty': { dir: true },
} as const

/** vfs_cap_data revision 2, effective: cap_net_raw (13) permitted. */
const FILE_CAPABILITY_NET_RAW = Buffer.from(new Uint32Array([0x02000001, 1 << 13, 0, 0, 0]).buffer)
/** posix_acl_xattr version 2 for mode 0644 plus user 1000 r--: the mask (r--) keeps the group bits, so the mode does not change. */
const ACL_USER_1000_READ = (() => {
  const entries: [tag: number, perm: number, id: number][] = [
    [0x01, 6, -1],
    [0x02, 4, 1000],
    [0x04, 4, -1],
    [0x10, 4, -1],
    [0x20, 4, -1],
  ]
  const acl = Buffer.alloc(4 + entries.length * 8)
  acl.writeUInt32LE(2, 0)
  entries.forEach(([tag, perm, id], i) => {
    acl.writeUInt16LE(tag, 4 + i * 8)
    acl.writeUInt16LE(perm, 6 + i * 8)
    acl.writeInt32LE(id, 8 + i * 8)
  })
  return acl
})()

export const STANDARD_OPERATIONS: Record<string, Operation> = {
  'new file': (m) => fs.writeFileSync(`${m}/etc/newfile`, 'new\n'),
  appended: (m) => fs.appendFileSync(`${m}/etc/config/network`, '\toption ipaddr 192.168.1.1\n'),
  truncated: (m) => fs.truncateSync(`${m}/etc/config/wireless`, 0),
  'rewritten identical': (m) => fs.writeFileSync(`${m}/etc/config/system`, fs.readFileSync(`${m}/etc/config/system`)),
  chmod: (m) => fs.chmodSync(`${m}/etc/passwd`, 0o600),
  chown: (m) => fs.lchownSync(`${m}/etc/hosts`, 1000, 1000),
  xattr: (m) => setXattr(`${m}/usr/lib/libc.so`, 'user.note', Buffer.from('patched')),
  symlink: (m) => fs.symlinkSync('/tmp', `${m}/etc/link`),
  hardlink: (m) => fs.linkSync(`${m}/etc/profile`, `${m}/etc/profile.hard`),
  fifo: (m) => execFileSync('mkfifo', [`${m}/etc/fifo`]),
  'file deleted': (m) => fs.rmSync(`${m}/usr/lib/libm.so`),
  'directory deleted': (m) => fs.rmSync(`${m}/usr/share/doc`, { recursive: true }),
  'directory deleted and recreated': (m) => {
    fs.rmSync(`${m}/etc/init.d`, { recursive: true })
    fs.mkdirSync(`${m}/etc/init.d`)
    fs.writeFileSync(`${m}/etc/init.d/network`, '#!/bin/sh\necho network\n')
    fs.chmodSync(`${m}/etc/init.d/network`, 0o644)
  },
  'file renamed': (m) => move(`${m}/etc/banner`, `${m}/etc/banner.old`),
  'directory renamed': (m) => move(`${m}/usr/share/dir`, `${m}/usr/share/renamed`),
  'file replaced by directory': (m) => {
    fs.rmSync(`${m}/etc/motd`)
    fs.mkdirSync(`${m}/etc/motd`)
    fs.writeFileSync(`${m}/etc/motd/today`, 'hi\n')
  },
  'directory replaced by file': (m) => {
    fs.rmSync(`${m}/www`, { recursive: true })
    fs.writeFileSync(`${m}/www`, 'not a dir\n')
  },
  touched: (m) => {
    const now = new Date()
    fs.utimesSync(`${m}/etc/shells`, now, now)
  },
  'chmod and back': (m) => {
    fs.chmodSync(`${m}/etc/group`, 0o600)
    fs.chmodSync(`${m}/etc/group`, 0o644)
  },
  'opened for writing, unchanged': (m) => fs.closeSync(fs.openSync(`${m}/etc/protocols`, 'r+')),
  'directory chmod': (m) => fs.chmodSync(`${m}/usr/bin`, 0o700),
  'symlink retargeted': (m) => {
    fs.rmSync(`${m}/bin/sh`)
    fs.symlinkSync('bash', `${m}/bin/sh`)
  },
  'fifo deleted': (m) => fs.rmSync(`${m}/run/fifo`),
  'file capability added': (m) => setXattr(`${m}/usr/bin/tool`, 'security.capability', FILE_CAPABILITY_NET_RAW),
  'POSIX ACL added, mode unchanged': (m) =>
    setXattr(`${m}/etc/hosts.allow`, 'system.posix_acl_access', ACL_USER_1000_READ),
  'file moved into new directory': (m) => {
    fs.mkdirSync(`${m}/opt/new/dir`, { recursive: true })
    move(`${m}/bin/busybox`, `${m}/opt/new/dir/busybox`)
  },
}

/** mulberry32: small, seedable, good enough to pick operations. */
export function random(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function randomLower(root: string, next: () => number): void {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T
  const dirs = ['']
  for (let i = 0; i < 12; i++) {
    const dir = `${pick(dirs)}/d${i}`
    fs.mkdirSync(root + dir, { recursive: true })
    dirs.push(dir)
  }
  for (let i = 0; i < 40; i++) {
    const file = `${pick(dirs)}/f${i}`
    fs.writeFileSync(root + file, 'x'.repeat(Math.floor(next() * 64)) + `${i}\n`)
    if (next() < 0.1) fs.chmodSync(root + file, 0o755)
  }
  for (let i = 0; i < 4; i++) fs.symlinkSync(`f${i}`, `${root}${pick(dirs)}/l${i}`)
}

function entries(merged: string): { files: string[]; dirs: string[] } {
  const files: string[] = []
  const dirs: string[] = []
  const visit = (rel: string): void => {
    for (const name of fs.readdirSync(merged + rel).sort()) {
      const child = `${rel}/${name}`
      const st = fs.lstatSync(merged + child)
      if (st.isDirectory()) {
        dirs.push(child)
        visit(child)
      } else files.push(child)
    }
  }
  visit('')
  return { files, dirs }
}

/** One random change through the merged view; returns what it did, for failure messages. */
export function randomOperation(merged: string, next: () => number, serial: number): string {
  const pick = <T>(items: readonly T[]): T | undefined =>
    items.length ? items[Math.floor(next() * items.length)] : undefined
  const { files, dirs } = entries(merged)
  const file = pick(files)
  const dir = pick(dirs) ?? ''
  const regular = files.filter((f) => fs.lstatSync(merged + f).isFile())
  const target = pick(regular)
  const choices: [string, () => void][] = [
    [`create ${dir}/n${serial}`, () => fs.writeFileSync(`${merged}${dir}/n${serial}`, `new ${serial}\n`)],
    [`mkdir ${dir}/nd${serial}`, () => fs.mkdirSync(`${merged}${dir}/nd${serial}`)],
  ]
  if (target) {
    choices.push(
      [`append ${target}`, () => fs.appendFileSync(merged + target, 'more\n')],
      [`truncate ${target}`, () => fs.truncateSync(merged + target, 1)],
      [`rewrite ${target}`, () => fs.writeFileSync(merged + target, fs.readFileSync(merged + target))],
      [`chmod ${target}`, () => fs.chmodSync(merged + target, next() < 0.5 ? 0o600 : 0o644)],
      [`chown ${target}`, () => fs.lchownSync(merged + target, next() < 0.5 ? 0 : 1000, 0)],
      [`xattr ${target}`, () => setXattr(merged + target, 'user.k', Buffer.from(next() < 0.5 ? 'a' : 'b'))],
      [`hardlink ${target}`, () => fs.linkSync(merged + target, `${merged}${dir}/h${serial}`)],
    )
  }
  if (file) {
    choices.push(
      [`delete ${file}`, () => fs.rmSync(merged + file)],
      [`rename ${file}`, () => move(merged + file, `${merged}${dir}/r${serial}`)],
      [
        `replace ${file} by dir`,
        () => {
          fs.rmSync(merged + file)
          fs.mkdirSync(merged + file)
        },
      ],
    )
  }
  if (dir && !`${dir}/`.startsWith('/nd')) {
    const parent = dir.slice(0, dir.lastIndexOf('/'))
    choices.push(
      [`rmdir -r ${dir}`, () => fs.rmSync(merged + dir, { recursive: true })],
      [
        `recreate ${dir}`,
        () => {
          fs.rmSync(merged + dir, { recursive: true })
          fs.mkdirSync(merged + dir)
        },
      ],
      [`chmod dir ${dir}`, () => fs.chmodSync(merged + dir, 0o750)],
    )
    const destination = `${parent}/rd${serial}`
    if (!destination.startsWith(`${dir}/`))
      choices.push([`rename dir ${dir}`, () => move(merged + dir, merged + destination)])
  }
  const [label, apply] = pick(choices) ?? ['nothing', () => undefined]
  apply()
  return label
}
