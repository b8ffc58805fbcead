/**
 * Factory reset of real, kernel-written uppers: what goes, what stays and with
 * which metadata, and recovery from every state a power cut can leave.
 */
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import { getXattr, setXattr } from '../src/sys/libc.js'
import { globToRegExp } from '../src/glob.js'
import { parseKeepList } from '../src/reset/keep.js'
import { mountOverlay, ovroot, scratch, snapshot, unmount } from './helpers/overlay.js'
import { writeTree } from './helpers/mutate.js'

interface Device {
  dir: string
  lower: string
  upper: string
  work: string
  merged: string
  config: string
}

/** A device whose upper the kernel wrote: user files, hidden files, keep-list material. */
function device(t: Test): Device {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const d: Device = { dir: s.dir, lower: `${s.dir}/rom`, upper: `${s.dir}/flash/upper`, work: `${s.dir}/flash/work`, merged: `${s.dir}/merged`, config: `${s.dir}/ovroot.conf` }
  writeTree(d.lower, {
    '/etc/config/network': 'lan\n',
    '/etc/sysupgrade.conf': '# kept across resets\n/etc/dropbear/\n/etc/glob-*.conf\n',
    '/etc/banner': 'hello\n',
    '/etc/olddir/file': 'old\n',
  })
  fs.mkdirSync(d.upper, { recursive: true })
  fs.mkdirSync(d.work, { recursive: true })
  mountOverlay(d.merged, [d.lower], d.upper, d.work, [])
  const m = d.merged
  fs.appendFileSync(`${m}/etc/config/network`, 'wan\n')
  fs.appendFileSync(`${m}/etc/sysupgrade.conf`, '/etc/user-added\n')
  fs.mkdirSync(`${m}/etc/dropbear`)
  fs.writeFileSync(`${m}/etc/dropbear/key`, 'secret key\n', { mode: 0o600 })
  fs.chownSync(`${m}/etc/dropbear/key`, 22, 22)
  setXattr(`${m}/etc/dropbear/key`, 'user.origin', Buffer.from('device'))
  fs.writeFileSync(`${m}/etc/glob-a.conf`, 'a\n')
  fs.writeFileSync(`${m}/etc/glob-b.conf`, 'b\n')
  fs.writeFileSync(`${m}/etc/user-added`, 'u\n')
  fs.writeFileSync(`${m}/etc/by-config`, 'c\n')
  fs.rmSync(`${m}/etc/banner`)
  fs.rmSync(`${m}/etc/olddir`, { recursive: true })
  fs.mkdirSync(`${m}/root/.ssh`, { recursive: true })
  fs.writeFileSync(`${m}/root/.ssh/authorized_keys`, 'ssh-ed25519 AAAA\n')
  fs.writeFileSync(`${m}/.hidden-at-top`, 'x\n')
  unmount(d.merged)
  fs.writeFileSync(d.config, `[overlay]\nlower = ${d.lower}\n[reset]\nkeep = /etc/by-config\nkeep_lists = /etc/sysupgrade.conf /lib/upgrade/keep.d\n`)
  return d
}

const reset = (d: Device, ...args: string[]) => ovroot(['reset', '--config', d.config, '--upper', d.upper, ...args])

/** The merged view after a remount. */
function mergedView(t: Test, d: Device): ReturnType<typeof snapshot> {
  fs.mkdirSync(d.work, { recursive: true })
  mountOverlay(d.merged, [d.lower], d.upper, d.work, [])
  const view = snapshot(d.merged)
  unmount(d.merged)
  t.ok(view.size > 0)
  return view
}

