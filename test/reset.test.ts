/**
 * Factory reset of real, kernel-written uppers: what goes, what stays and with
 * which metadata, and recovery from every state a power cut can leave.
 */
import t, { type Test } from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { getXattr, InodeFlag, inodeFlags, listXattrs, removeXattr, setXattr } from '../src/sys/libc.js'
import { globToRegExp } from '../src/glob.js'
import { parseKeepList } from '../src/reset/keep.js'
import {
  holdFirstOpen,
  mountOverlay,
  OVROOT,
  ovroot,
  scratch,
  snapshot,
  unmount,
  upperSnapshot,
} from './helpers/overlay.js'
import { move, writeTree } from './helpers/mutate.js'
import { applyPending } from '../src/pending/apply.js'
import { commitPending } from '../src/pending/marker.js'
import { OverlayXattrs } from '../src/overlay/xattrs.js'

interface Device {
  dir: string
  lower: string
  upper: string
  work: string
  merged: string
  config: string
}

/** A device with this firmware and an empty upper, its overlay mounted for the user's changes. */
function mountedDevice(t: Test, firmware: Parameters<typeof writeTree>[1], options: string[]): Device {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const d: Device = {
    dir: s.dir,
    lower: `${s.dir}/rom`,
    upper: `${s.dir}/flash/upper`,
    work: `${s.dir}/flash/work`,
    merged: `${s.dir}/merged`,
    config: `${s.dir}/ovroot.conf`,
  }
  writeTree(d.lower, firmware)
  fs.mkdirSync(d.upper, { recursive: true })
  fs.mkdirSync(d.work, { recursive: true })
  mountOverlay(d.merged, [d.lower], d.upper, d.work, options)
  return d
}

/** A device whose upper the kernel wrote: user files, hidden files, keep-list material. */
function device(t: Test): Device {
  const d = mountedDevice(
    t,
    {
      '/etc/config/network': 'lan\n',
      '/etc/sysupgrade.conf': '# kept across resets\n/etc/dropbear/\n/etc/glob-*.conf\n',
      '/etc/banner': 'hello\n',
      '/etc/olddir/file': 'old\n',
    },
    [],
  )
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
  fs.writeFileSync(
    d.config,
    `[overlay]\nlower = ${d.lower}\n[reset]\nkeep = /etc/by-config\nkeep_lists = /etc/sysupgrade.conf /lib/upgrade/keep.d\n`,
  )
  return d
}

const reset = (d: Device, ...args: string[]) => ovroot(['reset', '--config', d.config, '--upper', d.upper, ...args])

/** The merged view after a remount. */
function mergedView(t: Test, d: Device, options: string[] = []): ReturnType<typeof snapshot> {
  fs.mkdirSync(d.work, { recursive: true })
  mountOverlay(d.merged, [d.lower], d.upper, d.work, options)
  const view = snapshot(d.merged)
  unmount(d.merged)
  t.ok(view.size > 0)
  return view
}

await t.test('the keep list: config, OpenWrt list files as edited by the user, --keep; globs', async (t) => {
  const d = device(t)
  const plan = reset(d, '--dry-run', '--keep', '/root/.ssh')
  t.equal(plan.status, 0, plan.stderr)
  t.equal(
    plan.stdout,
    [
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
    ].join('\n'),
    'every change of ovroot diff, marked with what the reset does to it',
  )
  const json = reset(d, '--dry-run', '--json')
    .stdout.trim()
    .split('\n')
    .map((line) => JSON.parse(line) as { reset: string; path: string; change: string })
  t.same(
    json.filter((record) => record.reset === 'discard').map((record) => record.path),
    [
      '/.hidden-at-top',
      '/etc/banner',
      '/etc/config/network',
      '/etc/olddir',
      '/etc/sysupgrade.conf',
      '/root',
      '/root/.ssh',
      '/root/.ssh/authorized_keys',
    ],
    '--json: diff records with a reset field',
  )
  t.match(
    json.find((record) => record.path === '/etc/banner'),
    { change: 'deleted', reset: 'discard' },
  )
  t.ok(fs.existsSync(`${d.upper}/.hidden-at-top`), '--dry-run changes nothing')
})

