/**
 * Firmware upgrades on the host: the manifest (written from a tree and from
 * the squashfs built from it, read back, refused when damaged), the
 * classifier, and the reconcile of a real upper written over squashfs A,
 * applied before mounting it over squashfs B.
 */
import t from 'tap'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { getXattr, listXattrs, removeXattr, setXattr } from '../src/sys/libc.js'
import { MANIFEST_PATH, openManifest } from '../src/upgrade/manifest.js'
import type { UpgradePlan } from '../src/upgrade/reconcile.js'
import { cleanEnvironment, mountOverlay, OVROOT, ovroot, scratch, unmount, upperSnapshot } from './helpers/overlay.js'
import { bootContext, emptyFlash } from './helpers/upgrade.js'

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
  const manifest = openManifest(`${tree}/${MANIFEST_PATH}`)
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
  // Opened, and a path looked up: a line is checked when a lookup reads it.
  const opened =
    (content: string, path = '.') =>
    (): void => {
      fs.writeFileSync(`${s.dir}/m`, content)
      openManifest(`${s.dir}/m`).lookup(path)
    }
  t.throws(opened(text.replace('\t644\t', '\t600\t')), { code: 'EMANIFEST' }, 'an edited line')
  t.throws(opened(text.slice(0, -10)), { code: 'EMANIFEST' }, 'a truncated file')
  t.throws(opened(`x${text}`), { code: 'EMANIFEST' }, 'a wrong header')
  const { createHash } = await import('node:crypto')
  const sealed = (lines: string[]): string => {
    const body = lines.map((line) => `${line}\n`).join('')
    return `ovroot-manifest 1 ${createHash('sha256').update(body).digest('hex')}\n${body}`
  }
  const lines = text.split('\n').slice(1, -1)
  t.doesNotThrow(opened(sealed(lines)), 'resealed as it was: accepted')
  t.throws(
    opened(sealed([...lines, 'zz bad line']), 'zz bad line'),
    { code: 'EMANIFEST' },
    'a malformed line under a right digest',
  )
  t.throws(
    opened(sealed([lines[1] as string, lines[0] as string, ...lines.slice(2)]), lines[1]?.split('\t')[0]),
    { code: 'EMANIFEST' },
    'lines out of path order under a right digest (a lookup finds a path by its order)',
  )
  const missing = ovroot(['manifest', `${s.dir}/nothing`])
  t.equal(missing.status, 4, 'a missing tree: environment')
})

await t.test('manifest: a lookup across many blocks finds every record, and nothing else', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const tree = `${s.dir}/rootfs`
  // About 100 KiB of manifest: a dozen blocks, names escaped and not on both sides of their edges.
  for (let d = 0; d < 20; d++) {
    fs.mkdirSync(latin1(`${tree}/d${d}\xe9`), { recursive: true })
    fs.mkdirSync(`${tree}/d${d}.x`)
    for (let f = 0; f < 40; f++)
      fs.writeFileSync(latin1(`${tree}/d${d}\xe9/f${f}${f % 7 ? '' : '\xff'}`), `${d} ${f}\n`)
  }
  const text = ovroot(['manifest', tree]).stdout
  fs.writeFileSync(`${s.dir}/m`, text)
  const manifest = openManifest(`${s.dir}/m`)
  t.ok(text.length > 60_000, 'more than seven blocks')
  const shown = text.split('\n').slice(1, -1)
  let found = 0
  for (const line of shown) {
    const [field, , mode] = line.split('\t')
    const bytes = (field ?? '')
      .split(/(\\x[0-9a-f]{2})/)
      .map((part) =>
        part.startsWith('\\x')
          ? String.fromCharCode(parseInt(part.slice(2), 16))
          : Buffer.from(part, 'utf8').toString('latin1'),
      )
      .join('')
    if (manifest.lookup(bytes)?.mode === parseInt(mode ?? '', 8)) found++
  }
  t.equal(found, shown.length, 'every line found by its path bytes')
  t.equal(manifest.lookup('d3\xe9/f41'), undefined, 'a path between two records: absent')
  t.equal(manifest.lookup('zzz'), undefined, 'a path after the last: absent')
  t.equal(manifest.lookup('-'), undefined, 'a path before the first: absent')
  const below = [...manifest.below('d7\xe9')].map(([path]) => path)
  t.equal(below.length, 40, 'below a directory: its 40 files')
  t.ok(
    below.every((path) => path.startsWith('d7\xe9/')),
    'and nothing beside it (d7.x sorts next to it)',
  )
  t.equal([...manifest.below('.')].length, shown.length - 1, 'below the root: every record but its own')
})

/** What firmware A ships, and what B changes of it (`null`: removed). */
const FIRMWARE_A: Record<string, string> = {
  'usr/lib/libfoo.so': 'libfoo 1\n',
  'usr/lib/libbar.so': 'libbar 1\n',
  'usr/bin/tool': '#!/bin/sh\necho tool 1\n',
  'etc/config/dhcp': 'config dnsmasq\n',
  'etc/config/firewall': 'config defaults\n',
  'etc/config/network': 'config interface lan\n',
  'etc/config/system': 'config system\n',
  'etc/banner': 'welcome 1\n',
  'etc/hotplug.d/iface/00-netstate': 'netstate\n',
  'etc/motd': 'motd 1\n',
  'etc/profile': 'profile 1\n',
  'etc/caf\xe9': 'latin-1 1\n',
  'etc/r\xe9seau': 'latin-1 network 1\n',
  'etc/tagged': 'tagged 1\n',
  'www/app/index.html': 'app 1\n',
  'www/app/style.css': 'css 1\n',
  'etc/old': 'old 1\n',
}
const CHANGES_IN_B: Record<string, string | null> = {
  'usr/lib/libfoo.so': 'libfoo 2, longer\n',
  'usr/lib/libbar.so': null,
  'usr/bin/tool': '#!/bin/sh\necho tool 2\n',
  'etc/config/dhcp': 'config dnsmasq\n\toption new 1\n',
  'etc/config/firewall': 'config defaults 2\n',
  'etc/config/network': 'config interface lan 2\n',
  'etc/banner': 'welcome 2\n',
  'etc/hotplug.d/iface/10-new': 'new in B\n',
  'etc/motd': 'motd 2\n',
  'etc/profile': 'profile 2\n',
  'etc/caf\xe9': 'latin-1 2\n',
  'etc/r\xe9seau': 'latin-1 network 2\n',
  'etc/tagged': 'tagged 2\n',
  'www/app/index.html': 'app 2\n',
  'etc/old': 'old 2\n',
}

/** ovroot's own overlay options (boot/agent.ts): every feature that binds an upper to a lower off. */
const OVROOT_OPTIONS = ['index=off', 'metacopy=off', 'redirect_dir=off', 'xino=off', 'nfs_export=off']

/** Firmware as a mounted squashfs; `manifest: false` builds it as an image build that ships none, `damaged` with one line edited. */
function buildFirmware(
  dir: string,
  files: Record<string, string>,
  name: string,
  manifest: boolean | 'damaged' = true,
  links: Record<string, string> = {},
): string {
  const tree = `${dir}/${name}-tree`
  for (const [path, content] of Object.entries(files)) {
    const full = latin1(`${tree}/${path}`)
    fs.mkdirSync(latin1(`${tree}/${path.slice(0, path.lastIndexOf('/'))}`), { recursive: true })
    fs.writeFileSync(full, content)
  }
  for (const [path, target] of Object.entries(links)) fs.symlinkSync(target, `${tree}/${path}`)
  fs.chmodSync(`${tree}/usr/bin/tool`, 0o755)
  fs.mkdirSync(`${tree}/usr/lib/ovroot`, { recursive: true })
  const made = manifest ? ovroot(['manifest', tree, '--output', `${tree}/${MANIFEST_PATH}`]) : undefined
  if (made && made.status !== 0) throw new Error(made.stderr)
  const shipped = `${tree}/${MANIFEST_PATH}`
  if (manifest === 'damaged')
    fs.writeFileSync(shipped, fs.readFileSync(shipped, 'latin1').replace('\t644\t', '\t600\t'))
  execFileSync('mksquashfs', [tree, `${dir}/${name}.sqfs`, '-quiet', '-no-progress', '-comp', 'gzip'])
  fs.mkdirSync(`${dir}/${name}`)
  execFileSync('mount', ['-t', 'squashfs', '-o', 'ro,loop', `${dir}/${name}.sqfs`, `${dir}/${name}`])
  return `${dir}/${name}`
}