await t.test('the keep list: config, OpenWrt list files as edited by the user, --keep; globs', async (t) => {
  const d = device(t)
  const plan = reset(d, '--dry-run', '--keep', '/root/.ssh')
  t.equal(plan.status, 0, plan.stderr)
  t.equal(plan.stdout, [
    'discard A /.hidden-at-top',
    'discard D /etc/banner',
    'keep    A /etc/by-config',
    'discard M /etc/config/network',
    'keep    A /etc/dropbear',
    'keep    A /etc/dropbear/key',
    'keep    A /etc/glob-a.conf',
    'keep    A /etc/glob-b.conf',
    'discard D /etc/olddir',
    'discard M /etc/sysupgrade.conf',
    'keep    A /etc/user-added',
    'keep    A /root',
    'keep    A /root/.ssh',
    'keep    A /root/.ssh/authorized_keys',
    '',
  ].join('\n'), 'every change of ovroot diff, marked with what the reset does to it')
  const json = reset(d, '--dry-run', '--json').stdout.trim().split('\n').map((line) => JSON.parse(line) as { reset: string; path: string; change: string })
  t.same(json.filter((record) => record.reset === 'discard').map((record) => record.path), ['/.hidden-at-top', '/etc/banner', '/etc/config/network', '/etc/olddir', '/etc/sysupgrade.conf', '/root', '/root/.ssh', '/root/.ssh/authorized_keys'], '--json: diff records with a reset field')
  t.match(json.find((record) => record.path === '/etc/banner'), { change: 'deleted', reset: 'discard' })
  t.ok(fs.existsSync(`${d.upper}/.hidden-at-top`), '--dry-run changes nothing')
})

await t.test('reset of an unmounted upper: factory state plus the kept paths, metadata intact', async (t) => {
  const d = device(t)
  const result = reset(d, '--yes', '--keep', '/root/.ssh')
  t.equal(result.status, 0, result.stderr)
  t.notOk(fs.existsSync(d.work), 'the work directory, which may index old inodes, is cleared')
  const view = mergedView(t, d)
  const factory = snapshot(d.lower)
  const kept = ['/etc/by-config', '/etc/dropbear', '/etc/dropbear/key', '/etc/glob-a.conf', '/etc/glob-b.conf', '/etc/user-added', '/root', '/root/.ssh', '/root/.ssh/authorized_keys']
  t.same([...view.keys()].filter((path) => !factory.has(path)).sort(), kept.sort(), 'only kept paths are added')
  for (const [path, entry] of factory) t.same(view.get(path), entry, `${path} is back to the factory state`)
  const key = fs.lstatSync(`${d.upper}/etc/dropbear/key`)
  t.equal(key.mode & 0o777, 0o600, 'mode kept')
  t.equal(key.uid, 22, 'owner kept')
  t.equal(getXattr(`${d.upper}/etc/dropbear/key`, 'user.origin')?.toString(), 'device', 'xattrs kept')
  t.notOk(fs.existsSync(`${d.dir}/flash/.ovroot/reset`), 'no reset is left pending')
})

await t.test('refusals: no confirmation, a live layer (upper, lower, or a directory holding one), no boot record', async (t) => {
  const d = device(t)
  const noTerminal = reset(d)
  t.equal(noTerminal.status, 7, 'without a terminal, --yes is required')
  t.match(noTerminal.stderr, /pass --yes to confirm/)
  fs.mkdirSync(d.work, { recursive: true })
  mountOverlay(d.merged, [d.lower], d.upper, d.work, [])
  const mounted = reset(d, '--yes')
  const holding = ovroot(['reset', '--config', d.config, '--upper', `${d.dir}/flash`, '--yes'])
  unmount(d.merged)
  t.equal(mounted.status, 4)
  t.match(mounted.stderr, /is a layer \(.*\/flash\/upper\) of a mounted overlay/)
  t.equal(holding.status, 4, 'a directory that holds a live upper')
  t.match(holding.stderr, /is part of a layer|is a layer/)
  mountOverlay(d.merged, [d.upper, d.lower], undefined, undefined, [])
  const asLower = reset(d, '--yes')
  unmount(d.merged)
  t.equal(asLower.status, 4, 'an upper shown read-only as a lower (a full flash) is as live as an upper')
  t.ok(fs.existsSync(`${d.upper}/.hidden-at-top`), 'a live layer is never touched')
  const live = ovroot(['reset', '--config', d.config, '--yes'])
  t.equal(live.status, 4, 'no boot record: not a device booted by ovroot')
  t.match(live.stderr, /use --upper DIR/)
})

await t.test('a reset of some paths: only they return to the firmware state', async (t) => {
  const d = device(t)
  const before = snapshot(d.upper)
  const result = reset(d, '--yes', '/etc/config', '/root/')
  t.equal(result.status, 0, result.stderr)
  const after = snapshot(d.upper)
  t.notOk(after.has('/etc/config') || after.has('/root'), 'the named paths are gone from the upper')
  for (const path of ['/etc/banner', '/etc/olddir', '/etc/dropbear/key', '/.hidden-at-top', '/etc/user-added']) t.same(after.get(path), before.get(path), `${path} is untouched`)
  const view = mergedView(t, d)
  t.equal(view.get('/etc/config/network')?.content, snapshot(d.lower).get('/etc/config/network')?.content, 'the firmware\'s file shows again')
  t.equal(reset(d, '--yes', 'relative').status, 2, 'paths are absolute')
})