await t.test('reset of an unmounted upper: factory state plus the kept paths, metadata intact', async (t) => {
  const d = device(t)
  const result = reset(d, '--yes', '--keep', '/root/.ssh')
  t.equal(result.status, 0, result.stderr)
  t.notOk(fs.existsSync(d.work), 'the work directory, which may index old inodes, is cleared')
  const view = mergedView(t, d)
  const factory = snapshot(d.lower)
  const kept = [
    '/etc/by-config',
    '/etc/dropbear',
    '/etc/dropbear/key',
    '/etc/glob-a.conf',
    '/etc/glob-b.conf',
    '/etc/user-added',
    '/root',
    '/root/.ssh',
    '/root/.ssh/authorized_keys',
  ]
  t.same([...view.keys()].filter((path) => !factory.has(path)).sort(), kept.sort(), 'only kept paths are added')
  for (const [path, entry] of factory) t.same(view.get(path), entry, `${path} is back to the factory state`)
  const key = fs.lstatSync(`${d.upper}/etc/dropbear/key`)
  t.equal(key.mode & 0o777, 0o600, 'mode kept')
  t.equal(key.uid, 22, 'owner kept')
  t.equal(getXattr(`${d.upper}/etc/dropbear/key`, 'user.origin')?.toString(), 'device', 'xattrs kept')
  t.notOk(fs.existsSync(`${d.dir}/flash/.ovroot/reset`), 'no reset is left pending')
})

await t.test(
  'a name that is not UTF-8: a reset removes it, or keeps it when a keep glob matches, and leaves no marker',
  async (t) => {
    const latin1 = (root: string, tail = ''): Buffer =>
      Buffer.concat([Buffer.from(`${root}/etc/caf`), Buffer.from([0xe9]), Buffer.from(tail)])
    for (const keep of [[], ['--keep', '/etc/caf*']]) {
      const d = device(t)
      fs.writeFileSync(latin1(d.upper), 'latin-1 name\n')
      fs.mkdirSync(latin1(d.upper, '.d'))
      fs.writeFileSync(Buffer.concat([latin1(d.upper, '.d'), Buffer.from('/child')]), 'child\n')
      const result = reset(d, '--yes', ...keep)
      const label = keep.length > 0 ? 'kept' : 'removed'
      t.equal(result.status, 0, `${label}: ${result.stderr}`)
      t.equal(fs.existsSync(latin1(d.upper)), keep.length > 0, `${label}: the file`)
      t.equal(fs.existsSync(latin1(d.upper, '.d')), keep.length > 0, `${label}: the directory`)
      if (keep.length > 0) t.match(result.stdout, /kept .*\/etc\/caf\\xe9/, 'named in the escaped form')
      t.notOk(fs.existsSync(`${d.dir}/flash/.ovroot/pending`), `${label}: no marker is left behind`)
      t.notOk(fs.existsSync(`${d.upper}/etc/config/network`), `${label}: the rest of the reset happened`)
    }
  },
)

await t.test(
  'refusals: no confirmation, a live layer (upper, lower, or a directory holding one), no boot record',
  async (t) => {
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
  },
)

await t.test('a reset of some paths: only they return to the firmware state', async (t) => {
  const d = device(t)
  const before = snapshot(d.upper)
  const result = reset(d, '--yes', '/etc/config', '/root/')
  t.equal(result.status, 0, result.stderr)
  const after = snapshot(d.upper)
  t.notOk(after.has('/etc/config') || after.has('/root'), 'the named paths are gone from the upper')
  for (const path of ['/etc/banner', '/etc/olddir', '/etc/dropbear/key', '/.hidden-at-top', '/etc/user-added'])
    t.same(after.get(path), before.get(path), `${path} is untouched`)
  const view = mergedView(t, d)
  t.equal(
    view.get('/etc/config/network')?.content,
    snapshot(d.lower).get('/etc/config/network')?.content,
    "the firmware's file shows again",
  )
  t.equal(reset(d, '--yes', 'relative').status, 2, 'paths are absolute')
})