function firmwareB(): Record<string, string> {
  const files: Record<string, string> = { ...FIRMWARE_A }
  for (const [path, content] of Object.entries(CHANGES_IN_B)) {
    if (content === null) delete files[path]
    else files[path] = content
  }
  return files
}

/** Every row of the table, made through the overlay mounted over A. */
function userChanges(merged: string): void {
  const at = (path: string): Buffer => latin1(`${merged}/${path}`)
  fs.closeSync(fs.openSync(at('etc/config/dhcp'), 'r+')) // opened for writing, no change
  fs.utimesSync(at('etc/config/firewall'), new Date(), new Date()) // touched
  fs.chmodSync(at('usr/bin/tool'), 0o700)
  fs.chmodSync(at('usr/lib/libbar.so'), 0o600)
  fs.appendFileSync(at('etc/config/network'), '\toption user 1\n') // edited: conflict with B
  fs.appendFileSync(at('etc/config/system'), '\toption hostname mine\n') // edited, B did not change it: kept
  execFileSync('mv', ['-T', `${merged}/www/app`, `${merged}/www/site`]) // renamed directory
  fs.rmSync(at('etc/banner'))
  fs.rmSync(at('etc/hotplug.d'), { recursive: true })
  fs.writeFileSync(at('etc/motd'), 'motd 2\n') // converged: what B ships
  fs.utimesSync(at('etc/caf\xe9'), new Date(), new Date()) // a Latin-1 name, touched: stale
  fs.appendFileSync(at('etc/r\xe9seau'), 'mine\n') // a Latin-1 name, edited: conflict
  setXattr(`${merged}/etc/tagged`, 'user.mine', Buffer.from('kept')) // metadata: kept on top of B's data
  fs.linkSync(`${merged}/etc/profile`, `${merged}/etc/profile.mine`) // a hardlink: the copy-up and the user's own name
  fs.utimesSync(at('etc/old'), -3e8, -3e8) // a pre-1970 time, no content change: stale
  fs.writeFileSync(at('etc/own'), 'own file\n')
  fs.writeFileSync(at('etc/sparse'), '')
  fs.truncateSync(at('etc/sparse'), 4 << 20)
}

const read = (path: string): string | undefined => {
  try {
    return fs.readFileSync(latin1(path), 'latin1')
  } catch {
    return undefined
  }
}

/** The entries below `root` (latin1 names) that still carry an identity xattr of the overlay, each with its names. */
function boundEntries(root: string, path = ''): string[] {
  const bound: string[] = []
  for (const name of fs.readdirSync(latin1(`${root}${path}`), { encoding: 'latin1' })) {
    const child = `${path}/${name}`
    const names = listXattrs(latin1(`${root}${child}`)).filter((xattr) =>
      ['origin', 'impure', 'nlink', 'uuid'].some((key) => xattr === `trusted.overlay.${key}`),
    )
    if (names.length) bound.push(`${child}: ${names.join(' ')}`)
    if (fs.lstatSync(latin1(`${root}${child}`)).isDirectory()) bound.push(...boundEntries(root, child))
  }
  return bound
}

await t.test('upgrade: every row of the issue, reconciled on a real upper from squashfs A to B', async (t) => {
  const { onFirmware } = await import('../src/upgrade/boot.js')
  const { currentIdentity } = await import('../src/upgrade/identity.js')
  const { readFirmwareRecord } = await import('../src/upgrade/record.js')
  const { OverlayXattrs } = await import('../src/overlay/xattrs.js')
  const s = scratch()
  t.teardown(() => s.cleanup())
  const a = buildFirmware(s.dir, FIRMWARE_A, 'a')
  const b = buildFirmware(s.dir, firmwareB(), 'b')
  const { layout, upper, work } = emptyFlash(s.dir)
  const xattrs = new OverlayXattrs('trusted')
  const context = (lower: string) => bootContext(layout, lower, { xattrs })
  t.equal(await onFirmware(await context(a)), undefined, 'first boot on A: recorded, nothing reconciled')
  t.match(readFirmwareRecord(layout), { base: 'shipped', identity: /^manifest:/ })

  mountOverlay(`${s.dir}/merged`, [a], upper, work, ['index=on', 'redirect_dir=off', 'metacopy=off'])
  userChanges(`${s.dir}/merged`)
  unmount(`${s.dir}/merged`)
  t.ok(listXattrs(upper).includes('trusted.overlay.origin'), 'index=on left the upper root bound to A')
  t.ok(boundEntries(upper).length > 10, 'and its copy-ups')

  // As an older ovroot recorded a firmware without release files: by the digest of no files.
  const record = `${layout.root}/.ovroot/firmware`
  const older = { ...(JSON.parse(fs.readFileSync(record, 'utf8')) as object), description: 'firmware e3b0c44298fc' }
  fs.writeFileSync(record, JSON.stringify(older))
  const summary = await onFirmware(await context(b))
  t.ok(summary, 'boot on B reconciled')
  t.same(summary?.conflicts.sort(), ['/etc/config/network', '/etc/r\\xe9seau'], 'the conflicts, named')
  t.same(summary?.hidden.sort(), ['/etc/banner', '/etc/hotplug.d', '/www/app'], 'what a deletion hides, named')
  t.same(summary?.counts, { own: 6, kept: 1, converged: 1, stale: 7, gone: 1, conflict: 2, hidden: 3, unknown: 0 })
  t.equal((await context(b)).recorded?.identity, (await currentIdentity(b)).identity, 'B is recorded')
  // Neither image has release files: each is named by its identity, not by the digest of no files.
  const [fromId, toId] = [await currentIdentity(a), await currentIdentity(b)].map((id) => id.identity.slice(9, 21))
  t.same(
    [summary?.from, summary?.to],
    [`firmware manifest ${fromId}`, `firmware manifest ${toId}`],
    'A and B, told apart',
  )
  t.notOk(listXattrs(upper).includes('trusted.overlay.origin'), 'the upper root is no longer bound to A')
  t.same(boundEntries(upper), [], 'no entry that stayed is bound to A (origin, impure, nlink)')

  const merged = `${s.dir}/merged`
  fs.mkdirSync(work)
  mountOverlay(merged, [b], upper, work, OVROOT_OPTIONS)
  const B = firmwareB()
  const expect = (path: string, content: string | undefined, what: string): void => {
    t.equal(read(`${merged}/${path}`), content, what)
  }
  expect('usr/lib/libfoo.so', B['usr/lib/libfoo.so'], 'untouched, updated: the new one')
  expect('etc/config/dhcp', B['etc/config/dhcp'], 'opened for writing: the stale copy is gone')
  expect('etc/config/firewall', B['etc/config/firewall'], 'touched: the stale copy is gone')
  expect('usr/bin/tool', B['usr/bin/tool'], "chmod'ed, content changed: the new data")
  t.equal(fs.statSync(`${merged}/usr/bin/tool`).mode & 0o7777, 0o700, '... with the user’s mode')
  expect('usr/lib/libbar.so', undefined, "chmod'ed, removed by B: gone")
  expect('etc/config/network', `${FIRMWARE_A['etc/config/network']}\toption user 1\n`, 'a conflict keeps the user’s')
  expect('etc/config/system', `${FIRMWARE_A['etc/config/system']}\toption hostname mine\n`, 'kept')
  expect('www/site/index.html', 'app 1\n', 'the renamed directory: the user’s copy')
  expect('www/app/index.html', undefined, 'its old name stays deleted (hidden, reported)')
  expect('etc/banner', undefined, 'a deletion stays (hidden, reported)')
  expect('etc/hotplug.d/iface/10-new', undefined, 'a deleted directory stays deleted (hidden, reported)')
  expect('etc/motd', 'motd 2\n', 'converged')
  expect('etc/caf\xe9', B['etc/caf\xe9'], 'a Latin-1 name, touched: the new one')
  expect('etc/r\xe9seau', 'latin-1 network 1\nmine\n', 'a Latin-1 name, edited: the user’s')
  expect('etc/tagged', B['etc/tagged'], 'an xattr added: B’s data')
  t.equal(getXattr(`${merged}/etc/tagged`, 'user.mine')?.toString(), 'kept', '... with the user’s xattr')
  expect('etc/profile', B['etc/profile'], 'a hardlinked copy-up: the new one')
  expect('etc/profile.mine', 'profile 1\n', 'the user’s own hardlink name keeps its data')
  expect('etc/old', B['etc/old'], 'a pre-1970 touch: the new one')
  expect('etc/own', 'own file\n', 'the user’s own file')
  t.equal(fs.statSync(`${merged}/etc/sparse`).size, 4 << 20, 'a sparse own file')
  unmount(merged)
  for (const dropped of ['etc/config/dhcp', 'etc/config/firewall', 'usr/lib/libbar.so', 'etc/motd', 'etc/caf\xe9'])
    t.notOk(fs.existsSync(latin1(`${upper}/${dropped}`)), `${dropped}: no copy left in the upper`)

  mountOverlay(merged, [b], upper, work, ['index=on', 'redirect_dir=off', 'metacopy=off'])
  t.pass('index=on mounts over B after the upgrade')
  unmount(merged)

  const diff = ovroot(['diff', '--json', '--lower', b, '--upper', upper])
  const listed = diff.stdout
    .trim()
    .split('\n')
    .map((line) => (JSON.parse(line) as { path: string }).path)
    .sort()
  t.same(
    listed,
    [
      '/etc/banner',
      '/etc/config/network',
      '/etc/config/system',
      '/etc/hotplug.d',
      '/etc/own',
      '/etc/profile.mine',
      '/etc/r\\xe9seau',
      '/etc/sparse',
      '/etc/tagged',
      '/usr/bin/tool',
      '/www/app',
      '/www/site',
      '/www/site/index.html',
      '/www/site/style.css',
    ],
    'ovroot diff after the upgrade: only what the user changed',
  )
})

