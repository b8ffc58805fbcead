/**
 * Factory reset of real, kernel-written uppers: what goes, what stays and with
 * which metadata, and recovery from every state a power cut can leave.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import { getXattr, setXattr } from '../src/sys/libc.js'
import { globToRegExp, parseKeepList } from '../src/reset/keep.js'
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
function device(t: Tap.Test): Device {
  const s = scratch()
  t.teardown(s.cleanup)
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
function mergedView(t: Tap.Test, d: Device): ReturnType<typeof snapshot> {
  fs.mkdirSync(d.work, { recursive: true })
  mountOverlay(d.merged, [d.lower], d.upper, d.work, [])
  const view = snapshot(d.merged)
  unmount(d.merged)
  t.ok(view.size > 0)
  return view
}

t.test('the keep list: config, OpenWrt list files as edited by the user, --keep; globs', async (t) => {
  const d = device(t)
  const plan = reset(d, '--dry-run', '--keep', '/root/.ssh')
  t.equal(plan.status, 0, plan.stderr)
  t.equal(plan.stdout, [
    'remove /.hidden-at-top',
    'remove /etc/banner',
    'remove /etc/config',
    'remove /etc/olddir',
    'remove /etc/sysupgrade.conf',
    'keep /etc/by-config',
    'keep /etc/dropbear',
    'keep /etc/glob-a.conf',
    'keep /etc/glob-b.conf',
    'keep /etc/user-added',
    'keep /root/.ssh',
    '',
  ].join('\n'))
  t.ok(fs.existsSync(`${d.upper}/.hidden-at-top`), '--dry-run changes nothing')
})

t.test('reset of an unmounted upper: factory state plus the kept paths, metadata intact', async (t) => {
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

t.test('refusals', async (t) => {
  const d = device(t)
  const noTerminal = reset(d)
  t.equal(noTerminal.status, 7, 'without a terminal, --yes is required')
  t.match(noTerminal.stderr, /pass --yes to confirm/)
  fs.mkdirSync(d.work, { recursive: true })
  mountOverlay(d.merged, [d.lower], d.upper, d.work, [])
  const mounted = reset(d, '--yes')
  unmount(d.merged)
  t.equal(mounted.status, 4)
  t.match(mounted.stderr, /is the upper of a mounted overlay/)
  t.ok(fs.existsSync(`${d.upper}/.hidden-at-top`), 'a mounted upper is never touched')
  const live = ovroot(['reset', '--config', d.config, '--yes'])
  t.equal(live.status, 4, 'no boot record: not a device booted by ovroot')
  t.match(live.stderr, /use --upper DIR/)
})

t.test('a power cut at any point of a reset: the next run finishes it with the same result', async (t) => {
  const reference = device(t)
  t.equal(reset(reference, '--yes').status, 0)
  const expected = snapshot(reference.upper)
  const marker = (d: Device, phase: string): void => {
    fs.mkdirSync(`${d.dir}/flash/.ovroot`, { recursive: true })
    fs.writeFileSync(`${d.dir}/flash/.ovroot/reset`, JSON.stringify({ phase, keep: ['/etc/by-config', '/etc/dropbear', '/etc/glob-*.conf', '/etc/user-added'], requested: 'x' }))
  }
  const staging = (d: Device): string => `${d.dir}/flash/.ovroot/reset-new`
  const old = (d: Device): string => `${d.dir}/flash/.ovroot/reset-old`
  const states: Record<string, (d: Device) => void> = {
    'scheduled, staging half copied': (d) => {
      marker(d, 'scheduled')
      fs.mkdirSync(`${staging(d)}/etc`, { recursive: true })
      fs.writeFileSync(`${staging(d)}/etc/partial`, 'half')
    },
    'staged, nothing swapped yet': (d) => {
      marker(d, 'staged')
      execFileSync('cp', ['-a', reference.upper, staging(d)])
    },
    'staged, old upper moved aside': (d) => {
      marker(d, 'staged')
      execFileSync('cp', ['-a', reference.upper, staging(d)])
      fs.renameSync(d.upper, old(d))
    },
    'staged, swapped, old upper half deleted': (d) => {
      marker(d, 'staged')
      fs.renameSync(d.upper, old(d))
      execFileSync('cp', ['-a', reference.upper, d.upper])
      fs.rmSync(`${old(d)}/etc`, { recursive: true })
    },
  }
  for (const [name, cut] of Object.entries(states)) {
    const d = device(t)
    cut(d)
    const result = reset(d, '--yes')
    t.equal(result.status, 0, `${name}: ${result.stderr}`)
    t.same(snapshot(d.upper), expected, `${name}: the same result as an uninterrupted reset`)
    t.notOk(fs.existsSync(staging(d)) || fs.existsSync(old(d)) || fs.existsSync(`${d.dir}/flash/.ovroot/reset`), `${name}: nothing left behind`)
  }
})

t.test('keep-list syntax', async (t) => {
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