await t.test(
  'a power cut at any point of a reset: the next run finishes the committed reset, whatever the keep lists say now',
  async (t) => {
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
        // The user's edit of the keep file is gone: read again now, the list would be the firmware's, without /etc/user-added.
        fs.rmSync(`${d.upper}/etc/sysupgrade.conf`)
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
      // After the commit the keep lists say otherwise (the config edited, the list file rewritten,
      // another --keep): only the committed list may decide, so the result is the reference's.
      fs.writeFileSync(
        d.config,
        fs.readFileSync(d.config, 'utf8').replace('keep = /etc/by-config', 'keep = /.hidden-at-top'),
      )
      if (fs.existsSync(`${d.upper}/etc/sysupgrade.conf`))
        fs.writeFileSync(`${d.upper}/etc/sysupgrade.conf`, '/etc/banner\n')
      const result = reset(d, '--yes', '--keep', '/root')
      t.equal(result.status, 0, `${name}: ${result.stderr}`)
      t.match(
        result.stderr,
        /finishing the interrupted factory reset/,
        `${name}: the run says it finishes the committed reset`,
      )
      t.same(
        snapshot(d.upper),
        expected,
        `${name}: the same result as an uninterrupted reset with the committed keep list`,
      )
      t.notOk(fs.existsSync(`${d.dir}/flash/.ovroot/pending`), `${name}: nothing left pending`)
    }
  },
)

/** The xattr namespaces overlayfs writes its own xattrs in, with the options that make it write them. */
const NAMESPACES = {
  'trusted.overlay., redirect_dir=on': { prefix: 'trusted.overlay.', options: ['redirect_dir=on'] },
  // userxattr refuses redirect_dir=on: a renamed directory is copied (mv's EXDEV fallback), never redirected.
  'user.overlay. (userxattr)': { prefix: 'user.overlay.', options: ['userxattr'] },
}
type Namespace = (typeof NAMESPACES)[keyof typeof NAMESPACES]

/** Kept files below directories the kernel marked: names with odd bytes, binary xattrs, a hardlink. */
const KEPT_BELOW_MARKED = ['/etc/config/-odd\tname\\\n', '/etc/config/kept', '/srv/www/custom.html']
/** The keep list naming them: a glob for the odd name, whose bytes no config line can hold. */
const MARKED_KEEP_LIST = ['/etc/config/kept', '/etc/config/-odd*', '/srv/www/custom.html']

/**
 * A device whose kept paths sit below overlay-marked directories, as a user
 * makes them: /etc/config emptied and made again (opaque), /www moved to
 * /srv/www (a redirect, where the namespace allows one), /usr/share/doc
 * replaced by a directory of the user's own (opaque, removed whole by a reset).
 */