/** Firmware A recorded, the rows made over it, the reconcile with B committed: the flash as the boot on B finds it once staged. */
async function committedUpgrade(dir: string): Promise<{ flash: string; b: string }> {
  const { onFirmware, commitUpgrade } = await import('../src/upgrade/boot.js')
  const a = buildFirmware(dir, FIRMWARE_A, 'a')
  const b = buildFirmware(dir, firmwareB(), 'b')
  const layout = { root: `${dir}/flash`, upperName: 'upper' }
  fs.mkdirSync(`${layout.root}/upper`, { recursive: true })
  fs.mkdirSync(`${layout.root}/work`)
  const context = (lower: string) => bootContext(layout, lower)
  await onFirmware(await context(a))
  mountOverlay(`${dir}/merged`, [a], `${layout.root}/upper`, `${layout.root}/work`, OVROOT_OPTIONS)
  userChanges(`${dir}/merged`)
  unmount(`${dir}/merged`)
  const onB = await context(b)
  if (!onB.recorded) throw new Error('A was not recorded')
  commitUpgrade(onB, onB.recorded)
  return { flash: layout.root, b }
}

/** What a boot applies, as a test reads it: the upper exactly, and the firmware files. */
function flashState(flash: string): Map<string, string> {
  const state = upperSnapshot(`${flash}/upper`)
  for (const file of ['firmware', 'base.manifest', 'upgrade/report.json'])
    state.set(`.ovroot/${file}`, read(`${flash}/.ovroot/${file}`)?.replace(/"since":"[^"]+"/, '') ?? 'absent')
  return state
}

await t.test(
  'upgrade: a power cut at every step of the apply, then the boot again: old or reconciled, never mixed',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const { flash } = await committedUpgrade(s.dir)
    const copy = (name: string): string => {
      execFileSync('cp', ['-a', flash, `${s.dir}/${name}`])
      return `${s.dir}/${name}`
    }
    const { applyPending } = await import('../src/pending/apply.js')
    const { OverlayXattrs } = await import('../src/overlay/xattrs.js')
    const xattrs = new OverlayXattrs('trusted')
    const layout = (root: string) => ({ root, upperName: 'upper' })
    const before = flashState(flash)

    const whole = copy('whole')
    await applyPending(layout(whole), `${whole}/work`, xattrs)
    const reconciled = flashState(whole)
    t.not(reconciled.get('.ovroot/firmware'), before.get('.ovroot/firmware'), 'the uninterrupted apply records B')

    const uncommitted = copy('uncommitted')
    fs.rmSync(`${uncommitted}/.ovroot/pending`)
    await applyPending(layout(uncommitted), `${uncommitted}/work`, xattrs)
    t.same(flashState(uncommitted), before, 'a cut before the commit: the old state, whole, its staging dropped')
    t.same(
      fs.readdirSync(`${uncommitted}/.ovroot`).filter((name) => name.startsWith('staged')),
      [],
      'no staging left',
    )

    // Every step that changes the flash counts; the cut comes after `limit` of them.
    let steps = 0
    let limit = 0
    const cut = new Error('power cut')
    const counted =
      <A extends unknown[], R>(operation: (...args: A) => R) =>
      (...args: A): R => {
        if (steps++ >= limit) throw cut
        return operation(...args)
      }
    const realFs = await import('../src/sys/fs.js')
    const realLibc = await import('../src/sys/libc.js')
    const realEntries = await import('../src/sys/entries.js')
    const mocks = {
      '../src/sys/fs.js': {
        ...realFs,
        renamePath: counted(realFs.renamePath),
        removeTree: counted(realFs.removeTree),
        removeFile: counted(realFs.removeFile),
        writeFileAtomic: counted(realFs.writeFileAtomic),
        makeDirectory: counted(realFs.makeDirectory),
      },
      '../src/sys/libc.js': {
        ...realLibc,
        removeXattr: counted(realLibc.removeXattr),
        setXattr: counted(realLibc.setXattr),
        setTimes: counted(realLibc.setTimes),
        syncAll: counted(realLibc.syncAll),
      },
      '../src/sys/entries.js': {
        ...realEntries,
        setModificationTime: counted(realEntries.setModificationTime),
        replaceMetadata: counted(realEntries.replaceMetadata),
      },
    }
    // A mock reaches the modules a mocked module imports itself: each module on the way is mocked and handed on.
    const mocked = async <M>(module: string, more: Record<string, unknown> = {}): Promise<M> =>
      t.mockImport<M>(module, { ...mocks, ...more })
    const flat = { '../src/pending/flat.js': await mocked('../src/pending/flat.js') }
    const marker = { '../src/pending/marker.js': await mocked('../src/pending/marker.js') }
    const upgrade = await mocked('../src/upgrade/apply.js', {
      ...flat,
      ...marker,
      '../src/overlay/identity.js': await mocked('../src/overlay/identity.js'),
      '../src/upgrade/record.js': await mocked('../src/upgrade/record.js'),
    })
    const cutApply = await mocked<typeof import('../src/pending/apply.js')>('../src/pending/apply.js', {
      ...flat,
      ...marker,
      '../src/upgrade/apply.js': upgrade,
    })
    let cuts = 0
    for (limit = 0; ; limit++) {
      const root = copy(`cut-${limit}`)
      steps = 0
      try {
        await cutApply.applyPending(layout(root), `${root}/work`, xattrs)
        break
      } catch (error) {
        if (error !== cut) throw error
      }
      cuts++
      // Once B is recorded the upper is reconciled whole; before, the marker makes the boot rerun the reconcile.
      const recordsB = read(`${root}/.ovroot/firmware`) !== read(`${flash}/.ovroot/firmware`)
      t.ok(recordsB || fs.existsSync(`${root}/.ovroot/pending`), `cut after step ${limit}: A and the marker, or B`)
      if (recordsB)
        t.same(
          upperSnapshot(`${root}/upper`),
          upperSnapshot(`${whole}/upper`),
          `cut after step ${limit}: B recorded, the upper reconciled`,
        )
      await applyPending(layout(root), `${root}/work`, xattrs)
      t.same(flashState(root), reconciled, `cut after step ${limit}, then the boot: reconciled, exactly`)
      fs.rmSync(root, { recursive: true })
    }
    t.ok(cuts > 10, `the sweep cut the apply at each of its ${cuts} steps`)
  },
)

