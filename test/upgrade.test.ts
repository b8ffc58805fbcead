/**
 * Firmware upgrades on the host: the manifest (written from a tree and from
 * the squashfs built from it, read back, refused when damaged), the
 * classifier, and the reconcile of a real upper written over squashfs A,
 * applied before mounting it over squashfs B.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import { setXattr } from '../src/sys/libc.js'
import { MANIFEST_PATH, readManifest } from '../src/upgrade/manifest.js'
import { ovroot, scratch } from './helpers/overlay.js'

const latin1 = (text: string): Buffer => Buffer.from(text, 'latin1')

/** A tree with the names and entries a manifest must carry exactly. */
function hardTree(root: string): void {
  fs.mkdirSync(`${root}/etc/config`, { recursive: true })
  fs.mkdirSync(`${root}/usr/lib/ovroot`, { recursive: true })
  fs.writeFileSync(`${root}/etc/config/network`, 'config interface lan\n')
  fs.writeFileSync(latin1(`${root}/etc/caf\xe9`), 'latin-1 name\n')
  fs.writeFileSync(`${root}/etc/tab\there`, 'a tab in the name\n')
  fs.writeFileSync(`${root}/etc/back\\slash`, 'a backslash\n')
  fs.symlinkSync(latin1('/tmp/\xff\n'), `${root}/etc/odd-link`)
  fs.linkSync(`${root}/etc/config/network`, `${root}/etc/network-hardlink`)
  fs.writeFileSync(`${root}/etc/old`, 'before 1970\n')
  fs.utimesSync(`${root}/etc/old`, -86400, -86400)
  fs.writeFileSync(`${root}/etc/sparse`, '')
  fs.truncateSync(`${root}/etc/sparse`, 8 << 20)
  setXattr(`${root}/etc/config/network`, 'user.tag', Buffer.from('lan'))
  execFileSync('mknod', [`${root}/etc/null`, 'c', '1', '3'])
  execFileSync('mkfifo', [`${root}/etc/fifo`])
  fs.chmodSync(`${root}/etc/config`, 0o750)
}

await t.test('manifest: every entry, bytes names, the same from the tree and from its squashfs', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const tree = `${s.dir}/rootfs`
  hardTree(tree)
  const written = ovroot(['manifest', tree, '--output', `${tree}/${MANIFEST_PATH}`])
  t.equal(written.status, 0, written.stderr)
  const text = fs.readFileSync(`${tree}/${MANIFEST_PATH}`, 'utf8')
  const manifest = readManifest(text)
  t.match(text.split('\n')[0], /^ovroot-manifest 1 [0-9a-f]{64}$/)
  t.equal(manifest.lookup(MANIFEST_PATH), undefined, 'the manifest does not list itself')
  t.equal(manifest.lookup('etc/caf\xe9')?.type, 'f', 'a Latin-1 name is found by its bytes')
  t.ok(text.includes('etc/caf\\xe9\tf\t'), 'and written in the escaped form')
  t.ok(text.includes('etc/tab\\x09here\t'), 'a tab in a name is escaped, the line stays 8 fields')
  t.ok(text.includes('etc/back\\\\slash\t'), 'a backslash is doubled')
  t.equal(manifest.lookup('etc/odd-link')?.data, '/tmp/\xff\n', 'a link target is bytes')
  t.same(
    manifest.lookup('etc/network-hardlink'),
    manifest.lookup('etc/config/network'),
    'a hardlink has its inode record',
  )
  t.match(manifest.lookup('etc/config/network'), { type: 'f', mode: 0o644, size: 21, xattrs: /^x=[0-9a-f]{64}$/ })
  t.equal(manifest.lookup('etc/config')?.mode, 0o750)
  t.equal(manifest.lookup('etc/sparse')?.size, 8 << 20, 'a sparse file: its full size')
  t.equal(manifest.lookup('etc/null')?.data, '1:3', 'a device: its numbers')
  t.equal(manifest.lookup('etc/fifo')?.type, 'p')
  t.equal(manifest.lookup('.')?.type, 'd', 'the root is `.`')
  const sorted = text.split('\n').slice(1, -1)
  t.same(sorted, [...sorted].sort(), 'lines sorted by path bytes')
  for (const line of sorted) t.equal(line.split('\t').length, 8, 'eight fields')

  execFileSync('mksquashfs', [tree, `${s.dir}/a.sqfs`, '-quiet', '-no-progress', '-comp', 'gzip'])
  fs.mkdirSync(`${s.dir}/a`)
  execFileSync('mount', ['-t', 'squashfs', '-o', 'ro,loop', `${s.dir}/a.sqfs`, `${s.dir}/a`])
  const fromImage = ovroot(['manifest', `${s.dir}/a`])
  t.equal(fromImage.status, 0, fromImage.stderr)
  t.equal(fromImage.stdout, text, 'the mounted squashfs has the same manifest, byte for byte')
})

await t.test('manifest: a damaged or edited manifest is refused', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  hardTree(`${s.dir}/rootfs`)
  const text = ovroot(['manifest', `${s.dir}/rootfs`]).stdout
  t.throws(() => readManifest(text.replace('\t644\t', '\t600\t')), { code: 'EMANIFEST' }, 'an edited line')
  t.throws(() => readManifest(text.slice(0, -10)), { code: 'EMANIFEST' }, 'a truncated file')
  t.throws(() => readManifest(`x${text}`), { code: 'EMANIFEST' }, 'a wrong header')
  const body = `${text.split('\n').slice(1).join('\n')}bad line\n`
  const { createHash } = await import('node:crypto')
  const resealed = `ovroot-manifest 1 ${createHash('sha256').update(body).digest('hex')}\n${body}`
  t.throws(() => readManifest(resealed), { code: 'EMANIFEST' }, 'a malformed line under a right digest')
  const missing = ovroot(['manifest', `${s.dir}/nothing`])
  t.equal(missing.status, 4, 'a missing tree: environment')
})