function markedDevice(t: Test, namespace: Namespace): Device {
  const d = mountedDevice(
    t,
    {
      '/etc/config/network': 'lan\n',
      '/etc/config/system': 'hostname\n',
      '/www/index.html': '<html></html>\n',
      '/www/css/site.css': 'body {}\n',
      '/usr/share/doc/readme': 'docs\n',
    },
    namespace.options,
  )
  const m = d.merged
  fs.rmSync(`${m}/etc/config`, { recursive: true })
  fs.mkdirSync(`${m}/etc/config`)
  fs.writeFileSync(`${m}/etc/config/kept`, 'x\n', { mode: 0o600 })
  setXattr(`${m}/etc/config/kept`, 'user.binary', Buffer.from('a\0b\nc'))
  fs.writeFileSync(`${m}/etc/config/-odd\tname\\\n`, 'odd\n')
  fs.writeFileSync(`${m}/etc/config/scratch`, 'not kept\n')
  fs.mkdirSync(`${m}/srv`)
  move(`${m}/www`, `${m}/srv/www`)
  fs.writeFileSync(`${m}/srv/www/custom.html`, 'mine\n')
  fs.writeFileSync(`${m}/srv/www/cache`, 'not kept\n')
  fs.rmSync(`${m}/usr/share/doc`, { recursive: true })
  fs.mkdirSync(`${m}/usr/share/doc/sub`, { recursive: true })
  for (const name of ['a', 'b', 'c', 'd', 'sub/e', 'sub/f']) fs.writeFileSync(`${m}/usr/share/doc/${name}`, `${name}\n`)
  // A second name of a kept file in a removed directory: the kept name keeps the inode.
  fs.linkSync(`${m}/etc/config/kept`, `${m}/usr/share/doc/kept-link`)
  unmount(d.merged)
  fs.writeFileSync(
    d.config,
    `[overlay]\nlower = ${d.lower}\noptions = ${namespace.options.join(' ')}\n[reset]\nkeep = ${MARKED_KEEP_LIST.join(' ')}\n`,
  )
  // The fixture holds what it claims, or the tests below prove nothing.
  t.ok(getXattr(`${d.upper}/etc/config`, `${namespace.prefix}opaque`), 'fixture: /etc/config is opaque')
  t.ok(getXattr(`${d.upper}/usr/share/doc`, `${namespace.prefix}opaque`), 'fixture: /usr/share/doc is opaque')
  if (namespace.prefix === 'trusted.overlay.')
    t.ok(getXattr(`${d.upper}/srv/www`, 'trusted.overlay.redirect'), 'fixture: /srv/www is redirected')
  t.equal(fs.lstatSync(`${d.upper}/etc/config/kept`).nlink, 2, 'fixture: the kept file has a second name')
  return d
}

for (const [label, namespace] of Object.entries(NAMESPACES)) {
  await t.test(
    `kept paths below opaque and redirected directories (${label}): the firmware shows through again`,
    async (t) => {
      const d = markedDevice(t, namespace)
      const before = mergedView(t, d, namespace.options)
      const result = reset(d, '--yes')
      t.equal(result.status, 0, result.stderr)
      for (const dir of ['/etc/config', '/srv/www'])
        t.same(
          listXattrs(d.upper + dir).filter((name) => name.startsWith(namespace.prefix)),
          [],
          `${dir}: no overlay xattr left in the upper`,
        )
      // The merged view is what the user sees: an opaque /etc/config would hide the firmware's
      // network and system files; a redirected /srv/www would show /www's files a second time.
      const view = mergedView(t, d, namespace.options)
      const factory = snapshot(d.lower)
      t.same(
        [...view.keys()].filter((path) => !factory.has(path)).sort(),
        ['/srv', '/srv/www', ...KEPT_BELOW_MARKED].sort(),
        'only the kept paths are added',
      )
      for (const [path, entry] of factory) t.same(view.get(path), entry, `${path} is the firmware's again`)
      for (const path of KEPT_BELOW_MARKED)
        t.same(view.get(path), before.get(path), `${JSON.stringify(path)} is kept: bytes, mode, owner, xattrs`)
    },
  )
}

/** An upper's every field, but the mtimes of directories: each removal moves its parent's. */
function withoutDirectoryTimes(entries: Map<string, string>): Map<string, string> {
  return new Map([...entries].map(([path, entry]) => [path, entry.replace(/^(dir \S+ \S+ \S+ mtime) -?\d+ /, '$1 - ')]))
}