await t.test(
  'upgrade-check on A predicts exactly what the boot on B does; diff --conflicts shows the three sides',
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { currentIdentity } = await import('../src/upgrade/identity.js')
    const { readFirmwareRecord } = await import('../src/upgrade/record.js')
    const { OverlayXattrs } = await import('../src/overlay/xattrs.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = buildFirmware(s.dir, FIRMWARE_A, 'a')
    const b = buildFirmware(s.dir, firmwareB(), 'b')
    const layout = { root: `${s.dir}/flash`, upperName: 'upper' }
    const upper = `${layout.root}/upper`
    fs.mkdirSync(upper, { recursive: true })
    fs.mkdirSync(`${layout.root}/work`)
    mountOverlay(`${s.dir}/merged`, [a], upper, `${layout.root}/work`, OVROOT_OPTIONS)
    userChanges(`${s.dir}/merged`)
    unmount(`${s.dir}/merged`)

    // No record yet: upgrade-check records the running firmware (A) itself.
    const check = ovroot(['upgrade-check', `${s.dir}/b.sqfs`, '--lower', a, '--upper', upper, '--json'])
    t.equal(check.status, 8, `exit 8: conflicts and hidden entries (${check.stderr})`)
    const predicted = JSON.parse(check.stdout) as {
      counts: Record<string, number>
      classes: Record<string, string[]>
      entries: { path: string; savedBase?: string }[]
    }
    t.same(predicted.classes.conflict, ['/etc/config/network', '/etc/r\\xe9seau'])
    t.same(predicted.classes.stale, [
      '/etc/caf\\xe9',
      '/etc/config/dhcp',
      '/etc/config/firewall',
      '/etc/old',
      '/etc/profile',
      '/etc/tagged',
      '/usr/bin/tool',
    ])
    t.ok(
      predicted.entries.filter((entry) => entry.savedBase).length === 2,
      'the old firmware’s bytes of both conflicts are saved',
    )
    const text = ovroot(['upgrade-check', `${s.dir}/b.sqfs`, '--lower', a, '--upper', upper])
    t.match(text.stdout, /^conflict {2}\/etc\/config\/network {2}\(base saved\)$/m, 'text: class by class')
    t.match(text.stdout, /^counts: 6 own, 1 kept, 1 converged, 7 stale, 1 gone, 2 conflict, 3 hidden$/m)
    const same = ovroot(['upgrade-check', `${s.dir}/a.sqfs`, '--lower', a, '--upper', upper])
    t.equal(same.status, 0, 'the same firmware: exit 0')
    t.match(same.stdout, /nothing to reconcile/)
    // A reset scheduled for the next boot is applied before the reconcile: the prediction says it is of today's upper.
    const marker = `${layout.root}/.ovroot/pending`
    fs.writeFileSync(marker, JSON.stringify({ kind: 'reset', requested: 'now', keep: [] }))
    const scheduled = ovroot(['upgrade-check', `${s.dir}/b.sqfs`, '--lower', a, '--upper', upper, '--json'])
    t.equal(scheduled.status, 8, 'a scheduled change needs a person: exit 8')
    t.match(scheduled.stderr, /^upgrade-check: a reset is scheduled on \S+\/flash: the next boot applies it before/m)
    t.equal((JSON.parse(scheduled.stdout) as { scheduled?: string }).scheduled, 'reset', '--json: scheduled')
    fs.rmSync(marker)

    const summary = await onFirmware({
      layout,
      lower: b,
      xattrs: new OverlayXattrs('trusted'),
      preferFirmware: false,
      recorded: readFirmwareRecord(layout),
      current: await currentIdentity(b),
      work: `${layout.root}/work`,
    })
    t.same(summary?.counts, predicted.counts, 'the boot on B did what upgrade-check predicted, class by class')

    const conflicts = ovroot(['diff', '--conflicts', '--lower', b, '--upper', upper])
    t.equal(conflicts.status, 0, conflicts.stderr)
    t.match(conflicts.stdout, /^conflict {2}\/etc\/config\/network: base saved; user’s kept; firmware’s in the lower$/m)
    const patch = ovroot(['diff', '--conflicts', '--patch', '--lower', b, '--upper', upper])
    t.match(
      patch.stdout,
      /diff base user\n--- base\/etc\/config\/network\n\+\+\+ user\/etc\/config\/network\n@@ -1 \+1,2 @@\n config interface lan\n\+\toption user 1/,
    )
    t.match(
      patch.stdout,
      /diff base firmware\n--- base\/etc\/config\/network\n\+\+\+ firmware\/etc\/config\/network\n@@ -1 \+1 @@\n-config interface lan\n\+config interface lan 2/,
    )
  },
)

await t.test(
  'upgrade with redirect_dir=on and metacopy=on: stubs and renamed directories made valid for B, or reported',
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { readUpgradeReport } = await import('../src/upgrade/record.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const options = ['redirect_dir=on', 'metacopy=on', 'index=off']
    const a = buildFirmware(s.dir, { ...FIRMWARE_A, 'opt/pkg/file': 'pkg\n' }, 'a')
    const b = buildFirmware(s.dir, firmwareB(), 'b')
    const { layout, upper, work } = emptyFlash(s.dir)
    const context = (lower: string) => bootContext(layout, lower)
    await onFirmware(await context(a))
    const merged = `${s.dir}/merged`
    mountOverlay(merged, [a], upper, work, options)
    fs.chmodSync(`${merged}/usr/bin/tool`, 0o700)
    fs.chmodSync(`${merged}/usr/lib/libbar.so`, 0o600)
    fs.renameSync(`${merged}/www/app`, `${merged}/www/site`)
    fs.renameSync(`${merged}/opt/pkg`, `${merged}/opt/mine`)
    fs.rmSync(`${merged}/etc/hotplug.d`, { recursive: true })
    fs.mkdirSync(`${merged}/etc/hotplug.d`)
    fs.writeFileSync(`${merged}/etc/hotplug.d/mine`, 'mine\n')
    unmount(merged)
    t.ok(getXattr(`${upper}/usr/bin/tool`, 'trusted.overlay.metacopy') !== undefined, 'chmod made a metacopy stub')
    t.ok(getXattr(`${upper}/www/site`, 'trusted.overlay.redirect') !== undefined, 'the rename made a redirect')
    t.equal(
      getXattr(`${upper}/etc/hotplug.d`, 'trusted.overlay.opaque')?.toString(),
      'y',
      'the new directory is opaque',
    )

    const summary = await onFirmware(await context(b))
    t.same(summary?.conflicts, ['/opt/mine'], 'a redirect whose source B removed is reported')
    t.match(
      readUpgradeReport(layout)?.entries.find((entry) => entry.path === '/opt/mine'),
      {
        reason: /renamed from a directory the new firmware no longer has/,
      },
    )
    t.same(
      summary?.hidden.sort(),
      ['/etc/hotplug.d', '/www/app'],
      'the opaque directory and the rename’s whiteout hide B’s changes',
    )
    t.equal(
      getXattr(`${upper}/usr/bin/tool`, 'trusted.overlay.metacopy'),
      undefined,
      'the stale stub became a plain copy',
    )

    fs.mkdirSync(work, { recursive: true })
    mountOverlay(merged, [b], upper, work, options)
    t.equal(read(`${merged}/usr/bin/tool`), firmwareB()['usr/bin/tool'], 'B’s data, not a torn file')
    t.equal(
      fs.statSync(`${merged}/usr/bin/tool`).size,
      Buffer.byteLength(firmwareB()['usr/bin/tool'] ?? ''),
      'B’s size',
    )
    t.equal(fs.statSync(`${merged}/usr/bin/tool`).mode & 0o7777, 0o700, 'the user’s mode')
    t.notOk(fs.existsSync(`${merged}/usr/lib/libbar.so`), 'a stub over a file B removed: gone, no EIO')
    t.equal(read(`${merged}/www/site/index.html`), 'app 2\n', 'the renamed directory follows B’s contents')
    t.same(fs.readdirSync(`${merged}/etc/hotplug.d`), ['mine'], 'the user’s replacement directory stands')
    unmount(merged)
  },
)

await t.test(
  'upgrade with metacopy=on: a hard-linked stub is one inode, its names go together (a plain copy of B’s data, still linked; kept while B has the same; gone with B’s file)',
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const options = ['redirect_dir=on', 'metacopy=on', 'index=off']
    const a = buildFirmware(s.dir, FIRMWARE_A, 'a')
    const b = buildFirmware(s.dir, firmwareB(), 'b')
    const { layout, upper, work } = emptyFlash(s.dir)
    const context = (lower: string) => bootContext(layout, lower)
    await onFirmware(await context(a))
    const merged = `${s.dir}/merged`
    mountOverlay(merged, [a], upper, work, options)
    // B changes tool, removes libbar, leaves system as it was.
    for (const path of ['usr/bin/tool', 'usr/lib/libbar.so', 'etc/config/system']) {
      fs.chmodSync(`${merged}/${path}`, 0o700)
      fs.linkSync(`${merged}/${path}`, `${merged}/${path}.link`)
    }
    unmount(merged)
    t.equal(fs.statSync(`${upper}/usr/bin/tool.link`).nlink, 2, 'a second name of the stub')
    t.ok(getXattr(`${upper}/usr/bin/tool.link`, 'trusted.overlay.metacopy') !== undefined, 'a metacopy stub')

    const summary = await onFirmware(await context(b))
    t.same(
      summary?.conflicts.sort(),
      ['/usr/lib/libbar.so', '/usr/lib/libbar.so.link'],
      'the names whose data B removed',
    )
    fs.rmSync(work, { recursive: true, force: true })
    fs.mkdirSync(work)
    mountOverlay(merged, [b], upper, work, options)
    const B = firmwareB()
    for (const path of ['usr/bin/tool', 'usr/bin/tool.link']) {
      t.equal(read(`${merged}/${path}`), B['usr/bin/tool'], `${path}: B’s data`)
      t.equal(
        fs.statSync(`${merged}/${path}`).size,
        Buffer.byteLength(B['usr/bin/tool'] ?? ''),
        `${path}: B’s size, not torn`,
      )
      t.equal(fs.statSync(`${merged}/${path}`).mode & 0o777, 0o700, `${path}: the user’s mode`)
    }
    t.equal(fs.statSync(`${merged}/usr/bin/tool`).ino, fs.statSync(`${merged}/usr/bin/tool.link`).ino, 'still one file')
    t.equal(read(`${merged}/etc/config/system.link`), FIRMWARE_A['etc/config/system'], 'B has the same data: kept')
    t.equal(fs.statSync(`${merged}/etc/config/system.link`).nlink, 2, '... still linked')
    t.notOk(
      fs.readdirSync(`${merged}/usr/lib`).some((name) => name.startsWith('libbar')),
      'both names of libbar gone with B’s file (a stub left would fail with EIO)',
    )
    unmount(merged)
    t.equal(getXattr(`${upper}/usr/bin/tool.link`, 'trusted.overlay.metacopy'), undefined, 'no stub left of tool')
  },
)