await t.test('a power cut at any point of a reset: the next run finishes it with the same result', async (t) => {
  const keep = ['/etc/by-config', '/etc/dropbear', '/etc/glob-*.conf', '/etc/user-added']
  const reference = device(t)
  t.equal(reset(reference, '--yes').status, 0)
  const expected = snapshot(reference.upper)
  const marker = (d: Device): void => {
    fs.mkdirSync(`${d.dir}/flash/.ovroot`, { recursive: true })
    fs.writeFileSync(`${d.dir}/flash/.ovroot/pending`, JSON.stringify({ kind: 'reset', requested: 'x', keep }))
  }
  const states: Record<string, (d: Device) => void> = {
    'committed, nothing removed yet': marker,
    'committed, half the removals done': (d) => {
      marker(d)
      fs.rmSync(`${d.upper}/.hidden-at-top`)
      fs.rmSync(`${d.upper}/etc/banner`)
      fs.rmSync(`${d.upper}/root/.ssh/authorized_keys`)
    },
    'all done but the marker': (d) => {
      execFileSync('rm', ['-rf', d.upper])
      execFileSync('cp', ['-a', reference.upper, d.upper])
      marker(d)
    },
  }
  for (const [name, cut] of Object.entries(states)) {
    const d = device(t)
    cut(d)
    // The keep list of the command line equals the committed one, so the run finishes the committed change.
    const result = reset(d, '--yes')
    t.equal(result.status, 0, `${name}: ${result.stderr}`)
    t.same(snapshot(d.upper), expected, `${name}: the same result as an uninterrupted reset`)
    t.notOk(fs.existsSync(`${d.dir}/flash/.ovroot/pending`), `${name}: nothing left pending`)
  }
})

await t.test('a full flash: the reset is scheduled with the reserve and runs without free space', async (t) => {
  const d = device(t)
  const flash = `${d.dir}/small`
  fs.mkdirSync(flash)
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', flash])
  execFileSync('cp', ['-a', d.upper, `${flash}/upper`])
  fs.mkdirSync(`${flash}/.ovroot`)
  fs.writeFileSync(`${flash}/.ovroot/reserve`, Buffer.alloc(64 * 1024, 1))
  for (let i = 0; ; i++) {
    try {
      fs.writeFileSync(`${flash}/upper/root/fill${i}`, Buffer.alloc(4096, 7))
    } catch {
      break
    }
  }
  t.equal(fs.statfsSync(flash).bavail, 0, 'the flash is full')
  const result = ovroot(['reset', '--config', d.config, '--upper', `${flash}/upper`, '--yes'])
  t.equal(result.status, 0, result.stderr)
  t.notOk(fs.existsSync(`${flash}/upper/root`), 'the filling files are gone')
  t.ok(fs.existsSync(`${flash}/upper/etc/dropbear/key`), 'kept files stay')
  t.notOk(fs.existsSync(`${flash}/.ovroot/reserve`), 'the reserve paid for the marker')
})

await t.test('keep-list syntax', async (t) => {
  t.same(parseKeepList('# comment\n/etc/a\n  /etc/b/  # trailing\n\nrelative/ignored\n'), ['/etc/a', '/etc/b/'])
  const glob = (pattern: string, path: string): boolean => globToRegExp(pattern).test(path)
  t.ok(glob('/etc/*.conf', '/etc/x.conf'))
  t.notOk(glob('/etc/*.conf', '/etc/sub/x.conf'), '* stays within a component')
  t.ok(glob('/etc/**.conf', '/etc/sub/x.conf'), '** crosses components')
  t.ok(glob('/etc/[ab]?', '/etc/a1'))
  t.notOk(glob('/etc/[!ab]?', '/etc/a1'))
  t.ok(glob('/etc/a.b', '/etc/a.b'))
  t.notOk(glob('/etc/a.b', '/etc/aXb'), 'dots are literal')
})