await t.test(
  'a power cut inside a directory being pruned: the next run finishes to the same upper, kept files intact',
  async (t) => {
    const d = markedDevice(t, NAMESPACES['trusted.overlay., redirect_dir=on'])
    /** A copy of the device's upper (same filesystem: same inodes' handles in origin xattrs, same times). */
    const copy = (name: string): Device => {
      const flash = `${d.dir}/${name}`
      fs.mkdirSync(flash)
      execFileSync('cp', ['-a', d.upper, `${flash}/upper`])
      return { ...d, upper: `${flash}/upper`, work: `${flash}/work` }
    }
    const keptBefore = upperSnapshot(d.upper)
    const reference = copy('reference')
    t.equal(reset(reference, '--yes').status, 0)
    const expected = upperSnapshot(reference.upper)
    const removedByReset = [...keptBefore.keys()].filter((path) => !expected.has(path))
    const doc = (c: Device): string => `${c.upper}/usr/share/doc`
    /** Every removal done (parents before children); the overlay xattrs not yet stripped. */
    const removeAll = (c: Device): void => {
      for (const path of removedByReset) fs.rmSync(c.upper + path, { recursive: true, force: true })
    }
    // Each cut is what removeTree (children first, then the directory) leaves when the power goes mid-way.
    const states: Record<string, (c: Device) => void> = {
      'a directory half emptied, one below it too': (c) => {
        for (const name of ['a', 'b', 'sub/e', 'kept-link']) fs.rmSync(`${doc(c)}/${name}`)
        fs.rmSync(`${c.upper}/etc/config/scratch`)
        t.same(fs.readdirSync(doc(c)).sort(), ['c', 'd', 'sub'], 'cut: /usr/share/doc half removed')
        t.same(fs.readdirSync(`${doc(c)}/sub`), ['f'], 'cut: /usr/share/doc/sub half removed')
      },
      'a directory emptied, its own removal not done (still opaque)': (c) => {
        for (const name of fs.readdirSync(doc(c))) fs.rmSync(`${doc(c)}/${name}`, { recursive: true })
        t.same(fs.readdirSync(doc(c)), [], 'cut: /usr/share/doc is empty')
        t.ok(getXattr(doc(c), 'trusted.overlay.opaque'), 'cut: and still opaque')
      },
      "every removal done, the kept paths' ancestors still opaque and redirected": (c) => {
        removeAll(c)
        t.ok(
          getXattr(`${c.upper}/etc/config`, 'trusted.overlay.opaque') &&
            getXattr(`${c.upper}/srv/www`, 'trusted.overlay.redirect'),
          'cut: no xattr stripped yet',
        )
      },
      "every removal done, one ancestor's xattrs stripped, not the other's": (c) => {
        removeAll(c)
        for (const name of listXattrs(`${c.upper}/etc/config`))
          if (name.startsWith('trusted.overlay.')) removeXattr(`${c.upper}/etc/config`, name)
        t.ok(getXattr(`${c.upper}/srv/www`, 'trusted.overlay.redirect'), 'cut: /srv/www still redirected')
      },
    }
    for (const [name, cut] of Object.entries(states)) {
      const c = copy(name.replace(/\W+/g, '-'))
      cut(c)
      fs.mkdirSync(`${c.upper}/../.ovroot`)
      fs.writeFileSync(
        `${c.upper}/../.ovroot/pending`,
        JSON.stringify({ kind: 'reset', requested: 'x', keep: MARKED_KEEP_LIST }),
      )
      const result = reset(c, '--yes')
      t.equal(result.status, 0, `${name}: ${result.stderr}`)
      const after = upperSnapshot(c.upper)
      t.same(
        withoutDirectoryTimes(after),
        withoutDirectoryTimes(expected),
        `${name}: the upper an uninterrupted reset leaves, every xattr included`,
      )
      for (const path of KEPT_BELOW_MARKED)
        t.equal(
          after.get(path),
          keptBefore.get(path),
          `${name}: ${JSON.stringify(path)} byte for byte, with its mtime and xattrs`,
        )
      t.notOk(fs.existsSync(`${c.upper}/../.ovroot/pending`), `${name}: nothing left pending`)
    }
  },
)

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
  t.ok(glob('/root/**', '/root/a\nb/f'), '** crosses a name holding a newline')
  t.same(
    parseKeepList('/root/notes#1\n/etc/x # why\n#/etc/y\n'),
    ['/root/notes#1', '/etc/x'],
    'a # inside a name is part of it, as for sysupgrade',
  )
})