await t.test(
  'upgrade on an ext4 flash: immutable and append-only entries (chattr +i, +a) are dropped or refreshed, their flags kept on what stays',
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { inodeFlags, InodeFlag } = await import('../src/sys/libc.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = buildFirmware(s.dir, FIRMWARE_A, 'a')
    const b = buildFirmware(s.dir, firmwareB(), 'b')
    const layout = { root: `${s.dir}/flash`, upperName: 'upper' }
    fs.mkdirSync(layout.root)
    execFileSync('truncate', ['-s', '64M', `${s.dir}/flash.ext4`])
    execFileSync('mkfs.ext4', ['-q', `${s.dir}/flash.ext4`])
    execFileSync('mount', ['-o', 'loop,noatime', `${s.dir}/flash.ext4`, layout.root])
    const upper = `${layout.root}/upper`
    const work = `${layout.root}/work`
    fs.mkdirSync(upper)
    fs.mkdirSync(work)
    const context = (lower: string) => bootContext(layout, lower)
    await onFirmware(await context(a))
    const merged = `${s.dir}/merged`
    // index=on: the copy-ups carry origin handles, which the apply removes from what stays.
    mountOverlay(merged, [a], upper, work, ['index=on', 'redirect_dir=off', 'metacopy=off'])
    userChanges(merged)
    unmount(merged)
    const flagged = {
      'etc/config/dhcp': '+i', // stale: dropped
      'usr/lib/libbar.so': '+a', // gone: dropped
      'usr/bin/tool': '+i', // stale with the user's mode: refreshed
      'etc/config/system': '+i', // kept: its origin handle removed
      'etc/config': '+a', // a directory entries leave
      'etc/profile': '+i', // a hardlinked copy-up, dropped; its other name (the user's) stays
    }
    // As an earlier reconcile leaves it: no identity xattrs, so the name that stays is changed in nothing itself.
    removeXattr(`${upper}/etc/profile`, 'trusted.overlay.origin')
    for (const [path, flag] of Object.entries(flagged)) execFileSync('chattr', [flag, `${upper}/${path}`])

    const summary = await onFirmware(await context(b))
    t.ok(summary, 'the boot on B reconciled')
    for (const gone of ['etc/config/dhcp', 'etc/config/firewall', 'usr/lib/libbar.so'])
      t.notOk(fs.existsSync(`${upper}/${gone}`), `${gone}: dropped`)
    t.equal(read(`${upper}/usr/bin/tool`), firmwareB()['usr/bin/tool'], 'the refreshed file has B’s data')
    t.equal(inodeFlags(`${upper}/usr/bin/tool`), InodeFlag.immutable, '... and the user’s flag')
    t.notOk(fs.existsSync(`${upper}/etc/profile`), 'a hardlinked stale copy-up: dropped')
    t.equal(read(`${upper}/etc/profile.mine`), 'profile 1\n', 'its other name stays')
    t.equal(inodeFlags(`${upper}/etc/profile.mine`), InodeFlag.immutable, '... with the inode’s flag')
    t.equal(inodeFlags(`${upper}/etc/config/system`), InodeFlag.immutable, 'a kept file keeps its flag')
    t.equal(inodeFlags(`${upper}/etc/config`), InodeFlag.append, 'the directory keeps its flag')
    t.same(boundEntries(upper), [], 'no entry that stayed is bound to A, flagged ones included')
    t.notOk(fs.existsSync(`${layout.root}/.ovroot/pending`), 'nothing left pending')
    // The scratch directory's cleanup removes what is below it.
    for (const path of [...Object.keys(flagged), 'etc/profile.mine'])
      spawnSync('chattr', ['-i', '-a', `${upper}/${path}`])
  },
)

await t.test(
  'upgrade-check on the device’s flash waits for the staging lock: a sync or reset applying meanwhile would make its prediction wrong',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = buildFirmware(s.dir, FIRMWARE_A, 'a')
    buildFirmware(s.dir, firmwareB(), 'b')
    const flash = `${s.dir}/flash`
    fs.mkdirSync(`${flash}/upper`, { recursive: true })
    fs.mkdirSync(`${flash}/work`)
    mountOverlay(`${s.dir}/merged`, [a], `${flash}/upper`, `${flash}/work`, OVROOT_OPTIONS)
    userChanges(`${s.dir}/merged`)
    unmount(`${s.dir}/merged`)
    const run = `${s.dir}/run`
    fs.writeFileSync(`${s.dir}/ovroot.conf`, `[overlay]\nlower = ${a}\ndir = ${flash}\n[boot]\nrun_dir = ${run}\n`)
    // A live process holds the lock, as the sync daemon does while it stages and applies.
    const holder = spawn('sleep', ['600'], { stdio: 'ignore' })
    t.teardown(() => holder.kill())
    fs.mkdirSync(`${run}/staging.lock`, { recursive: true })
    fs.writeFileSync(`${run}/staging.lock/pid`, `${holder.pid}\novroot sync --watch\n`)

    const check = spawn(
      'env',
      [
        '-u',
        'NODE_OPTIONS',
        process.execPath,
        OVROOT,
        'upgrade-check',
        `${s.dir}/b.sqfs`,
        '--config',
        `${s.dir}/ovroot.conf`,
      ],
      { env: cleanEnvironment() },
    )
    let stdout = ''
    let stderr = ''
    check.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    check.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const status = new Promise<number | null>((resolve) => check.on('exit', resolve))
    while (!stderr.includes('waiting for') && check.exitCode === null) await new Promise((r) => setTimeout(r, 50))
    t.match(
      stderr,
      /waiting for pid \d+ \(ovroot sync --watch\) to finish staging a change/,
      'it says whom it waits for',
    )
    t.equal(stdout, '', 'no prediction while the lock is held')
    t.notOk(fs.existsSync(`${flash}/.ovroot/firmware`), 'nothing recorded on the flash either')
    holder.kill()
    t.equal(await status, 8, `with the lock free, the prediction (${stderr})`)
    t.match(stdout, /^counts: .*2 conflict/m)
    t.notOk(fs.existsSync(`${run}/staging.lock`), 'and the lock is given back')
  },
)

await t.test(
  'an image rebuilt with the same release files: the two firmwares told apart by their identities',
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { currentIdentity } = await import('../src/upgrade/identity.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const release = { 'etc/openwrt_release': "DISTRIB_ID='OpenWrt'\nDISTRIB_RELEASE='24.10.0'\n" }
    const a = buildFirmware(s.dir, { ...FIRMWARE_A, ...release }, 'a')
    const b = buildFirmware(s.dir, { ...firmwareB(), ...release }, 'b')
    const layout = { root: `${s.dir}/flash`, upperName: 'upper' }
    fs.mkdirSync(`${layout.root}/upper`, { recursive: true })
    fs.mkdirSync(`${layout.root}/work`)
    await onFirmware(await bootContext(layout, a))
    const summary = await onFirmware(await bootContext(layout, b))
    const [fromId, toId] = [await currentIdentity(a), await currentIdentity(b)].map((id) => id.identity.slice(9, 21))
    t.same(
      [summary?.from, summary?.to],
      [`OpenWrt 24.10.0 (manifest ${fromId})`, `OpenWrt 24.10.0 (manifest ${toId})`],
      'not "OpenWrt 24.10.0 -> OpenWrt 24.10.0"',
    )
  },
)

await t.test('ovroot status shows the upgrade of this boot, in text and JSON', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const upgrade = {
    from: 'OpenWrt 23.05.0',
    to: 'OpenWrt 24.10.0',
    counts: { own: 6, kept: 1, converged: 1, stale: 7, gone: 1, conflict: 2, hidden: 3, unknown: 0 },
    conflicts: ['/etc/config/network', '/etc/r\\xe9seau'],
    hidden: ['/etc/banner'],
    unknown: [],
  }
  fs.writeFileSync(`${s.dir}/status.json`, JSON.stringify({ mode: 'flash', bootedAt: 'now', upgrade }))
  fs.writeFileSync(`${s.dir}/ovroot.conf`, `[boot]\nrun_dir = ${s.dir}\n`)
  const text = ovroot(['status', '--config', `${s.dir}/ovroot.conf`])
  t.equal(text.status, 0, text.stderr)
  t.match(
    text.stdout,
    /^upgrade: {4}firmware OpenWrt 23\.05\.0 -> OpenWrt 24\.10\.0 at this boot: 6 own, 1 kept, 1 converged, 7 stale, 1 gone, 2 conflict, 3 hidden$/m,
  )
  t.match(text.stdout, /^conflicts: {2}\/etc\/config\/network \/etc\/r\\xe9seau \(ovroot diff --conflicts\)$/m)
  t.match(text.stdout, /^hidden: {5}\/etc\/banner$/m)
  t.notMatch(text.stdout, /^unknown:/m, 'no line for an empty class')
  const json = ovroot(['status', '--json', '--config', `${s.dir}/ovroot.conf`])
  t.same((JSON.parse(json.stdout) as { upgrade: unknown }).upgrade, upgrade, '--json carries it whole')
})

await t.test(
  'firmware without a manifest: records taken at boot on A for the upper entries not yet recorded; on B the reconcile classifies from them, an entry never recorded is the user’s, reported',
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { currentIdentity } = await import('../src/upgrade/identity.js')
    const { readFirmwareRecord, readUpgradeReport } = await import('../src/upgrade/record.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = buildFirmware(s.dir, FIRMWARE_A, 'a', false)
    const b = buildFirmware(s.dir, firmwareB(), 'b', false)
    t.notOk(fs.existsSync(`${a}/${MANIFEST_PATH}`), 'A ships no manifest')
    const { layout, upper, work } = emptyFlash(s.dir)
    const context = (lower: string) => bootContext(layout, lower)
    const merged = `${s.dir}/merged`
    const session = (changes: (at: (path: string) => Buffer) => void): void => {
      mountOverlay(merged, [a], upper, work, OVROOT_OPTIONS)
      changes((path) => latin1(`${merged}/${path}`))
      unmount(merged)
    }
    const base = (): string => read(`${layout.root}/.ovroot/base.manifest`) ?? ''
    const absent = (): string => read(`${layout.root}/.ovroot/base.absent`) ?? ''

    t.equal(await onFirmware(await context(a)), undefined, 'first boot on A: recorded, nothing reconciled')
    t.match(readFirmwareRecord(layout), { base: 'recorded', identity: /^squashfs:/ })
    t.notMatch(base(), /etc\/config\/network/, 'an empty upper: nothing of A recorded yet')

    // A session on A, then a boot on A: the records of what it shadows are taken while A is still there.
    session((at) => {
      fs.appendFileSync(at('etc/config/network'), '\toption user 1\n') // conflict with B
      fs.appendFileSync(at('etc/config/system'), '\toption hostname mine\n') // B did not change it: kept
      fs.closeSync(fs.openSync(at('etc/config/dhcp'), 'r+')) // stale
      fs.chmodSync(at('usr/bin/tool'), 0o700) // stale, the user's mode on B's data
      fs.chmodSync(at('usr/lib/libbar.so'), 0o600) // gone in B
      fs.writeFileSync(at('etc/motd'), 'motd 2\n') // converged
      fs.rmSync(at('etc/banner')) // hidden
      fs.writeFileSync(at('etc/own'), 'own file\n') // own: A had nothing there
    })
    t.equal(await onFirmware(await context(a)), undefined, 'the boot on A again: records only')
    t.match(base(), /^etc\/config\/network\tf\t/m, 'the edited file’s old side recorded')
    t.match(base(), /^usr\/bin\/tool\tf\t755\t/m, 'the chmod’ed file’s old mode recorded')
    t.match(base(), /^etc\/banner\tf\t/m, 'what a whiteout hides recorded')
    t.match(absent(), /^etc\/own$/m, 'the user’s own file: recorded as absent from A')
    const recorded = base()
    const inodes = (): number[] =>
      ['base.manifest', 'base.absent'].map((name) => fs.statSync(`${layout.root}/.ovroot/${name}`).ino)
    const written = inodes()
    t.equal(await onFirmware(await context(a)), undefined, 'and once more')
    t.equal(base(), recorded, 'records taken once: nothing new, nothing changed')
    t.same(inodes(), written, 'and nothing written: a boot with nothing new to record writes no flash')

    // The last session on A: no boot on A follows, so its entries are never recorded.
    session((at) => {
      fs.utimesSync(at('etc/config/firewall'), new Date(), new Date()) // would be stale: unknown
      fs.appendFileSync(at('etc/profile'), 'mine\n') // would be a conflict: unknown
      fs.writeFileSync(at('etc/own2'), 'own 2\n') // own, but not known to be: unknown
    })

    const summary = await onFirmware(await context(b))
    t.ok(summary, 'boot on B reconciled')
    t.same(summary?.conflicts, ['/etc/config/network'], 'the recorded conflict, named')
    t.same(summary?.hidden, ['/etc/banner'], 'the recorded deletion, named')
    t.same(
      summary?.unknown,
      ['/etc/config/firewall', '/etc/own2', '/etc/profile'],
      'the entries of the last session on A: unknown, named',
    )
    t.same(summary?.counts, { own: 1, kept: 1, converged: 1, stale: 2, gone: 1, conflict: 1, hidden: 1, unknown: 3 })
    t.same(
      readUpgradeReport(layout)
        ?.entries.filter((entry) => entry.class === 'unknown')
        .map((entry) => entry.path),
      summary?.unknown,
      'the report names them too',
    )
    t.match(readFirmwareRecord(layout), {
      base: 'recorded',
      identity: (await currentIdentity(b)).identity,
    })
    t.match(base(), /^etc\/profile\tf\t/m, 'B’s records of what stays are the base of the next upgrade')

    fs.mkdirSync(work, { recursive: true })
    mountOverlay(merged, [b], upper, work, OVROOT_OPTIONS)
    const B = firmwareB()
    const expect = (path: string, content: string | undefined, what: string): void => {
      t.equal(read(`${merged}/${path}`), content, what)
    }
    expect('etc/config/network', `${FIRMWARE_A['etc/config/network']}\toption user 1\n`, 'conflict: the user’s')
    expect('etc/config/system', `${FIRMWARE_A['etc/config/system']}\toption hostname mine\n`, 'kept')
    expect('etc/config/dhcp', B['etc/config/dhcp'], 'stale: B’s')
    expect('usr/bin/tool', B['usr/bin/tool'], 'stale chmod: B’s data')
    t.equal(fs.statSync(`${merged}/usr/bin/tool`).mode & 0o7777, 0o700, '... with the user’s mode')
    expect('usr/lib/libbar.so', undefined, 'gone')
    expect('etc/motd', 'motd 2\n', 'converged')
    expect('etc/banner', undefined, 'the deletion stays')
    expect('etc/own', 'own file\n', 'own')
    expect('etc/config/firewall', FIRMWARE_A['etc/config/firewall'], 'unknown: A’s copy kept as the user’s')
    expect('etc/profile', `${FIRMWARE_A['etc/profile']}mine\n`, 'unknown: the user’s kept')
    expect('etc/own2', 'own 2\n', 'unknown: kept')
    unmount(merged)
  },
)