await t.test('odd keep patterns: a bad glob is one line and changes nothing; odd names are kept', async (t) => {
  const d = mountedDevice(t, { '/etc/banner': 'hello\n' }, [])
  fs.mkdirSync(`${d.merged}/root/a\nb`, { recursive: true })
  fs.writeFileSync(`${d.merged}/root/a\nb/f`, 'newline\n')
  fs.mkdirSync(`${d.merged}/etc/x`)
  fs.writeFileSync(`${d.merged}/etc/x/k`, 'key\n')
  unmount(d.merged)
  fs.writeFileSync(d.config, `[overlay]\nlower = ${d.lower}\n[reset]\nkeep_lists = ${d.dir}/none\n`)
  const before = upperSnapshot(d.upper)
  const bad = reset(d, '--yes', '--keep', '/etc/[z-a]')
  t.equal(bad.status, 2, 'a glob no regular expression can hold is a usage error')
  t.match(bad.stderr, /^ovroot: .*\/etc\/\[z-a\].*\n$/)
  t.equal(bad.stderr.split('\n').length, 2, 'one line')
  fs.writeFileSync(`${d.config}2`, `[overlay]\nlower = ${d.lower}\n[reset]\nkeep = /etc/[z-a]\n`)
  const badConfig = ovroot(['reset', '--config', `${d.config}2`, '--upper', d.upper, '--yes'])
  t.equal(badConfig.status, 3, 'in the configuration: a configuration error')
  t.match(badConfig.stderr, /^ovroot: .*\[reset\] keep = \/etc\/\[z-a\]: expected /)
  t.same(upperSnapshot(d.upper), before, 'nothing changed')
  const done = reset(d, '--yes', '--keep', '/root/**', '--keep', '//etc//x/')
  t.equal(done.status, 0, done.stderr)
  t.equal(fs.readFileSync(`${d.upper}/root/a\nb/f`, 'utf8'), 'newline\n', 'kept by /root/**')
  t.equal(fs.readFileSync(`${d.upper}/etc/x/k`, 'utf8'), 'key\n', 'kept by //etc//x/')
})

await t.test('an immutable or append-only directory above a kept path never wedges a reset', async (t) => {
  const d = mountedDevice(t, { '/etc/banner': 'hello\n', '/var/log/x': 'x\n' }, [])
  fs.mkdirSync(`${d.merged}/etc/x`)
  fs.writeFileSync(`${d.merged}/etc/x/k`, 'key\n')
  fs.mkdirSync(`${d.merged}/etc/y`)
  fs.writeFileSync(`${d.merged}/etc/y/f`, 'y\n')
  fs.writeFileSync(`${d.merged}/etc/z`, 'z\n')
  fs.symlinkSync('/nonexistent', `${d.merged}/etc/a-dangling`)
  fs.writeFileSync(`${d.dir}/outside`, 'outside\n')
  fs.symlinkSync(`${d.dir}/outside`, `${d.merged}/etc/to-outside`)
  fs.rmSync(`${d.merged}/etc/banner`)
  fs.writeFileSync(`${d.merged}/var/log/kept`, 'log\n')
  unmount(d.merged)
  setXattr(`${d.upper}/etc`, 'trusted.overlay.opaque', Buffer.from('y'))
  setXattr(`${d.upper}/var/log`, 'trusted.overlay.opaque', Buffer.from('y'))
  execFileSync('chattr', ['+i', `${d.upper}/etc`])
  execFileSync('chattr', ['+a', `${d.upper}/var/log`])
  execFileSync('chattr', ['+i', `${d.dir}/outside`])
  t.teardown(() => execFileSync('chattr', ['-i', '-a', `${d.upper}/etc`, `${d.upper}/var/log`, `${d.dir}/outside`]))
  fs.writeFileSync(d.config, `[overlay]\nlower = ${d.lower}\n[reset]\nkeep_lists = ${d.dir}/none\n`)
  const result = reset(d, '--yes', '--keep', '/etc/x', '--keep', '/var/log/kept')
  t.equal(result.status, 0, result.stderr)
  t.same(fs.readdirSync(`${d.upper}/etc`), ['x'], 'the rest of /etc went')
  t.equal(fs.readFileSync(`${d.upper}/etc/x/k`, 'utf8'), 'key\n')
  t.same(listXattrs(`${d.upper}/etc`), [], 'the opaque marker went: the firmware shows through')
  t.same(fs.readdirSync(`${d.upper}/var/log`), ['kept'])
  t.same(listXattrs(`${d.upper}/var/log`), [], 'an append-only directory lost its opaque marker too')
  t.notOk(fs.existsSync(`${d.dir}/flash/.ovroot/pending`), 'the reset finished')
  t.match(
    execFileSync('lsattr', [`${d.dir}/outside`], { encoding: 'utf8' }),
    /^\S*i/,
    'a symlink target keeps its flags',
  )
})