await t.test(
  '[upgrade] conflicts = firmware: the firmware’s version wins, the user’s saved for the three-way view; status and diff --conflicts say so',
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { readUpgradeReport } = await import('../src/upgrade/record.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    // A symlink both sides changed, too: the zone the firmware links and the user's own.
    const zone = (name: string): Record<string, string> => ({ 'etc/localtime': `/usr/share/zoneinfo/${name}` })
    const a = buildFirmware(s.dir, FIRMWARE_A, 'a', true, zone('UTC'))
    const b = buildFirmware(s.dir, firmwareB(), 'b', true, zone('Europe/Berlin'))
    const { layout, upper, work } = emptyFlash(s.dir)
    const context = (lower: string) => bootContext(layout, lower, { preferFirmware: true })
    await onFirmware(await context(a))
    const merged = `${s.dir}/merged`
    mountOverlay(merged, [a], upper, work, OVROOT_OPTIONS)
    userChanges(merged)
    fs.rmSync(`${merged}/etc/localtime`)
    fs.symlinkSync('/usr/share/zoneinfo/Asia/Tokyo', `${merged}/etc/localtime`)
    unmount(merged)

    const summary = await onFirmware(await context(b))
    const conflicts = ['/etc/config/network', '/etc/localtime', '/etc/r\\xe9seau']
    t.same(summary?.conflicts, conflicts, 'the conflicts, named')
    t.same(summary?.firmwareWon, conflicts, 'each given to the firmware')
    t.same(summary?.counts, { own: 6, kept: 1, converged: 1, stale: 7, gone: 1, conflict: 3, hidden: 3, unknown: 0 })
    t.notOk(fs.existsSync(`${upper}/etc/config/network`), 'the user’s copy left the upper')
    const saved = `${layout.root}/.ovroot/upgrade/user`
    t.equal(read(`${saved}/etc/config/network`), 'config interface lan\n\toption user 1\n', 'and is saved')
    t.equal(read(`${saved}/etc/r\xe9seau`), 'latin-1 network 1\nmine\n', 'a Latin-1 name too')
    t.equal(fs.readlinkSync(`${saved}/etc/localtime`), '/usr/share/zoneinfo/Asia/Tokyo', 'a symlink: its target saved')
    t.match(
      readUpgradeReport(layout)?.entries.find((entry) => entry.path === '/etc/localtime'),
      { class: 'conflict', savedUser: 'user/etc/localtime', firmwareWon: true },
    )
    t.match(
      readUpgradeReport(layout)?.entries.find((entry) => entry.path === '/etc/config/network'),
      {
        class: 'conflict',
        savedUser: 'user/etc/config/network',
        firmwareWon: true,
      },
    )

    fs.mkdirSync(work, { recursive: true })
    mountOverlay(merged, [b], upper, work, OVROOT_OPTIONS)
    t.equal(read(`${merged}/etc/config/network`), firmwareB()['etc/config/network'], 'the device shows B’s')
    t.equal(read(`${merged}/etc/r\xe9seau`), firmwareB()['etc/r\xe9seau'], 'for both conflicts')
    t.equal(read(`${merged}/etc/config/system`), 'config system\n\toption hostname mine\n', 'no conflict: kept')
    t.equal(fs.readlinkSync(`${merged}/etc/localtime`), '/usr/share/zoneinfo/Europe/Berlin', 'and B’s link')
    unmount(merged)

    fs.writeFileSync(`${s.dir}/status.json`, JSON.stringify({ mode: 'flash', bootedAt: 'now', upgrade: summary }))
    fs.writeFileSync(`${s.dir}/ovroot.conf`, `[boot]\nrun_dir = ${s.dir}\n`)
    const status = ovroot(['status', '--config', `${s.dir}/ovroot.conf`])
    t.equal(status.status, 0, status.stderr)
    t.match(
      status.stdout,
      /^conflicts: {2}\/etc\/config\/network \/etc\/localtime \/etc\/r\\xe9seau \(the firmware’s versions won, the user’s saved: ovroot diff --conflicts\)$/m,
    )
    const json = ovroot(['status', '--json', '--config', `${s.dir}/ovroot.conf`])
    t.same((JSON.parse(json.stdout) as { upgrade: { firmwareWon: string[] } }).upgrade.firmwareWon, conflicts)

    const listed = ovroot(['diff', '--conflicts', '--lower', b, '--upper', upper])
    t.equal(listed.status, 0, listed.stderr)
    t.match(
      listed.stdout,
      /^conflict {2}\/etc\/config\/network: base sha256 [0-9a-f]{12} \(not saved\); user’s saved \(the firmware’s won\); firmware’s in the lower$/m,
    )
    const patch = ovroot(['diff', '--conflicts', '--patch', '--lower', b, '--upper', upper])
    t.match(
      patch.stdout,
      /diff firmware user\n--- firmware\/etc\/config\/network\n\+\+\+ user\/etc\/config\/network\n@@ -1 \+1,2 @@\n-config interface lan 2\n\+config interface lan\n\+\toption user 1\n/,
      'the saved user’s copy against the firmware’s',
    )
    t.match(
      patch.stdout,
      /diff firmware user\n--- firmware\/etc\/localtime\n\+\+\+ user\/etc\/localtime\n@@ -1 \+1 @@\n-\/usr\/share\/zoneinfo\/Europe\/Berlin\n\+\/usr\/share\/zoneinfo\/Asia\/Tokyo\n/,
      'a symlink’s targets, user’s saved against the firmware’s',
    )
  },
)