await t.test('a kept name of an immutable file whose other name a reset removes stays immutable', async (t) => {
  const d = mountedDevice(t, { '/etc/banner': 'hello\n' }, [])
  fs.writeFileSync(`${d.merged}/etc/kept`, 'linked\n')
  fs.mkdirSync(`${d.merged}/root`)
  fs.linkSync(`${d.merged}/etc/kept`, `${d.merged}/root/other`)
  unmount(d.merged)
  execFileSync('chattr', ['+i', `${d.upper}/etc/kept`])
  t.teardown(() => execFileSync('chattr', ['-i', `${d.upper}/etc/kept`]))
  fs.writeFileSync(d.config, `[overlay]\nlower = ${d.lower}\n[reset]\nkeep_lists = ${d.dir}/none\n`)
  const result = reset(d, '--yes', '--keep', '/etc/kept')
  t.equal(result.status, 0, result.stderr)
  t.notOk(fs.existsSync(`${d.upper}/root`), 'the other name went')
  t.equal(fs.readFileSync(`${d.upper}/etc/kept`, 'utf8'), 'linked\n', 'the kept name stays')
  t.equal(inodeFlags(`${d.upper}/etc/kept`), InodeFlag.immutable, '... immutable, as the user left it')
})

await t.test(
  'a power cut while a reset removes the other name of an immutable kept file: the next run leaves it immutable',
  async (t) => {
    let landed = 0
    // The removal of /root/other is tried once, or twice (the first meeting EPERM): a cut at each try, on a fresh
    // device; strace kills the reset at that very call, a power cut that lands there every time.
    for (const attempt of [1, 2]) {
      const d = mountedDevice(t, { '/etc/banner': 'hello\n' }, [])
      fs.writeFileSync(`${d.merged}/etc/kept`, 'linked\n')
      fs.mkdirSync(`${d.merged}/root`)
      fs.linkSync(`${d.merged}/etc/kept`, `${d.merged}/root/other`)
      unmount(d.merged)
      execFileSync('chattr', ['+i', `${d.upper}/etc/kept`])
      t.teardown(() => spawnSync('chattr', ['-i', `${d.upper}/etc/kept`]))
      fs.writeFileSync(d.config, `[overlay]\nlower = ${d.lower}\n[reset]\nkeep_lists = ${d.dir}/none\n`)
      const cut = spawnSync('strace', [
        ...['-f', '-qq', '-o', '/dev/null', '-P', `${d.upper}/root/other`],
        ...['-e', 'trace=unlink,unlinkat', '-e', `inject=unlink,unlinkat:signal=KILL:when=${attempt}`],
        ...['env', '-u', 'NODE_OPTIONS', process.execPath, OVROOT, 'reset', '--config', d.config],
        ...['--upper', d.upper, '--yes', '--keep', '/etc/kept'],
      ])
      // Only a cut while the inode's flags are off for the removal is the case.
      if (cut.signal !== 'SIGKILL' || inodeFlags(`${d.upper}/etc/kept`) !== 0) continue
      landed++
      const result = reset(d, '--yes')
      t.equal(result.status, 0, result.stderr)
      t.notOk(fs.existsSync(`${d.upper}/root`), `cut at try ${attempt}: the other name went`)
      t.equal(fs.readFileSync(`${d.upper}/etc/kept`, 'utf8'), 'linked\n', `cut at try ${attempt}: the kept name stays`)
      t.equal(inodeFlags(`${d.upper}/etc/kept`), InodeFlag.immutable, `cut at try ${attempt}: immutable again`)
    }
    t.equal(landed, 1, 'a cut landed while the flags were off')
  },
)