/** A flash recorded on A (its manifest shipped), the rows made over A: the boot on B's context. */
async function upgradedFlash(dir: string, flashSize?: string) {
  const { onFirmware } = await import('../src/upgrade/boot.js')
  const a = buildFirmware(dir, FIRMWARE_A, 'a')
  const b = buildFirmware(dir, firmwareB(), 'b')
  const layout = { root: `${dir}/flash`, upperName: 'upper' }
  fs.mkdirSync(layout.root)
  if (flashSize) execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${flashSize},noatime`, 'tmpfs', layout.root])
  const upper = `${layout.root}/upper`
  const work = `${layout.root}/work`
  fs.mkdirSync(upper)
  fs.mkdirSync(work)
  const context = (lower: string) => bootContext(layout, lower)
  await onFirmware(await context(a))
  mountOverlay(`${dir}/merged`, [a], upper, work, OVROOT_OPTIONS)
  userChanges(`${dir}/merged`)
  unmount(`${dir}/merged`)
  return { layout, upper, a, b, context }
}

await t.test(
  'a damaged firmware record or base manifest on the flash: the reconcile goes on, what it cannot know is the user’s, reported',
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { currentIdentity } = await import('../src/upgrade/identity.js')
    const { readFirmwareRecord } = await import('../src/upgrade/record.js')

    await t.test('the firmware record', async (t) => {
      const s = scratch()
      t.teardown(() => s.cleanup())
      const { layout, upper, b, context } = await upgradedFlash(s.dir)
      const onB = await context(b)
      fs.writeFileSync(`${layout.root}/.ovroot/firmware`, '{"identity": "manifest:')
      t.throws(() => readFirmwareRecord(layout), { code: 'EFIRMWARE' }, 'the record is unreadable')
      let unreadable = ''
      try {
        readFirmwareRecord(layout)
      } catch (error) {
        unreadable = (error as Error).message
      }
      const summary = await onFirmware({ ...onB, recorded: undefined, unreadable })
      t.match(summary?.from, 'an unknown firmware', 'from a firmware not known')
      t.match(summary?.problems, [/unreadable firmware record/], 'the damage, reported')
      t.same(summary?.conflicts, ['/etc/config/network', '/etc/r\\xe9seau'], 'the base manifest still classifies')
      t.ok(summary?.unknown.includes('/etc/own'), 'a path the records do not name: unknown, not the user’s own')
      t.equal(read(`${upper}/etc/own`), 'own file\n', 'and kept')
      t.notOk(fs.existsSync(`${upper}/etc/config/dhcp`), 'a stale copy the records show: dropped')
      t.equal(readFirmwareRecord(layout)?.identity, (await currentIdentity(b)).identity, 'B recorded, readable')
    })

    await t.test('the new firmware’s shipped manifest', async (t) => {
      const s = scratch()
      t.teardown(() => s.cleanup())
      const { layout, context } = await upgradedFlash(s.dir)
      const damaged = buildFirmware(s.dir, firmwareB(), 'b-damaged', 'damaged')
      t.match((await currentIdentity(damaged)).identity, /^manifest:/, 'its header still names it')
      const summary = await onFirmware(await context(damaged))
      t.match(
        summary?.problems,
        [
          /^firmware manifest: \/\S+\/usr\/lib\/ovroot\/firmware\.manifest does not match its digest.*read from its files instead/,
        ],
        'the damage, reported once, naming the file',
      )
      t.same(summary?.conflicts, ['/etc/config/network', '/etc/r\\xe9seau'], 'B read from its files classifies')
      t.same(summary?.counts, { own: 6, kept: 1, converged: 1, stale: 7, gone: 1, conflict: 2, hidden: 3, unknown: 0 })
      t.match(
        readFirmwareRecord(layout),
        { base: 'recorded', identity: /^manifest:/ },
        'records of B taken, not shipped',
      )
    })

    await t.test('the base manifest', async (t) => {
      const s = scratch()
      t.teardown(() => s.cleanup())
      const { layout, upper, b, context } = await upgradedFlash(s.dir)
      const before = upperSnapshot(upper)
      const base = `${layout.root}/.ovroot/base.manifest`
      fs.writeFileSync(base, fs.readFileSync(base, 'latin1').replace('\t644\t', '\t600\t'))
      const summary = await onFirmware(await context(b))
      t.match(summary?.problems, [/does not match its digest .*every entry is treated as the user’s|user's/])
      t.same(summary?.conflicts, [], 'no conflict can be told')
      const counted = Object.values(summary?.counts ?? {}).reduce((sum, count) => sum + count, 0)
      t.ok(counted > 10 && summary?.counts.unknown === counted, `every entry unknown (${counted})`)
      t.same([...upperSnapshot(upper).keys()], [...before.keys()], 'nothing dropped: every entry kept as the user’s')
      t.equal(read(`${upper}/etc/config/dhcp`), 'config dnsmasq\n', 'a stale copy among them')
      t.equal(readFirmwareRecord(layout)?.identity, (await currentIdentity(b)).identity, 'B recorded')
    })
  },
)

await t.test(
  'a reconcile that cannot be staged (a full flash): nothing changes, its staging goes, the failure says what and what to do',
  async (t) => {
    const { onFirmware, upgradeFailureOf, UpgradeFailed } = await import('../src/upgrade/boot.js')
    const { readFirmwareRecord } = await import('../src/upgrade/record.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const { layout, upper, b, context } = await upgradedFlash(s.dir, '8m')
    const before = flashState(layout.root)
    const filler = `${layout.root}/filler`
    t.throws(() => fs.writeFileSync(filler, Buffer.alloc(16 << 20)), { code: 'ENOSPC' }, 'the flash filled up')

    let failed: unknown
    try {
      await onFirmware(await context(b))
    } catch (error) {
      failed = error
    }
    t.ok(failed instanceof UpgradeFailed, 'the reconcile failed as one')
    const failure = failed instanceof UpgradeFailed ? failed.failure : undefined
    t.match(failure, {
      from: /^firmware manifest [0-9a-f]{12}$/,
      committed: false,
      cause: /ENOSPC|no space/i,
      advice: /nothing on the flash changed.*runs again at the next boot/,
    })
    t.equal(upgradeFailureOf(layout, failed), failure, 'the boot finds it')
    t.same(flashState(layout.root), before, 'the upper and the firmware record as they were')
    t.notOk(fs.existsSync(`${layout.root}/.ovroot/pending`), 'nothing committed')
    t.same(
      fs.readdirSync(`${layout.root}/.ovroot`).filter((name) => name.startsWith('staged')),
      [],
      'the staging dropped at once',
    )

    fs.mkdirSync(`${s.dir}/run`)
    const state = { mode: 'degraded', reason: 'x', bootedAt: 'now', upgradeFailed: failure }
    fs.writeFileSync(`${s.dir}/run/status.json`, JSON.stringify(state))
    fs.writeFileSync(`${s.dir}/ovroot.conf`, `[boot]\nrun_dir = ${s.dir}/run\n`)
    const text = ovroot(['status', '--config', `${s.dir}/ovroot.conf`])
    t.match(
      text.stdout,
      /^upgrade: {4}FAILED: firmware manifest [0-9a-f]{12} -> firmware manifest [0-9a-f]{12}: .*(ENOSPC|space)/m,
    )
    t.match(text.stdout, /^what to do: nothing on the flash changed/m)
    const json = ovroot(['status', '--json', '--config', `${s.dir}/ovroot.conf`])
    t.same((JSON.parse(json.stdout) as { upgradeFailed: unknown }).upgradeFailed, failure, '--json carries it whole')

    fs.rmSync(filler)
    const retried = await onFirmware(await context(b))
    t.equal(retried?.counts.conflict, 2, 'with room, the next boot reconciles')
    t.not(read(`${layout.root}/.ovroot/firmware`), before.get('.ovroot/firmware'), 'and records B')
    t.ok(readFirmwareRecord(layout))
    t.notOk(fs.existsSync(`${upper}/etc/config/dhcp`))
  },
)

await t.test(
  'a committed reconcile whose apply fails at boot: the failure names the upgrade, the next boot finishes it',
  async (t) => {
    const { upgradeFailureOf } = await import('../src/upgrade/boot.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const { flash } = await committedUpgrade(s.dir)
    const layout = { root: flash, upperName: 'upper' }
    t.match(upgradeFailureOf(layout, new Error('EIO: i/o error, rename')), {
      committed: true,
      cause: /committed but its apply failed: EIO/,
      advice: /the next boot finishes the apply/,
    })
    fs.rmSync(`${flash}/.ovroot/pending`)
    t.equal(upgradeFailureOf(layout, new Error('EIO')), undefined, 'no upgrade pending: not an upgrade’s failure')
  },
)

await t.test(
  "upgrade: a second name of a file, stale, refreshed with the user's metadata: its inode's xattrs come along",
  async (t) => {
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = buildFirmware(s.dir, { ...FIRMWARE_A, 'etc/x': 'same\n', 'etc/y': 'same\n' }, 'a')
    const b = buildFirmware(s.dir, { ...firmwareB(), 'etc/x': 'same\n', 'etc/y': 'new y\n' }, 'b')
    const layout = { root: `${s.dir}/flash`, upperName: 'upper' }
    const upper = `${layout.root}/upper`
    fs.mkdirSync(upper, { recursive: true })
    fs.mkdirSync(`${layout.root}/work`)
    await onFirmware(await bootContext(layout, a))
    const merged = `${s.dir}/merged`
    mountOverlay(merged, [a], upper, `${layout.root}/work`, OVROOT_OPTIONS)
    // The user tags etc/x and makes etc/y a second name of it: etc/y's content is still what A shipped there.
    setXattr(`${merged}/etc/x`, 'user.tag', Buffer.from('mine'))
    fs.rmSync(`${merged}/etc/y`)
    fs.linkSync(`${merged}/etc/x`, `${merged}/etc/y`)
    unmount(merged)
    const summary = await onFirmware(await bootContext(layout, b))
    t.ok(summary, 'reconciled')
    t.equal(read(`${upper}/etc/y`), 'new y\n', "etc/y: stale, B's data")
    t.equal(getXattr(`${upper}/etc/y`, 'user.tag')?.toString(), 'mine', "with the user's xattr")
    t.equal(getXattr(`${upper}/etc/x`, 'user.tag')?.toString(), 'mine', 'etc/x keeps it')
  },
)

await t.test('a refresh the plan did not keep whole is a typed internal error, not a plain one', async (t) => {
  const { stageUpgrade } = await import('../src/upgrade/reconcile.js')
  const { OverlayXattrs } = await import('../src/overlay/xattrs.js')
  const s = scratch()
  t.teardown(() => s.cleanup())
  fs.mkdirSync(`${s.dir}/flash/upper`, { recursive: true })
  fs.mkdirSync(`${s.dir}/new`)
  fs.writeFileSync(`${s.dir}/new/tool`, 'tool 2\n')
  const plan: UpgradePlan = {
    entries: [
      {
        path: 'tool',
        lowerPath: 'tool',
        verdict: { class: 'stale', action: 'refresh', metadata: { mode: 0o700, uid: 0, gid: 0, xattrs: 'firmware' } },
        entry: { path: 'tool', type: 'file' },
      },
    ],
    rootIdentity: [],
    flags: new Map(),
    counts: { own: 0, kept: 0, converged: 0, stale: 1, gone: 0, conflict: 0, hidden: 0, unknown: 0 },
  }
  t.throws(
    () =>
      stageUpgrade(plan, {
        layout: { root: `${s.dir}/flash`, upperName: 'upper' },
        newRoot: `${s.dir}/new`,
        xattrs: new OverlayXattrs('trusted'),
        report: { from: 'A', to: 'B', fromDescription: 'A', toDescription: 'B', counts: plan.counts, entries: [] },
        firmware: { identity: 'x', description: 'B', base: 'shipped', since: '' },
        base: { shipped: `${s.dir}/new/tool` },
      }),
    { name: 'OvrootError', code: 'EINTERNAL', exitStatus: 70, message: /the plan did not keep \/tool whole/ },
  )
})