await t.test(
  'reset --dry-run: an entry removed while compared is named in one line and left out; the rest is listed, exit 6',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const [lower, upper, config] = [`${s.dir}/rom`, `${s.dir}/flash/upper`, `${s.dir}/ovroot.conf`]
    writeTree(lower, { '/etc/gone': 'old\n', '/etc/kept': 'old\n' })
    writeTree(upper, { '/etc/gone': 'new\n', '/etc/kept': 'new\n' })
    fs.writeFileSync(config, `[overlay]\nlower = ${lower}\n`)
    // As diff's own test: with an xattr on both, the comparison reads the upper's after the lower's open, which
    // waits while the upper's copy goes.
    for (const root of [lower, upper]) setXattr(`${root}/etc/gone`, 'user.tag', Buffer.from('a'))
    const held = await holdFirstOpen(`${lower}/etc/gone`, 'remove', `${upper}/etc/gone`)
    t.teardown(() => held.kill())
    const preview = ovroot(['reset', '--config', config, '--upper', upper, '--dry-run'])
    t.equal(await held.done, 0, 'removed while the preview compared it')
    t.equal(preview.status, 6, 'a status of its own')
    t.match(
      preview.stderr,
      /^ovroot: \/etc\/gone: left out of the preview, it changed while reset --dry-run read it \(.*no such file or directory\)\n$/,
      'one line naming it',
    )
    t.equal(preview.stdout, 'discard M /etc/kept\n', 'the rest is listed')
  },
)

await t.test(
  'a reset on a flash full to the last byte, of a flagged file whose other name it removes: applied, the kept name flagged',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const root = `${s.dir}/flash`
    fs.mkdirSync(root)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', root])
    writeTree(`${root}/upper`, { '/etc/kept': 'linked\n' })
    fs.mkdirSync(`${root}/upper/root`)
    fs.linkSync(`${root}/upper/etc/kept`, `${root}/upper/root/other`)
    execFileSync('chattr', ['+i', `${root}/upper/etc/kept`])
    t.teardown(() => spawnSync('chattr', ['-i', `${root}/upper/etc/kept`]))
    const layout = { root, upperName: 'upper' }
    // Scheduled when the flash was full: the reserve went to the marker (pending/marker.ts commitPending).
    commitPending(layout, { kind: 'reset', requested: 'x', keep: ['/etc/kept'] })
    const filler = fs.openSync(`${root}/filler`, 'w')
    try {
      for (;;) fs.writeSync(filler, Buffer.alloc(4096, 1))
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error
    } finally {
      fs.closeSync(filler)
    }
    await applyPending(layout, undefined, new OverlayXattrs('trusted'))
    t.notOk(fs.existsSync(`${root}/upper/root`), 'the other name went')
    t.equal(fs.readFileSync(`${root}/upper/etc/kept`, 'utf8'), 'linked\n', 'the kept name stays')
    t.equal(inodeFlags(`${root}/upper/etc/kept`), InodeFlag.immutable, '... immutable, as the user left it')
    t.same(fs.readdirSync(`${root}/.ovroot`), [], 'nothing pending, nothing left behind')
  },
)
