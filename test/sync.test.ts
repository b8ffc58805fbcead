/**
 * `ovroot sync` on real overlays with a tmpfs upper: after seeded random
 * changes the flash copy equals the RAM upper and mounts to the same merged
 * view; excludes are honoured; an idle sync writes nothing; every crash state
 * ends old-or-new; the daemon catches a file in a directory created a moment
 * before; a scheduled reset is never undone by a sync.
 */
import t, { type Test } from 'tap'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { OverlayXattrs } from '../src/overlay/xattrs.js'
import { applyPending } from '../src/pending/apply.js'
import { entryOfRead, readStableFile, setModificationTime } from '../src/sys/entries.js'
import { commitPending, type PendingChange } from '../src/pending/marker.js'
import type { FlashLayout } from '../src/state/flash.js'
import { syncOnce } from '../src/sync/transaction.js'
import { copyUpper } from '../src/upper/copy.js'
import { walkUpper } from '../src/upper/walk.js'
import { getXattr, InodeFlag, inodeFlags, setXattr } from '../src/sys/libc.js'
import {
  cleanEnvironment,
  holdFirstOpen,
  mountOverlay,
  OVROOT,
  ovroot,
  scratch,
  snapshot,
  unmount,
  upperSnapshot as fullSnapshot,
  withoutAtime,
  withoutSharedWhiteouts,
} from './helpers/overlay.js'
import {
  random,
  randomLower,
  randomOperation,
  STANDARD_LOWER,
  STANDARD_OPERATIONS,
  writeTree,
} from './helpers/mutate.js'

/** What a sync keeps: mtimes to the microsecond (its quick check), no atimes (reads move them; devices mount noatime). */
const upperSnapshot = (root: string): Map<string, string> =>
  new Map(
    [...withoutAtime(fullSnapshot(root))].map(([path, entry]) => [
      path,
      entry.replace(/ mtime (-?\d+)/, (_, ns: string) => ` mtime ${BigInt(ns) / 1000n}`),
    ]),
  )

interface Device {
  dir: string
  lower: string
  ram: string
  flash: string
  merged: string
  config: string
}

/** A device booted with [sync] enabled: the upper on a tmpfs, the flash holding its copy, a boot record saying so. */
function device(
  t: Test,
  options: { exclude?: string; quiet?: number; maxDelay?: number; lower?: (root: string) => void } = {},
): Device {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const d: Device = {
    dir: s.dir,
    lower: `${s.dir}/lower`,
    ram: `${s.dir}/ram`,
    flash: `${s.dir}/flash`,
    merged: `${s.dir}/merged`,
    config: `${s.dir}/ovroot.conf`,
  }
  if (options.lower) options.lower(d.lower)
  else writeTree(d.lower, STANDARD_LOWER)
  fs.mkdirSync(`${d.ram}/upper`, { recursive: true })
  fs.mkdirSync(`${d.ram}/work`)
  fs.mkdirSync(`${d.flash}/upper`, { recursive: true })
  fs.mkdirSync(`${s.dir}/run`)
  fs.writeFileSync(
    `${s.dir}/run/status.json`,
    JSON.stringify({
      mode: 'flash',
      bootedAt: 'x',
      medium: { driver: 'mtd', description: 'test flash', device: 'mtd0', filesystem: 'jffs2' },
      overlay: { lowers: [d.lower], upper: `${d.ram}/upper`, work: `${d.ram}/work`, options: '' },
      sync: { mirror: `${d.flash}/upper` },
    }),
  )
  fs.writeFileSync(
    d.config,
    `[overlay]\nlower = ${d.lower}\ndir = ${d.flash}\n[boot]\nrun_dir = ${s.dir}/run\n[sync]\nenabled = yes\nquiet = ${options.quiet ?? 30}\nmax_delay = ${options.maxDelay ?? 300}\nexclude = ${options.exclude ?? ''}\n`,
  )
  mountOverlay(d.merged, [d.lower], `${d.ram}/upper`, `${d.ram}/work`, [])
  t.teardown(() => {
    if (fs.readFileSync('/proc/mounts', 'utf8').includes(` ${d.merged} `)) unmount(d.merged)
  })
  return d
}

const sync = (d: Device, ...extra: string[]) => ovroot(['sync', '--config', d.config, ...extra])

/** The flash copy mounted over the lower, as the next boot would show it. */
function mergedFromFlash(d: Device): ReturnType<typeof snapshot> {
  const work = `${d.dir}/work-check-${Math.floor(Math.random() * 1e9)}`
  const view = `${d.dir}/view-check`
  fs.mkdirSync(work)
  mountOverlay(view, [d.lower], `${d.flash}/upper`, work, [])
  try {
    return snapshot(view)
  } finally {
    unmount(view)
  }
}

/**
 * A sync's baseline moved to now, as if its scan had begun after the changes
 * it persisted (it begins 2 s early, to be safe): what follows is then
 * compared by the quick scan, its ctime being the only way to tell. ctime's
 * clock is a jiffy coarse, hence the pause.
 */
async function scanBeganNow(d: Device): Promise<void> {
  const file = `${d.flash}/.ovroot/sync-baseline`
  fs.writeFileSync(
    file,
    JSON.stringify({ ...(JSON.parse(fs.readFileSync(file, 'utf8')) as object), since: Date.now() }),
  )
  await new Promise((resolve) => setTimeout(resolve, 50))
}

await t.test('after every kind of change and seeded random ones, the flash copy equals the RAM upper', async (t) => {
  const d = device(t)
  for (const operation of Object.values(STANDARD_OPERATIONS)) operation(d.merged)
  const first = sync(d)
  t.equal(first.status, 0, first.stderr)
  t.match(first.stdout, /synced \d+ entries/)
  t.same(
    withoutSharedWhiteouts(upperSnapshot(`${d.flash}/upper`)),
    withoutSharedWhiteouts(upperSnapshot(`${d.ram}/upper`)),
    'types, bytes, modes, owners, times, xattrs, whiteouts',
  )
  t.same(mergedFromFlash(d), snapshot(d.merged), 'the flash copy mounts to the merged view the device has')
  const next = random(4242)
  for (let round = 0; round < 3; round++) {
    await scanBeganNow(d)
    for (let i = 0; i < 15; i++) {
      try {
        randomOperation(d.merged, next, round * 100 + i)
      } catch {
        // an operation that does not apply to this tree
      }
    }
    t.equal(sync(d).status, 0)
    t.same(
      withoutSharedWhiteouts(upperSnapshot(`${d.flash}/upper`)),
      withoutSharedWhiteouts(upperSnapshot(`${d.ram}/upper`)),
      `round ${round}: equal again`,
    )
    t.same(mergedFromFlash(d), snapshot(d.merged), `round ${round}: same merged view`)
  }
  const idle = sync(d)
  t.match(idle.stdout, /nothing to sync/, 'an idle device has nothing to sync')
  const status = JSON.parse(ovroot(['status', '--json', '--config', d.config]).stdout) as {
    syncing: { lastSync: string; bytesToday: number; ramUsage: { totalBytes: number } }
  }
  t.ok(status.syncing.lastSync, 'status shows the last sync')
  t.ok(status.syncing.bytesToday > 0, 'and the bytes written today')
})

await t.test('random lowers and change sequences, each synced', async (t) => {
  for (const seed of [5, 6]) {
    const next = random(seed * 7907)
    const d = device(t, { lower: (root) => randomLower(root, next) })
    for (let i = 0; i < 40; i++) {
      try {
        randomOperation(d.merged, next, i)
      } catch {
        // an operation that does not apply to this tree
      }
      if (i % 10 === 9) {
        t.equal(sync(d).status, 0)
        await scanBeganNow(d)
      }
    }
    t.same(
      withoutSharedWhiteouts(upperSnapshot(`${d.flash}/upper`)),
      withoutSharedWhiteouts(upperSnapshot(`${d.ram}/upper`)),
      `seed ${seed}`,
    )
  }
})

await t.test('only what changed is written; an idle sync writes nothing at all', async (t) => {
  const d = device(t)
  fs.writeFileSync(`${d.merged}/etc/big`, Buffer.alloc(1 << 20, 1))
  fs.writeFileSync(`${d.merged}/etc/small`, 'small\n')
  t.equal(sync(d).status, 0)
  const inodeOf = (path: string): number => fs.statSync(`${d.flash}/upper${path}`).ino
  const bigBefore = inodeOf('/etc/big')
  fs.appendFileSync(`${d.merged}/etc/small`, 'more\n')
  const second = sync(d)
  t.match(second.stdout, /synced 1 entry \(0 KiB\), removed 0/, 'one changed file')
  t.equal(inodeOf('/etc/big'), bigBefore, 'the unchanged file was not rewritten')
  const touched = (): string[] =>
    ['.ovroot', 'upper', ...fs.readdirSync(`${d.flash}/upper/etc`).map((name) => `upper/etc/${name}`)].map(
      (path) => `${path}:${fs.lstatSync(`${d.flash}/${path}`).ctimeMs}`,
    )
  const before = touched()
  t.match(sync(d).stdout, /nothing to sync/)
  t.same(touched(), before, 'nothing on the flash was touched, not even a staging directory made and removed')
  t.notOk(fs.existsSync(`${d.flash}/.ovroot/staged`) || fs.existsSync(`${d.flash}/.ovroot/pending`), 'no journal left')
})

await t.test(
  'a sync compares only entries changed since the last one began, and uses no baseline it cannot trust',
  async (t) => {
    const d = device(t)
    const same = (message: string): void => {
      t.same(
        withoutSharedWhiteouts(upperSnapshot(`${d.flash}/upper`)),
        withoutSharedWhiteouts(upperSnapshot(`${d.ram}/upper`)),
        message,
      )
    }
    writeTree(`${d.merged}/srv/data`, { '/a': 'a\n', '/deep/b': 'b\n' })
    fs.writeFileSync(`${d.merged}/srv/one`, 'one\n')
    fs.linkSync(`${d.merged}/srv/data/a`, `${d.merged}/srv/a-link`)
    t.equal(sync(d).status, 0)
    const baselineFile = `${d.flash}/.ovroot/sync-baseline`
    t.ok(fs.existsSync(baselineFile), 'a sync records where its scan began')
    await scanBeganNow(d)
    // Entries below a renamed directory keep their old ctime; a new link changes the old inode's.
    fs.renameSync(`${d.merged}/srv/data`, `${d.merged}/srv/moved`)
    fs.linkSync(`${d.merged}/srv/one`, `${d.merged}/srv/two`)
    fs.rmSync(`${d.merged}/etc/banner`)
    t.equal(sync(d).status, 0)
    same('a renamed directory arrives with its unchanged children, a new link and a whiteout too, the old name goes')
    t.equal(
      fs.statSync(`${d.flash}/upper/srv/moved/a`).ino,
      fs.statSync(`${d.flash}/upper/srv/a-link`).ino,
      'a name in the renamed directory stays a link to its unchanged other name',
    )

    const trusted = JSON.parse(fs.readFileSync(baselineFile, 'utf8')) as {
      boot: string
      source: string
      since: number
      clockOffset: number
    }
    const [upper, namespace] = JSON.parse(trusted.source) as [string, string]
    // A baseline from the future would hide every change, if it were used.
    const hiding = { ...trusted, since: Date.now() + 3_600_000 }
    const untrusted: [string, object | string][] = [
      ['another boot', { ...hiding, boot: '00000000-0000-0000-0000-000000000000' }],
      ['other excludes', { ...hiding, source: JSON.stringify([upper, namespace, ['/srv/one']]) }],
      ['a clock stepped back since', { ...hiding, clockOffset: hiding.clockOffset + 10_000 }],
      ['a torn file', '{"boot":'],
      ['no directory inodes recorded with it', { ...hiding, token: 'another scan' }],
    ]
    for (const [why, baseline] of untrusted) {
      fs.writeFileSync(`${d.merged}/srv/one`, `${why}\n`)
      fs.writeFileSync(baselineFile, typeof baseline === 'string' ? baseline : JSON.stringify(baseline))
      t.equal(sync(d).status, 0)
      t.equal(fs.readFileSync(`${d.flash}/upper/srv/one`, 'utf8'), `${why}\n`, `${why}: every entry compared`)
    }
    fs.writeFileSync(`${d.merged}/srv/one`, 'hidden\n')
    // The last sync's token: it names the directory inodes recorded in the run directory with that baseline.
    const { token } = JSON.parse(fs.readFileSync(baselineFile, 'utf8')) as { token: string }
    fs.writeFileSync(baselineFile, JSON.stringify({ ...hiding, token }))
    t.match(sync(d).stdout, /nothing to sync/, 'a trusted baseline is what lets a sync skip entries (this one wrongly)')
    fs.mkdirSync(`${d.flash}/.ovroot/staged`)
    commitPending({ root: d.flash, upperName: 'upper' }, { kind: 'reset', requested: 'x', keep: [] })
    t.notOk(fs.existsSync(baselineFile), 'any committed change to the flash copy drops the baseline')
  },
)

await t.test('excluded paths are never persisted, and their old copy goes', async (t) => {
  const d = device(t, { exclude: '/var/log/*.tmp /root/.cache' })
  fs.mkdirSync(`${d.merged}/var/log`, { recursive: true })
  fs.writeFileSync(`${d.merged}/var/log/app.tmp`, 'scratch\n')
  fs.writeFileSync(`${d.merged}/var/log/app.log`, 'kept\n')
  fs.mkdirSync(`${d.merged}/root/.cache`, { recursive: true })
  fs.writeFileSync(`${d.merged}/root/.cache/x`, 'x\n')
  fs.mkdirSync(`${d.flash}/upper/root/.cache`, { recursive: true })
  fs.writeFileSync(`${d.flash}/upper/root/.cache/old`, 'from before the exclude\n')
  t.equal(sync(d).status, 0)
  t.ok(fs.existsSync(`${d.flash}/upper/var/log/app.log`))
  t.notOk(fs.existsSync(`${d.flash}/upper/var/log/app.tmp`), 'a glob excludes')
  t.notOk(fs.existsSync(`${d.flash}/upper/root/.cache`), 'a directory is excluded whole, its old copy removed')
})

await t.test(
  'a power cut at any point of a sync: the next sync or boot ends in the old or the new state',
  async (t) => {
    const xattrs = new OverlayXattrs('trusted')
    const layout = (root: string): FlashLayout => ({ root, upperName: 'upper' })
    // The flat staging a sync leaves: entry N takes the place of moves[N]. /etc/new is new, so it is staged
    // whole; /usr only changed its mode; /etc receives entries without changing itself.
    const etcTime = 1700000000.123456
    const newDirTime = 1700000100.654321
    const change: PendingChange = {
      kind: 'sync',
      requested: 'x',
      entries: 3,
      removals: ['etc/gone'],
      moves: ['etc/a', 'etc/new', 'usr'],
      parents: [['etc', etcTime]],
    }
    const states: Record<string, (root: string) => void> = {
      'staged, not committed': () => undefined,
      'committed, nothing applied': (root) => commitPending(layout(root), change),
      'committed, removal and first move done': (root) => {
        commitPending(layout(root), change)
        fs.rmSync(`${root}/upper/etc/gone`)
        fs.rmSync(`${root}/upper/etc/a`)
        fs.renameSync(`${root}/.ovroot/staged/0`, `${root}/upper/etc/a`)
      },
      'committed, every entry in place, no directory metadata yet': (root) => {
        commitPending(layout(root), change)
        fs.rmSync(`${root}/upper/etc/gone`)
        fs.renameSync(`${root}/.ovroot/staged/0`, `${root}/upper/etc/a`)
        fs.renameSync(`${root}/.ovroot/staged/1`, `${root}/upper/etc/new`)
      },
    }
    for (const [name, cut] of Object.entries(states)) {
      const s = scratch()
      t.teardown(() => s.cleanup())
      const root = `${s.dir}/flash`
      writeTree(`${root}/upper`, {
        '/etc/a': 'old a\n',
        '/etc/b': 'old b\n',
        '/etc/gone': 'old\n',
        '/usr/kept': 'kept\n',
      })
      setModificationTime(`${root}/upper/etc`, etcTime)
      writeTree(`${root}/.ovroot/staged`, { '/0': 'new a\n', '/1/c': 'new c\n' })
      fs.chmodSync(`${root}/.ovroot/staged/1`, 0o750)
      setModificationTime(`${root}/.ovroot/staged/1`, newDirTime)
      fs.mkdirSync(`${root}/.ovroot/staged/2`, { mode: 0o700 })
      cut(root)
      const committed = fs.existsSync(`${root}/.ovroot/pending`)
      await applyPending(layout(root), undefined, xattrs)
      const files = upperSnapshot(`${root}/upper`)
      const contents = [...files.keys()]
        .filter((path) => files.get(path)?.startsWith('file'))
        .map((path) => `${path}=${fs.readFileSync(`${root}/upper${path}`, 'utf8').trim()}`)
      t.same(
        contents,
        committed
          ? ['/etc/a=new a', '/etc/b=old b', '/etc/new/c=new c', '/usr/kept=kept']
          : ['/etc/a=old a', '/etc/b=old b', '/etc/gone=old', '/usr/kept=kept'],
        `${name}: ${committed ? 'the new state' : 'the old state'}, whole`,
      )
      const microseconds = (path: string): bigint => fs.statSync(path, { bigint: true }).mtimeNs / 1000n
      t.equal(microseconds(`${root}/upper/etc`), 1700000000123456n, `${name}: /etc keeps its mtime`)
      t.equal(
        fs.statSync(`${root}/upper/usr`).mode & 0o7777,
        committed ? 0o700 : 0o755,
        `${name}: /usr's mode, ${committed ? 'new' : 'old'}`,
      )
      if (committed) {
        t.equal(
          fs.statSync(`${root}/upper/etc/new`).mode & 0o7777,
          0o750,
          `${name}: the new directory has its own mode`,
        )
        t.equal(microseconds(`${root}/upper/etc/new`), 1700000100654321n, `${name}: and its own mtime`)
      }
      t.notOk(
        fs.existsSync(`${root}/.ovroot/staged`) || fs.existsSync(`${root}/.ovroot/pending`),
        `${name}: no journal left`,
      )
    }
  },
)

await t.test(
  "a sync's scan baseline is written once its change is applied, before the marker goes (flushed with its removal)",
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const root = `${s.dir}/flash`
    writeTree(`${root}/upper`, { '/etc/a': 'old a\n' })
    writeTree(`${root}/.ovroot/staged`, { '/0': 'new a\n' })
    const flash: FlashLayout = { root, upperName: 'upper' }
    commitPending(flash, { kind: 'sync', requested: 'x', entries: 1, removals: [], moves: ['etc/a'], parents: [] })
    let seen: { content: string; marker: boolean } | undefined
    await applyPending(flash, undefined, new OverlayXattrs('trusted'), () => {
      seen = {
        content: fs.readFileSync(`${root}/upper/etc/a`, 'utf8'),
        marker: fs.existsSync(`${root}/.ovroot/pending`),
      }
    })
    t.same(seen, { content: 'new a\n', marker: true }, 'run with the change in place and the marker still there')
    t.notOk(fs.existsSync(`${root}/.ovroot/pending`), 'the marker goes after it')

    const d = device(t)
    fs.writeFileSync(`${d.merged}/etc/x`, 'x\n')
    // A baseline that cannot be written: the sync fails while its marker is still there, and the next one ends it.
    fs.mkdirSync(`${d.flash}/.ovroot/sync-baseline.tmp`, { recursive: true })
    t.not(sync(d).status, 0)
    t.ok(fs.existsSync(`${d.flash}/.ovroot/pending`), 'the baseline is written before the marker is removed')
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/x`, 'utf8'), 'x\n', 'the change itself is applied')
    fs.rmdirSync(`${d.flash}/.ovroot/sync-baseline.tmp`)
    t.equal(sync(d).status, 0)
    t.notOk(fs.existsSync(`${d.flash}/.ovroot/pending`), 'the next sync ends it')
  },
)

await t.test('a scheduled reset is never undone by a sync', async (t) => {
  const d = device(t)
  fs.writeFileSync(`${d.merged}/etc/x`, 'x\n')
  fs.mkdirSync(`${d.flash}/.ovroot`, { recursive: true })
  fs.writeFileSync(`${d.flash}/.ovroot/pending`, JSON.stringify({ kind: 'reset', requested: 'x', keep: [] }))
  const result = sync(d)
  t.equal(result.status, 0)
  t.match(result.stderr, /a reset is scheduled for the next boot: not syncing/)
  t.notOk(fs.existsSync(`${d.flash}/upper/etc/x`), 'nothing was written')
  t.ok(fs.existsSync(`${d.flash}/.ovroot/pending`), 'the reset is still scheduled')
})

await t.test(
  '--to DIR mirrors the upper; a live layer is refused; without [sync] the device flash is refused',
  async (t) => {
    const d = device(t)
    fs.writeFileSync(`${d.merged}/etc/usb`, 'to the stick\n')
    const mirrored = sync(d, '--to', `${d.dir}/usb`)
    t.equal(mirrored.status, 0, mirrored.stderr)
    t.same(
      withoutSharedWhiteouts(upperSnapshot(`${d.dir}/usb/upper`)),
      withoutSharedWhiteouts(upperSnapshot(`${d.ram}/upper`)),
    )
    const live = sync(d, '--to', d.ram)
    t.equal(live.status, 4)
    t.match(live.stderr, /of a mounted overlay/)
    fs.writeFileSync(d.config, fs.readFileSync(d.config, 'utf8').replace('enabled = yes', 'enabled = no'))
    fs.writeFileSync(
      `${d.dir}/run/status.json`,
      fs.readFileSync(`${d.dir}/run/status.json`, 'utf8').replace(/,"sync":\{[^}]*\}/, ''),
    )
    const off = sync(d)
    t.equal(off.status, 4)
    t.match(off.stderr, /does not run on a synced RAM upper: \[sync\] enabled = no/)
  },
)

/** inotify watches a process holds, from its file descriptors' fdinfo. */
function inotifyWatches(pid: number): number {
  let watches = 0
  for (const fd of fs.readdirSync(`/proc/${pid}/fdinfo`))
    watches += (fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').match(/^inotify /gm) ?? []).length
  return watches
}

function directoriesIn(root: string): number {
  return (
    1 + fs.readdirSync(root, { withFileTypes: true, recursive: true }).filter((entry) => entry.isDirectory()).length
  )
}

await t.test(
  '--watch: a file in a directory created a moment before is persisted after [sync] quiet, and SIGTERM syncs once more',
  async (t) => {
    const d = device(t, { quiet: 1 })
    for (let i = 0; i < 5; i++)
      writeTree(
        `${d.merged}/srv/site${i}`,
        Object.fromEntries(Array.from({ length: 20 }, (_, j) => [`/page${j}`, `${i}.${j}\n`])),
      )
    const daemon = spawn(process.execPath, [OVROOT, 'sync', '--watch', '--config', d.config], {
      env: cleanEnvironment(),
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let log = ''
    daemon.stderr.on('data', (chunk: Buffer) => (log += chunk.toString()))
    const until = async (what: () => boolean, seconds: number): Promise<boolean> => {
      for (let waited = 0; waited < seconds * 10; waited++) {
        if (what()) return true
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      return what()
    }
    const watcher = (): string | undefined =>
      fs.existsSync(`${d.dir}/run/sync.json`)
        ? (JSON.parse(fs.readFileSync(`${d.dir}/run/sync.json`, 'utf8')) as { watcher?: string }).watcher
        : undefined
    t.ok(await until(() => watcher() === 'watching', 20), 'the daemon watches')
    fs.mkdirSync(`${d.merged}/etc/fresh`)
    fs.writeFileSync(`${d.merged}/etc/fresh/file`, 'created at once\n')
    t.ok(await until(() => fs.existsSync(`${d.flash}/upper/etc/fresh/file`), 30), 'persisted without any command')
    t.equal(
      inotifyWatches(daemon.pid ?? 0),
      directoriesIn(`${d.ram}/upper`),
      'one inotify watch per directory of the upper, none per file',
    )
    fs.appendFileSync(`${d.merged}/srv/site3/page7`, 'edited in place\n')
    t.ok(
      await until(() => fs.readFileSync(`${d.flash}/upper/srv/site3/page7`, 'utf8').includes('edited in place'), 30),
      "a file changed in place is persisted: its directory's watch saw it",
    )
    // A directory renamed over a watched name: the name's old watch is the other directory's now.
    fs.renameSync(`${d.merged}/srv/site1`, `${d.merged}/srv/site1.old`)
    fs.renameSync(`${d.merged}/srv/site2`, `${d.merged}/srv/site1`)
    t.ok(await until(() => fs.existsSync(`${d.flash}/upper/srv/site1.old`), 30), 'the renames are persisted')
    await new Promise((resolve) => setTimeout(resolve, 1500))
    fs.appendFileSync(`${d.merged}/srv/site1/page4`, 'edited after the swap\n')
    t.ok(
      await until(() => fs.readFileSync(`${d.flash}/upper/srv/site1/page4`, 'utf8').includes('after the swap'), 30),
      'a file changed in the directory now under the swapped name is persisted: that directory is watched',
    )
    t.equal(inotifyWatches(daemon.pid ?? 0), directoriesIn(`${d.ram}/upper`), 'still one watch per directory')
    fs.writeFileSync(`${d.merged}/etc/last`, 'just before shutdown\n')
    daemon.kill('SIGTERM')
    const code = await new Promise<number | null>((resolve) => daemon.on('exit', resolve))
    t.equal(code, 0, log)
    t.ok(fs.existsSync(`${d.flash}/upper/etc/last`), 'the last change went to the flash on SIGTERM')
    t.equal(watcher(), 'stopped')
  },
)

await t.test(
  'a directory renamed over another: the next sync persists exactly the RAM state, however often it is swapped',
  async (t) => {
    const d = device(t)
    const same = (message: string): void => {
      t.same(
        withoutSharedWhiteouts(upperSnapshot(`${d.flash}/upper`)),
        withoutSharedWhiteouts(upperSnapshot(`${d.ram}/upper`)),
        message,
      )
    }
    writeTree(`${d.merged}/srv/conf`, { '/a': 'old a\n', '/sub/b': 'old b\n', '/only-old': 'x\n' })
    writeTree(`${d.merged}/srv/conf.new`, { '/a': 'new a\n', '/sub/b': 'new b\n', '/only-new': 'y\n' })
    t.equal(sync(d).status, 0)
    await scanBeganNow(d)
    fs.renameSync(`${d.merged}/srv/conf`, `${d.merged}/srv/conf.old`)
    fs.renameSync(`${d.merged}/srv/conf.new`, `${d.merged}/srv/conf`)
    t.equal(sync(d).status, 0)
    same('conf holds the new files on the flash, conf.old the old ones')
    t.equal(
      fs.readFileSync(`${d.flash}/upper/srv/conf/sub/b`, 'utf8'),
      'new b\n',
      'a file two levels below the renamed directory',
    )
    // Swapped back: every directory exists on both sides at both paths, only identities moved.
    await scanBeganNow(d)
    fs.renameSync(`${d.merged}/srv/conf`, `${d.merged}/srv/conf.tmp`)
    fs.renameSync(`${d.merged}/srv/conf.old`, `${d.merged}/srv/conf`)
    fs.renameSync(`${d.merged}/srv/conf.tmp`, `${d.merged}/srv/conf.old`)
    t.equal(sync(d).status, 0)
    same('swapped back, twice renamed: still exact')
    t.equal(fs.readFileSync(`${d.flash}/upper/srv/conf/a`, 'utf8'), 'old a\n')
    await scanBeganNow(d)
    t.match(sync(d).stdout, /nothing to sync/, 'and then nothing is left to sync')
  },
)

await t.test(
  'a rewrite that puts size and mtime back (cp -p, tar x, touch -d) is persisted: its bytes are compared',
  async (t) => {
    const d = device(t)
    fs.writeFileSync(`${d.merged}/etc/conf`, 'value=1\n')
    t.equal(sync(d).status, 0)
    await scanBeganNow(d)
    // touch -r copies the nanoseconds: size and mtime exactly as the flash copy has them.
    execFileSync('cp', ['-p', `${d.merged}/etc/conf`, `${d.dir}/reference`])
    fs.writeFileSync(`${d.merged}/etc/conf`, 'value=2\n')
    execFileSync('touch', ['-r', `${d.dir}/reference`, `${d.merged}/etc/conf`])
    const result = sync(d)
    t.equal(result.status, 0, result.stderr)
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/conf`, 'utf8'), 'value=2\n', 'the new bytes reached the flash')
    t.match(sync(d).stdout, /nothing to sync/)
  },
)

/**
 * A process writing a file through a MAP_SHARED, PROT_WRITE mapping (python's mmap): it writes once (the
 * page faults in writable, which moves the file's times), prints "faulted", then writes each line it reads
 * at offset 1 and prints "written". Those later writes move no time on tmpfs.
 */
const MAPPED_WRITER = `
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:1] = b"b"
print("faulted", flush=True)
for line in sys.stdin:
    data = line.strip().encode()
    m[1:1 + len(data)] = data
    print("written", flush=True)
`

/** The mapped writer on `file`, and a way to have it write and wait for it. */
async function mappedWriter(t: Test, file: string): Promise<(text: string) => Promise<void>> {
  const writer = spawn('python3', ['-c', MAPPED_WRITER, file], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => {
    writer.kill('SIGKILL')
  })
  let said = ''
  const waiters: (() => void)[] = []
  writer.stdout.on('data', (chunk: Buffer) => {
    said += chunk.toString()
    for (let line = said.indexOf('\n'); line >= 0; line = said.indexOf('\n')) {
      said = said.slice(line + 1)
      waiters.shift()?.()
    }
  })
  const nextLine = (): Promise<void> => new Promise((resolve) => waiters.push(resolve))
  await nextLine()
  return async (text) => {
    const done = nextLine()
    writer.stdin.write(`${text}\n`)
    await done
  }
}

await t.test(
  'a file written through a shared writable mapping (no time moves, no event) is compared and persisted at every sync',
  async (t) => {
    const d = device(t)
    fs.writeFileSync(`${d.merged}/etc/mapped`, 'a'.repeat(4096))
    const write = await mappedWriter(t, `${d.merged}/etc/mapped`)
    t.equal(sync(d).status, 0)
    await scanBeganNow(d)
    const times = (): string => {
      const stat = fs.statSync(`${d.ram}/upper/etc/mapped`, { bigint: true })
      return `${stat.ctimeNs} ${stat.mtimeNs}`
    }
    const before = times()
    await write('second')
    t.equal(times(), before, 'the write through the mapping moved neither ctime nor mtime')
    t.equal(fs.readFileSync(`${d.ram}/upper/etc/mapped`, 'latin1').slice(0, 7), 'bsecond', 'but it is in the file')
    const result = sync(d)
    t.equal(result.status, 0, result.stderr)
    t.match(result.stdout, /synced 1 entry/)
    t.equal(
      fs.readFileSync(`${d.flash}/upper/etc/mapped`, 'latin1'),
      fs.readFileSync(`${d.ram}/upper/etc/mapped`, 'latin1'),
      'the flash has the mapped bytes',
    )
    t.match(sync(d).stdout, /nothing to sync/, 'still mapped, compared again, and equal: nothing written')
  },
)

await t.test(
  '--watch: a file written only through a shared writable mapping reaches the flash by max_delay',
  async (t) => {
    const d = device(t, { quiet: 1, maxDelay: 2 })
    fs.writeFileSync(`${d.merged}/etc/mapped`, 'a'.repeat(4096))
    const daemon = daemonOf(t, d)
    const watcher = (): string | undefined =>
      fs.existsSync(`${d.dir}/run/sync.json`)
        ? (JSON.parse(fs.readFileSync(`${d.dir}/run/sync.json`, 'utf8')) as { watcher?: string }).watcher
        : undefined
    t.ok(await daemon.until(() => watcher() === 'watching', 20), 'the daemon watches, the file synced')
    const write = await mappedWriter(t, `${d.merged}/etc/mapped`)
    await write('through the mapping')
    t.ok(
      await daemon.until(
        () => fs.readFileSync(`${d.flash}/upper/etc/mapped`, 'latin1').startsWith('bthrough the mapping'),
        20,
      ),
      'persisted with no event and no command',
    )
    daemon.kill('SIGTERM')
    t.equal(await daemon.exited, 0, daemon.log())
  },
)

await t.test(
  'an entry renamed away between listing and reading is skipped with a warning; the rest commits',
  async (t) => {
    const d = device(t)
    writeTree(`${d.merged}/srv`, { '/tmp.1': 'half\n', '/kept': 'kept\n', '/dir/inner': 'inner\n' })
    fs.writeFileSync(`${d.merged}/etc/other`, 'other\n')
    // The exclude test runs on each name after its directory is listed and before it is read: the moment a
    // writer renames its temporary file into place, or removes a directory.
    const vanish = new Map([
      ['srv/tmp.1', () => fs.renameSync(`${d.merged}/srv/tmp.1`, `${d.merged}/etc/renamed`)],
      ['srv/dir', () => fs.rmSync(`${d.merged}/srv/dir`, { recursive: true })],
    ])
    const source = {
      upper: `${d.ram}/upper`,
      namespace: 'trusted' as const,
      exclude: [],
      excluded: (path: string) => (vanish.get(path)?.(), false),
    }
    let warnings = ''
    const write = process.stderr.write.bind(process.stderr)
    process.stderr.write = (chunk: string | Uint8Array) => ((warnings += chunk.toString()), true)
    try {
      const result = await syncOnce(source, { root: d.flash, upperName: 'upper' }, `${d.dir}/run`)
      t.ok(result.written > 0)
    } finally {
      process.stderr.write = write
    }
    t.match(warnings, /\/srv\/tmp\.1: it vanished while it was read/, 'the vanished file is named')
    t.match(warnings, /\/srv\/dir: it vanished while it was read/, 'so is the vanished directory')
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/other`, 'utf8'), 'other\n', 'the rest of the sync committed')
    t.equal(fs.readFileSync(`${d.flash}/upper/srv/kept`, 'utf8'), 'kept\n')
    t.notOk(
      fs.existsSync(`${d.flash}/upper/srv/tmp.1`) || fs.existsSync(`${d.flash}/upper/srv/dir`),
      'nothing of what vanished',
    )
    t.equal(sync(d).status, 0)
    t.same(
      withoutSharedWhiteouts(upperSnapshot(`${d.flash}/upper`)),
      withoutSharedWhiteouts(upperSnapshot(`${d.ram}/upper`)),
      'the next sync: exact',
    )
  },
)

await t.test(
  'a log appended all through the sync is synced as a prefix it had, with a warning; the rest commits',
  async (t) => {
    const d = device(t)
    fs.mkdirSync(`${d.merged}/var/log`, { recursive: true })
    fs.writeFileSync(`${d.merged}/var/log/busy`, Buffer.alloc(12 << 20, 0x61))
    fs.writeFileSync(`${d.merged}/etc/quiet`, 'quiet\n')
    const appender = spawn('sh', ['-c', `while :; do echo line >> ${d.merged}/var/log/busy; done`], { stdio: 'ignore' })
    t.teardown(() => appender.kill('SIGKILL'))
    await new Promise((resolve) => setTimeout(resolve, 200))
    const result = sync(d)
    appender.kill('SIGKILL')
    await new Promise((resolve) => appender.on('exit', resolve))
    t.equal(result.status, 0, result.stderr)
    const said =
      /\/var\/log\/busy: it grew while it was read; synced as its first (\d+) bytes, the rest at the next sync/.exec(
        result.stderr,
      )
    t.ok(said, `named, with what happens to it: ${result.stderr}`)
    const onFlash = fs.readFileSync(`${d.flash}/upper/var/log/busy`)
    t.equal(onFlash.length, Number(said?.[1]), 'that many bytes')
    t.ok(onFlash.length >= 12 << 20, 'at least what it had before the sync')
    t.ok(
      fs.readFileSync(`${d.ram}/upper/var/log/busy`).subarray(0, onFlash.length).equals(onFlash),
      'a prefix of the log: a state it had',
    )
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/quiet`, 'utf8'), 'quiet\n', 'the rest of the sync committed')
    t.equal(sync(d).status, 0)
    t.same(
      withoutSharedWhiteouts(upperSnapshot(`${d.flash}/upper`)),
      withoutSharedWhiteouts(upperSnapshot(`${d.ram}/upper`)),
      'once it is quiet, the next sync has it',
    )
  },
)

await t.test(
  'a file rewritten in place all through the sync (no log) is left for the next one with a warning; the rest commits',
  async (t) => {
    const d = device(t)
    fs.writeFileSync(`${d.merged}/etc/churn`, Buffer.alloc(12 << 20, 0x61))
    fs.writeFileSync(`${d.merged}/etc/quiet`, 'quiet\n')
    const file = `${d.merged}/etc/churn`
    const writer = spawn(
      'sh',
      ['-c', `while :; do dd if=/dev/urandom of=${file} bs=4096 count=1 conv=notrunc status=none; done`],
      { stdio: 'ignore' },
    )
    t.teardown(() => writer.kill('SIGKILL'))
    await new Promise((resolve) => setTimeout(resolve, 200))
    const result = sync(d)
    writer.kill('SIGKILL')
    await new Promise((resolve) => writer.on('exit', resolve))
    t.equal(result.status, 0, result.stderr)
    t.match(result.stderr, /\/etc\/churn: it changed while it was read, twice; left for the next sync/)
    t.notOk(fs.existsSync(`${d.flash}/upper/etc/churn`), 'no torn copy of it')
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/quiet`, 'utf8'), 'quiet\n', 'the rest of the sync committed')
  },
)

await t.test(
  'one lock for every command that stages a change: a reset waits for a sync holding it, saying who holds it',
  async (t) => {
    const d = device(t)
    // A sync in progress, as the daemon holds the lock while it stages.
    const holder = spawn('sleep', ['60'], { stdio: 'ignore' })
    t.teardown(() => holder.kill('SIGKILL'))
    fs.mkdirSync(`${d.dir}/run/staging.lock`)
    fs.writeFileSync(`${d.dir}/run/staging.lock/pid`, `${holder.pid}\novroot sync --watch\n`)
    const reset = spawn(process.execPath, [OVROOT, 'reset', '--yes', '--config', d.config], {
      env: cleanEnvironment(),
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stderr = ''
    reset.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const exited = new Promise<number | null>((resolve) => reset.on('exit', resolve))
    // Until the reset says it waits (Node's start takes a while on a loaded host), then a little longer.
    for (let waited = 0; waited < 200 && !/waiting for pid/.test(stderr); waited++)
      await new Promise((resolve) => setTimeout(resolve, 100))
    await new Promise((resolve) => setTimeout(resolve, 500))
    t.notOk(fs.existsSync(`${d.flash}/.ovroot/pending`), 'nothing committed while the sync holds the lock')
    t.match(
      stderr,
      new RegExp(`waiting for pid ${holder.pid} \\(ovroot sync --watch\\)`),
      'the one line says who holds it',
    )
    holder.kill('SIGKILL')
    t.equal(await exited, 0, stderr)
    t.match(fs.readFileSync(`${d.flash}/.ovroot/pending`, 'utf8'), /"kind":"reset"/, 'then the reset is scheduled')
    t.notOk(fs.existsSync(`${d.dir}/run/staging.lock`), 'and the lock released')
  },
)

await t.test('a reset --upper of the flash copy itself waits for the staging lock too', async (t) => {
  const d = device(t)
  fs.mkdirSync(`${d.flash}/upper/etc`, { recursive: true })
  fs.writeFileSync(`${d.flash}/upper/etc/user`, 'u\n')
  const holder = spawn('sleep', ['60'], { stdio: 'ignore' })
  t.teardown(() => holder.kill('SIGKILL'))
  fs.mkdirSync(`${d.dir}/run/staging.lock`)
  fs.writeFileSync(`${d.dir}/run/staging.lock/pid`, `${holder.pid}\novroot sync --watch\n`)
  const reset = spawn(
    process.execPath,
    [OVROOT, 'reset', '--yes', '--config', d.config, '--upper', `${d.flash}/upper`],
    {
      env: cleanEnvironment(),
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let stderr = ''
  reset.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<number | null>((resolve) => reset.on('exit', resolve))
  for (let waited = 0; waited < 200 && !/waiting for pid/.test(stderr) && reset.exitCode === null; waited++)
    await new Promise((resolve) => setTimeout(resolve, 100))
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.ok(fs.existsSync(`${d.flash}/upper/etc/user`), 'nothing removed while a sync holds the lock')
  t.notOk(fs.existsSync(`${d.flash}/.ovroot/pending`), 'nothing committed')
  t.match(stderr, new RegExp(`waiting for pid ${holder.pid} \\(ovroot sync --watch\\)`))
  holder.kill('SIGKILL')
  t.equal(await exited, 0, stderr)
  t.notOk(fs.existsSync(`${d.flash}/upper/etc/user`), 'then the reset is done')
  t.notOk(fs.existsSync(`${d.dir}/run/staging.lock`), 'and the lock released')
})

await t.test('a restore --upper into the flash copy itself waits for the staging lock too', async (t) => {
  const d = device(t)
  writeTree(`${d.dir}/backed-up`, { '/etc/restored': 'r\n' })
  const file = `${d.dir}/b.ovb`
  t.equal(ovroot(['backup', '--upper', `${d.dir}/backed-up`, '--lower', d.lower, '-o', file]).status, 0)
  const holder = spawn('sleep', ['60'], { stdio: 'ignore' })
  t.teardown(() => holder.kill('SIGKILL'))
  fs.mkdirSync(`${d.dir}/run/staging.lock`)
  fs.writeFileSync(`${d.dir}/run/staging.lock/pid`, `${holder.pid}\novroot sync --watch\n`)
  const restore = spawn(
    process.execPath,
    [OVROOT, 'restore', file, '--config', d.config, '--upper', `${d.flash}/upper`, '--lower', d.lower],
    { env: cleanEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let stderr = ''
  restore.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<number | null>((resolve) => restore.on('exit', resolve))
  for (let waited = 0; waited < 200 && !/waiting for pid/.test(stderr) && restore.exitCode === null; waited++)
    await new Promise((resolve) => setTimeout(resolve, 100))
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.same(fs.readdirSync(`${d.flash}/upper`), [], 'nothing restored while a sync holds the lock')
  t.notOk(fs.existsSync(`${d.flash}/.upper.ovroot-restore`), 'nothing staged')
  t.match(
    stderr,
    new RegExp(`^ovroot: waiting for pid ${holder.pid} \\(ovroot sync --watch\\) to finish staging a change`),
  )
  holder.kill('SIGKILL')
  t.equal(await exited, 0, stderr)
  t.equal(fs.readFileSync(`${d.flash}/upper/etc/restored`, 'utf8'), 'r\n', 'then the restore is done')
  t.notOk(fs.existsSync(`${d.dir}/run/staging.lock`), 'and the lock released')
})

await t.test(
  "a power cut while a sync stages, after the last marker's removal was lost (block2mtd), applies nothing of the new staging",
  async (t) => {
    const d = device(t)
    writeTree(`${d.merged}/etc/app`, { '/a': 'first a\n', '/b': 'first b\n', '/c': 'first c\n' })
    t.equal(sync(d).status, 0)
    const committed = upperSnapshot(`${d.flash}/upper`)
    const contents = (): string[] =>
      ['a', 'b', 'c'].map((name) => fs.readFileSync(`${d.flash}/upper/etc/app/${name}`, 'utf8'))
    writeTree(`${d.merged}/etc/app`, {
      '/a': 'second a, longer\n',
      '/b': 'second b, longer\n',
      '/c': 'second c, longer\n',
      '/d': 'new\n',
    })
    fs.writeFileSync(`${d.merged}/zzz`, 'listed last\n')
    // The next sync stages everything, then the power goes (the exclude test of the last name is the moment).
    const cut = new Error('power cut')
    // (The failed sync removes its staging: the staging as the cut left it is copied aside first, and back.)
    const cutState = `${d.dir}/at-the-cut`
    const cutNow = (): never => {
      execFileSync('cp', ['-a', `${d.flash}/.ovroot`, cutState])
      throw cut
    }
    const source = {
      upper: `${d.ram}/upper`,
      namespace: 'trusted' as const,
      exclude: [],
      excluded: (path: string) => (path === 'zzz' ? cutNow() : false),
    }
    await t.rejects(syncOnce(source, { root: d.flash, upperName: 'upper' }, `${d.dir}/run`), cut)
    t.same(
      fs.readdirSync(`${d.flash}/.ovroot`).filter((name) => name.startsWith('staged')),
      [],
      'a sync that fails removes its staging at once',
    )
    fs.rmSync(`${d.flash}/.ovroot`, { recursive: true })
    fs.renameSync(cutState, `${d.flash}/.ovroot`)
    t.ok(
      fs.readdirSync(`${d.flash}/.ovroot`).some((name) => name.startsWith('staged')),
      'the power cut left the new staging',
    )
    // The previous sync's marker, removed in the page cache but never flushed: the flash still has it.
    const lost: PendingChange = {
      kind: 'sync',
      requested: 'x',
      entries: 4,
      removals: [],
      moves: ['etc/app/a', 'etc/app/b', 'etc/app/c', 'etc/app/d', 'etc/app', 'etc', '.'],
      parents: [],
    }
    fs.writeFileSync(`${d.flash}/.ovroot/pending`, JSON.stringify(lost))
    await applyPending({ root: d.flash, upperName: 'upper' }, undefined, new OverlayXattrs('trusted'))
    t.same(contents(), ['first a\n', 'first b\n', 'first c\n'], "the committed files, not the new staging's")
    t.same(upperSnapshot(`${d.flash}/upper`), committed, 'the flash copy is the last committed sync, whole')
    t.same(
      fs.readdirSync(`${d.flash}/.ovroot`).filter((name) => name.startsWith('staged') || name === 'pending'),
      [],
      'no staging, no marker left behind',
    )
  },
)

/** The daemon, with its stderr collected and a way to wait for its state. */
function daemonOf(
  t: Test,
  d: Device,
): {
  log: () => string
  exited: Promise<number | null>
  kill: (signal: NodeJS.Signals) => void
  until: (what: () => boolean, seconds: number) => Promise<boolean>
} {
  const daemon = spawn(process.execPath, [OVROOT, 'sync', '--watch', '--config', d.config], {
    env: cleanEnvironment(),
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let log = ''
  daemon.stderr.on('data', (chunk: Buffer) => (log += chunk.toString()))
  const exited = new Promise<number | null>((resolve) => daemon.on('exit', resolve))
  t.teardown(() => {
    daemon.kill('SIGKILL')
  })
  const until = async (what: () => boolean, seconds: number): Promise<boolean> => {
    for (let waited = 0; waited < seconds * 10; waited++) {
      if (what()) return true
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    return what()
  }
  return { log: () => log, exited, kill: (signal) => daemon.kill(signal), until }
}

await t.test(
  '--watch: a failing sync backs off, shows in status, is retried without a change, and SIGTERM still exits',
  async (t) => {
    const d = device(t, { quiet: 1 })
    // A flash the sync cannot write: its state directory is a file.
    fs.writeFileSync(`${d.flash}/.ovroot`, 'in the way\n')
    fs.writeFileSync(`${d.merged}/etc/first`, 'before the daemon\n')
    const daemon = daemonOf(t, d)
    const failures = (): number => (daemon.log().match(/sync failed/g) ?? []).length
    t.ok(await daemon.until(() => failures() >= 1, 20), 'the first sync fails')
    fs.writeFileSync(`${d.merged}/etc/busy`, 'one change\n')
    await new Promise((resolve) => setTimeout(resolve, 5000))
    t.ok(
      failures() <= 5,
      `backs off: ${failures()} failures in the 5 s after one change, with quiet = 1 s (tries 1, 2, 4 s apart)`,
    )
    t.notOk(fs.readFileSync(`${d.flash}/.ovroot`, 'utf8') !== 'in the way\n', 'the flash was not touched')
    const status = JSON.parse(ovroot(['status', '--json', '--config', d.config]).stdout) as {
      syncing: { failing?: string }
    }
    t.match(
      status.syncing.failing,
      /failures in a row; next try in \d+ s/,
      'status says the syncs fail, and when the next try is',
    )
    // Fixed, with no change after: the daemon tries again on its own.
    fs.rmSync(`${d.flash}/.ovroot`)
    t.ok(
      await daemon.until(
        () => fs.existsSync(`${d.flash}/upper/etc/first`) && fs.existsSync(`${d.flash}/upper/etc/busy`),
        20,
      ),
      'retried without waiting for a change',
    )
    t.ok(
      await daemon.until(
        () => !(JSON.parse(fs.readFileSync(`${d.dir}/run/sync.json`, 'utf8')) as { failing?: string }).failing,
        5,
      ),
      'status no longer says failing',
    )
    daemon.kill('SIGTERM')
    t.equal(await daemon.exited, 0, daemon.log())
  },
)

await t.test('--watch: SIGTERM while every sync fails exits, after one final attempt', async (t) => {
  const d = device(t, { quiet: 1 })
  const daemon = daemonOf(t, d)
  const watcher = (): string | undefined =>
    fs.existsSync(`${d.dir}/run/sync.json`)
      ? (JSON.parse(fs.readFileSync(`${d.dir}/run/sync.json`, 'utf8')) as { watcher?: string }).watcher
      : undefined
  t.ok(await daemon.until(() => watcher() === 'watching', 20), 'the daemon watches')
  fs.rmSync(`${d.flash}/.ovroot`, { recursive: true, force: true })
  fs.writeFileSync(`${d.flash}/.ovroot`, 'in the way\n')
  fs.writeFileSync(`${d.merged}/etc/unsaved`, 'x\n')
  t.ok(await daemon.until(() => /sync failed/.test(daemon.log()), 20), 'syncs fail')
  const before = (daemon.log().match(/sync failed/g) ?? []).length
  const sent = Date.now()
  daemon.kill('SIGTERM')
  const code = await Promise.race([
    daemon.exited,
    new Promise<string>((resolve) => setTimeout(() => resolve('still running'), 15_000)),
  ])
  t.equal(code, 6, 'exits, saying the last sync failed (exit 6)')
  t.ok(Date.now() - sent < 15_000, 'within a bounded time')
  t.equal((daemon.log().match(/sync failed/g) ?? []).length, before + 1, 'after exactly one final attempt')
  t.match(daemon.log(), /the last sync before stopping failed/)
})

await t.test('--watch: SIGTERM during the first sync (waiting for the lock) still makes the final sync', async (t) => {
  const d = device(t, { quiet: 30 })
  fs.writeFileSync(`${d.merged}/etc/before`, 'before the daemon\n')
  const holder = spawn('sleep', ['60'], { stdio: 'ignore' })
  t.teardown(() => holder.kill('SIGKILL'))
  fs.mkdirSync(`${d.dir}/run/staging.lock`)
  fs.writeFileSync(`${d.dir}/run/staging.lock/pid`, `${holder.pid}\novroot restore\n`)
  const daemon = daemonOf(t, d)
  t.ok(await daemon.until(() => /waiting for pid/.test(daemon.log()), 20), 'the first sync waits for the lock')
  fs.writeFileSync(`${d.merged}/etc/during`, 'written during the first sync\n')
  daemon.kill('SIGTERM')
  await new Promise((resolve) => setTimeout(resolve, 300))
  holder.kill('SIGKILL')
  t.equal(await daemon.exited, 0, daemon.log())
  t.equal(
    fs.readFileSync(`${d.flash}/upper/etc/during`, 'utf8'),
    'written during the first sync\n',
    'the final sync ran',
  )
})

await t.test('--watch: a first sync that failed is retried without any change', async (t) => {
  const d = device(t, { quiet: 1 })
  fs.writeFileSync(`${d.flash}/.ovroot`, 'in the way\n')
  fs.writeFileSync(`${d.merged}/etc/first`, 'before the daemon\n')
  const daemon = daemonOf(t, d)
  t.ok(await daemon.until(() => /sync failed/.test(daemon.log()), 20), 'the first sync fails')
  fs.rmSync(`${d.flash}/.ovroot`)
  t.ok(
    await daemon.until(() => fs.existsSync(`${d.flash}/upper/etc/first`), 20),
    'persisted with no change after the failure',
  )
  daemon.kill('SIGTERM')
  t.equal(await daemon.exited, 0, daemon.log())
})

interface SyncingStatus {
  watcher?: string
  pendingSince?: string
  failing?: string
  waiting?: string
  bytesToday: number
}

const syncingStatus = (d: Device): SyncingStatus =>
  (JSON.parse(ovroot(['status', '--json', '--config', d.config]).stdout) as { syncing: SyncingStatus }).syncing

const watcherOf = (d: Device): string | undefined =>
  fs.existsSync(`${d.dir}/run/sync.json`)
    ? (JSON.parse(fs.readFileSync(`${d.dir}/run/sync.json`, 'utf8')) as { watcher?: string }).watcher
    : undefined

await t.test('status: a daemon killed by SIGKILL (the OOM killer) is not shown watching', async (t) => {
  const d = device(t, { quiet: 1 })
  const daemon = daemonOf(t, d)
  t.ok(await daemon.until(() => watcherOf(d) === 'watching', 20), 'the daemon watches')
  t.equal(syncingStatus(d).watcher, 'watching', 'status says so while it runs')
  daemon.kill('SIGKILL')
  await daemon.exited
  t.equal(watcherOf(d), 'watching', 'the killed daemon could not say otherwise')
  t.equal(syncingStatus(d).watcher, 'gone', 'status: gone')
  t.match(
    ovroot(['status', '--config', d.config]).stdout,
    /watcher gone: the daemon \(pid \d+\) ended without stopping/,
  )
  // Its pid given to another process: that one is not the daemon.
  const other = spawn('sleep', ['60'], { stdio: 'ignore' })
  t.teardown(() => other.kill('SIGKILL'))
  const stats = JSON.parse(fs.readFileSync(`${d.dir}/run/sync.json`, 'utf8')) as { daemon: { started: string } }
  fs.writeFileSync(
    `${d.dir}/run/sync.json`,
    JSON.stringify({ ...stats, daemon: { pid: other.pid, started: stats.daemon.started } }),
  )
  t.equal(syncingStatus(d).watcher, 'gone', 'a live process with its pid, started at another time, is not it')
})

await t.test('status: a failed ovroot sync is shown until a sync succeeds', async (t) => {
  const d = device(t)
  fs.writeFileSync(`${d.flash}/.ovroot`, 'in the way\n')
  fs.writeFileSync(`${d.merged}/etc/unsaved`, 'x\n')
  t.not(sync(d).status, 0, 'the sync fails')
  t.match(syncingStatus(d).failing, /ovroot sync failed: /, 'status shows the failure and why')
  fs.rmSync(`${d.flash}/.ovroot`)
  t.equal(sync(d).status, 0)
  t.equal(syncingStatus(d).failing, undefined, 'and no more once a sync succeeded')
})

await t.test(
  "status: the budget's wait ends with the day; a watch that failed (polling) still shows unsynced changes",
  async (t) => {
    const d = device(t, { quiet: 1 })
    fs.writeFileSync(
      `${d.dir}/run/sync.json`,
      JSON.stringify({
        day: '2001-01-01',
        bytesToday: 1 << 30,
        waiting: "the day's write budget (1024 bytes) is spent",
        waitingFor: 'budget',
      }),
    )
    const rolled = syncingStatus(d)
    t.equal(rolled.bytesToday, 0, 'a new day counts from 0')
    t.equal(rolled.waiting, undefined, 'and its budget is not spent')

    fs.rmSync(`${d.dir}/run/sync.json`)
    fs.mkdirSync(`${d.merged}/srv/one`, { recursive: true })
    // inotify watches are counted per user namespace: a limit of 1 fails the watch of the upper's second directory.
    const daemon = spawn(
      'unshare',
      [
        '--user',
        '--map-root-user',
        'sh',
        '-c',
        'echo 1 > /proc/sys/user/max_inotify_watches && exec "$@"',
        'sh',
        process.execPath,
        OVROOT,
        'sync',
        '--watch',
        '--config',
        d.config,
      ],
      { env: cleanEnvironment(), stdio: ['ignore', 'ignore', 'pipe'] },
    )
    let log = ''
    daemon.stderr.on('data', (chunk: Buffer) => (log += chunk.toString()))
    const exited = new Promise<number | null>((resolve) => daemon.on('exit', resolve))
    t.teardown(() => {
      daemon.kill('SIGKILL')
    })
    for (let waited = 0; waited < 200 && watcherOf(d) !== 'polling'; waited++)
      await new Promise((resolve) => setTimeout(resolve, 100))
    t.match(log, /rescanning every 1 s instead/, 'the watch failed')
    t.equal(watcherOf(d), 'polling')
    fs.writeFileSync(`${d.merged}/srv/one/file`, 'found by a rescan\n')
    t.ok(syncingStatus(d).pendingSince, 'status says changes may wait in RAM, and since when')
    for (let waited = 0; waited < 100 && !fs.existsSync(`${d.flash}/upper/srv/one/file`); waited++)
      await new Promise((resolve) => setTimeout(resolve, 100))
    t.ok(fs.existsSync(`${d.flash}/upper/srv/one/file`), 'the rescan persisted the change')
    t.ok(syncingStatus(d).pendingSince, 'and a change made since is again only found by the next rescan')
    daemon.kill('SIGTERM')
    t.equal(await exited, 0, log)
  },
)

/** `${root}/etc/caf\xe9` (a Latin-1 name), as the bytes the kernel takes. */
const latin1Name = (root: string, tail = ''): Buffer =>
  Buffer.concat([Buffer.from(`${root}/etc/caf`), Buffer.from([0xe9]), Buffer.from(tail)])

await t.test('a sync persists a name that is not UTF-8, its contents and link target, and its removal', async (t) => {
  const d = device(t)
  fs.writeFileSync(latin1Name(d.merged), 'latin-1 name\n')
  fs.mkdirSync(latin1Name(d.merged, '.d'))
  fs.writeFileSync(Buffer.concat([latin1Name(d.merged, '.d'), Buffer.from('/child')]), 'child\n')
  fs.symlinkSync(Buffer.from([0x2f, 0x74, 0x6d, 0x70, 0x2f, 0xff]), `${d.merged}/etc/link`)
  fs.writeFileSync(`${d.merged}/etc/plain`, 'plain\n')
  const result = sync(d)
  t.equal(result.status, 0, result.stderr)
  t.equal(result.stderr, '', 'nothing skipped, nothing to warn about')
  t.equal(fs.readFileSync(latin1Name(`${d.flash}/upper`), 'utf8'), 'latin-1 name\n', 'the name is persisted')
  t.equal(
    fs.readFileSync(Buffer.concat([latin1Name(`${d.flash}/upper`, '.d'), Buffer.from('/child')]), 'utf8'),
    'child\n',
    'and a directory of that name with its children',
  )
  t.same(
    fs.readlinkSync(`${d.flash}/upper/etc/link`, { encoding: 'buffer' }),
    Buffer.from([0x2f, 0x74, 0x6d, 0x70, 0x2f, 0xff]),
    'a link target that is not UTF-8, byte for byte',
  )
  fs.rmSync(latin1Name(d.merged))
  fs.rmSync(latin1Name(d.merged, '.d'), { recursive: true })
  const again = sync(d)
  t.equal(again.status, 0, again.stderr)
  t.notOk(fs.existsSync(latin1Name(`${d.flash}/upper`)), 'its removal is persisted')
  t.notOk(fs.existsSync(latin1Name(`${d.flash}/upper`, '.d')), "and the directory's")
})

await t.test(
  'the boot-time RAM fill copies a name that is not UTF-8, and a later sync removes it when the RAM upper lost it',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    writeTree(`${s.dir}/flash`, { '/etc/plain': 'plain\n', '/srv/data/x': 'x\n' })
    fs.writeFileSync(latin1Name(`${s.dir}/flash`), 'from a flash-mode boot\n')
    fs.mkdirSync(latin1Name(`${s.dir}/flash`, '.d'))
    fs.writeFileSync(Buffer.concat([latin1Name(`${s.dir}/flash`, '.d'), Buffer.from('/child')]), 'child\n')
    fs.symlinkSync(Buffer.from([0x2f, 0x74, 0x6d, 0x70, 0x2f, 0xff]), `${s.dir}/flash/etc/link`)
    fs.mkdirSync(`${s.dir}/fill`)
    copyUpper(`${s.dir}/flash`, `${s.dir}/fill`, 'trusted.overlay.metacopy')
    t.same(fullSnapshot(`${s.dir}/fill`), fullSnapshot(`${s.dir}/flash`), 'copied whole, names and targets as bytes')
    // A RAM upper without the name (the user removed it): the sync removes it from the flash.
    writeTree(`${s.dir}/ram`, { '/etc/plain': 'plain\n', '/srv/data/x': 'x\n', '/etc/new': 'new\n' })
    fs.mkdirSync(`${s.dir}/run`)
    const source = { upper: `${s.dir}/ram`, namespace: 'trusted' as const, exclude: [], excluded: () => false }
    await syncOnce(source, { root: s.dir, upperName: 'flash' }, `${s.dir}/run`)
    t.equal(fs.readFileSync(`${s.dir}/flash/etc/new`, 'utf8'), 'new\n', 'the sync commits')
    t.notOk(fs.existsSync(latin1Name(`${s.dir}/flash`)), 'and removes the name the RAM upper no longer has')
    t.notOk(fs.existsSync(latin1Name(`${s.dir}/flash`, '.d')), 'and the directory')
  },
)

await t.test('a sync marker an older ovroot wrote (names as text) still applies to the right names', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  writeTree(`${s.dir}/flash/upper`, { '/etc/old-é': 'old\n', '/etc/keep': 'keep\n' })
  writeTree(`${s.dir}/flash/.ovroot/staged-x`, { '/0': 'new\n' })
  const older = {
    kind: 'sync',
    requested: 'x',
    entries: 1,
    removals: ['etc/old-é'],
    moves: ['etc/café'],
    parents: [],
    staging: 'staged-x',
  }
  fs.writeFileSync(`${s.dir}/flash/.ovroot/pending`, JSON.stringify(older))
  await applyPending({ root: `${s.dir}/flash`, upperName: 'upper' }, undefined, new OverlayXattrs('trusted'))
  t.equal(fs.readFileSync(`${s.dir}/flash/upper/etc/café`, 'utf8'), 'new\n', 'moved to the UTF-8 name')
  t.notOk(fs.existsSync(`${s.dir}/flash/upper/etc/old-é`), 'the UTF-8 name removed')
  t.same(fs.readdirSync(`${s.dir}/flash/upper/etc`).sort(), ['café', 'keep'], 'and nothing else')
})

/** A 64 MiB file holding 4 KiB of data in its middle: all the rest is a hole. */
function writeSparse(file: string): void {
  const fd = fs.openSync(file, 'w')
  fs.ftruncateSync(fd, 64 << 20)
  fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 32 << 20)
  fs.closeSync(fd)
}

const sameBytes = (a: string, b: string): boolean => fs.readFileSync(a).equals(fs.readFileSync(b))

await t.test('a sparse file stays sparse: synced RAM to flash, and filled back into RAM at boot', async (t) => {
  const d = device(t)
  writeSparse(`${d.merged}/etc/disk.img`)
  const ram = `${d.ram}/upper/etc/disk.img`
  t.equal(fs.statSync(ram).blocks, 8, 'the RAM upper holds one page of it')
  const result = sync(d)
  t.equal(result.status, 0, result.stderr)
  t.match(result.stdout, /synced \d+ entries \(4 KiB\)/, 'the sync wrote its data, not its 64 MiB')
  const flash = `${d.flash}/upper/etc/disk.img`
  t.ok(sameBytes(flash, ram), 'the flash copy has the same bytes')
  t.equal(fs.statSync(flash).blocks, fs.statSync(ram).blocks, 'in as many allocated blocks: the hole is not written')

  fs.mkdirSync(`${d.dir}/fill`)
  copyUpper(`${d.flash}/upper`, `${d.dir}/fill`, 'trusted.overlay.metacopy')
  const filled = `${d.dir}/fill/etc/disk.img`
  t.ok(sameBytes(filled, flash), 'the RAM fill has the same bytes')
  t.equal(fs.statSync(filled).blocks, fs.statSync(flash).blocks, 'in as many allocated blocks')
})

await t.test(
  'inode flags (chattr +a, +i, +d) are synced, and a flagged entry on the flash is replaced and flagged again',
  async (t) => {
    const d = device(t)
    const upper = `${d.ram}/upper`
    writeTree(upper, {
      '/etc/locked': 'first\n',
      '/etc/frozen/inside': 'in an immutable directory\n',
      '/var/log/messages': 'append only\n',
      '/var/log/old': 'to be removed from an append-only directory\n',
      '/root/scratch': 'no dump\n',
    })
    const chattr = (flags: string, ...paths: string[]): void => {
      execFileSync('chattr', [flags, ...paths.map((path) => `${upper}${path}`)])
    }
    chattr('+i', '/etc/locked', '/etc/frozen')
    chattr('+a', '/var/log/messages', '/var/log')
    chattr('+d', '/root/scratch')
    t.teardown(() => {
      for (const root of [upper, `${d.flash}/upper`]) spawnSync('chattr', ['-R', '-i', '-a', root], { stdio: 'ignore' })
    })
    const flagsOf = (path: string): number => inodeFlags(`${d.flash}/upper${path}`)
    const first = sync(d)
    t.equal(first.status, 0, first.stderr)
    t.equal(flagsOf('/etc/locked'), InodeFlag.immutable, 'an immutable file stays immutable on the flash')
    t.equal(flagsOf('/etc/frozen'), InodeFlag.immutable, 'an immutable directory too')
    t.equal(flagsOf('/var/log/messages'), InodeFlag.append, 'an append-only file stays append-only')
    t.equal(flagsOf('/root/scratch'), InodeFlag.noDump, 'a no-dump file keeps that')
    t.equal(flagsOf('/var/log'), InodeFlag.append, 'an append-only directory stays so')
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/frozen/inside`, 'utf8'), 'in an immutable directory\n')
    t.match(sync(d).stdout, /nothing to sync/, 'a second sync finds nothing changed')

    // The RAM upper refuses changes to them as the flash did: the user (root) lifts a flag, changes, sets it again.
    t.throws(() => fs.writeFileSync(`${upper}/etc/locked`, 'x'), { code: 'EPERM' }, 'the RAM upper keeps it immutable')
    chattr('-i', '/etc/locked', '/etc/frozen')
    fs.writeFileSync(`${upper}/etc/locked`, 'second\n')
    fs.writeFileSync(`${upper}/etc/frozen/added`, 'added\n')
    chattr('+i', '/etc/locked', '/etc/frozen')
    fs.appendFileSync(`${upper}/var/log/messages`, 'more\n')
    chattr('-a', '/var/log')
    fs.rmSync(`${upper}/var/log/old`)
    chattr('+a', '/var/log')
    const second = sync(d)
    t.equal(second.status, 0, second.stderr)
    t.equal(
      fs.readFileSync(`${d.flash}/upper/etc/locked`, 'utf8'),
      'second\n',
      'the immutable file on the flash is replaced',
    )
    t.equal(flagsOf('/etc/locked'), InodeFlag.immutable, 'and immutable again')
    t.equal(
      fs.readFileSync(`${d.flash}/upper/etc/frozen/added`, 'utf8'),
      'added\n',
      'the immutable directory took the new file',
    )
    t.equal(flagsOf('/etc/frozen'), InodeFlag.immutable, 'and is immutable again')
    t.equal(
      fs.readFileSync(`${d.flash}/upper/var/log/messages`, 'utf8'),
      'append only\nmore\n',
      'the append-only file grew',
    )
    t.equal(flagsOf('/var/log/messages'), InodeFlag.append, 'and is append-only again')
    t.notOk(fs.existsSync(`${d.flash}/upper/var/log/old`), 'an append-only directory lost the removed file')
    t.equal(flagsOf('/var/log'), InodeFlag.append, 'and is append-only again')
    t.notOk(fs.existsSync(`${d.flash}/.ovroot/pending`), 'the sync is complete')

    fs.mkdirSync(`${d.dir}/fill`)
    copyUpper(`${d.flash}/upper`, `${d.dir}/fill`, 'trusted.overlay.metacopy')
    t.teardown(() => spawnSync('chattr', ['-R', '-i', '-a', `${d.dir}/fill`], { stdio: 'ignore' }))
    for (const path of ['/etc/locked', '/etc/frozen', '/var/log', '/var/log/messages', '/root/scratch'])
      t.equal(inodeFlags(`${d.dir}/fill${path}`), flagsOf(path), `the RAM fill keeps ${path}'s flags`)
  },
)

await t.test(
  'a new hard link to a file immutable or append-only on the flash is synced: both names, one inode, flagged again',
  async (t) => {
    const d = device(t)
    const upper = `${d.ram}/upper`
    writeTree(upper, { '/etc/locked': 'immutable\n', '/var/log/messages': 'append only\n' })
    const files: [string, string, number][] = [
      ['/etc/locked', '+i', InodeFlag.immutable],
      ['/var/log/messages', '+a', InodeFlag.append],
    ]
    for (const [path, flag] of files) execFileSync('chattr', [flag, `${upper}${path}`])
    t.teardown(() => {
      for (const root of [upper, `${d.flash}/upper`]) spawnSync('chattr', ['-R', '-i', '-a', root], { stdio: 'ignore' })
    })
    const first = sync(d)
    t.equal(first.status, 0, first.stderr)
    // link(2) refuses such an inode in RAM too: the user lifts the flag, links, sets it again.
    for (const [path, flag] of files) {
      execFileSync('chattr', [flag.replace('+', '-'), `${upper}${path}`])
      fs.linkSync(`${upper}${path}`, `${upper}${path}.link`)
      execFileSync('chattr', [flag, `${upper}${path}`])
    }
    const second = sync(d)
    t.equal(second.status, 0, second.stderr)
    for (const [path, , flags] of files) {
      const onFlash = `${d.flash}/upper${path}`
      t.equal(fs.statSync(`${onFlash}.link`).ino, fs.statSync(onFlash).ino, `${path}: one inode, two names`)
      t.equal(fs.readFileSync(`${onFlash}.link`, 'utf8'), fs.readFileSync(`${upper}${path}`, 'utf8'))
      t.equal(inodeFlags(onFlash), flags, `${path}: flagged again`)
    }
    t.notOk(fs.existsSync(`${d.flash}/.ovroot/pending`), 'the sync is complete')
    t.match(sync(d).stdout, /nothing to sync/, 'and exact: the next finds nothing')
  },
)

await t.test(
  'a file rewritten between the scan and its read is synced with the metadata of the version whose bytes it holds',
  async (t) => {
    const d = device(t)
    const racy = `${d.ram}/upper/etc/racy`
    writeTree(`${d.ram}/upper`, { '/etc/racy': 'old\n' })
    t.equal(sync(d).status, 0)
    fs.writeFileSync(racy, 'changed\n')
    fs.chmodSync(racy, 0o644)
    setXattr(racy, 'user.version', Buffer.from('changed'))
    // Its first open, after the scan's stat and xattrs, waits while it gets new bytes, mode, xattr and mtime.
    const newMtime = 1262304000 // 2010-01-01
    const held = await holdFirstOpen(racy, 'rewrite', 'new version\n', '600', `${newMtime}`, 'new')
    t.teardown(() => held.kill())
    const result = sync(d)
    t.equal(result.status, 0, result.stderr)
    t.equal(await held.done, 0, 'the file changed while the sync held it open')
    const copy = `${d.flash}/upper/etc/racy`
    t.same(fs.readFileSync(copy), Buffer.from('new version\n'), 'the new bytes')
    t.equal(fs.statSync(copy).mode & 0o7777, 0o600, 'with their mode')
    t.equal(fs.lstatSync(copy, { bigint: true }).mtimeNs, BigInt(newMtime) * 1_000_000_000n, 'their mtime')
    t.same(getXattr(copy, 'user.version'), Buffer.from('new'), 'and their xattr')
  },
)

await t.test(
  'a file truncated, chmodded and growing through every read is never synced as its new bytes under the old mode',
  async (t) => {
    const d = device(t)
    const racy = `${d.ram}/upper/etc/racy`
    writeTree(`${d.ram}/upper`, { '/etc/racy': 'old\n' })
    fs.chmodSync(racy, 0o644)
    t.equal(sync(d).status, 0)
    fs.writeFileSync(racy, 'changed\n')
    // Its first open, after the scan's stat, waits while it is truncated to a secret under 0600; then every
    // read of it waits while it grows: both reads see it change, and the sync takes a grown prefix.
    const held = await holdFirstOpen(racy, 'rewrite', 'secret\n', '600', '1262304000', 'new', 'grow')
    t.teardown(() => held.kill())
    const result = sync(d)
    held.kill()
    t.equal(result.status, 0, result.stderr)
    t.match(result.stderr, /etc\/racy: it changed while it was read, twice; left for the next sync/)
    const copy = `${d.flash}/upper/etc/racy`
    t.same(fs.readFileSync(copy), Buffer.from('old\n'), 'the flash keeps the version it had')
    t.equal(fs.statSync(copy).mode & 0o7777, 0o644, 'with its own mode')
  },
)

await t.test(
  'a log written again after its read keeps the metadata the walk saw, with the mtime of the bytes read; a chmod in between is a change',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    writeTree(`${s.dir}/upper`, { '/log': 'one\n' })
    const log = `${s.dir}/upper/log`
    const walked = [
      ...walkUpper(`${s.dir}/upper`, {
        stubXattr: 'trusted.overlay.metacopy',
        include: () => true,
        skipped: () => undefined,
      }),
    ].find((entry) => entry.path === 'log')
    if (walked === undefined) throw new Error('the walk lists the log')
    const later = (seconds: number): void => fs.utimesSync(log, 1_000_000_000 + seconds, 1_000_000_000 + seconds)
    fs.appendFileSync(log, 'two\n')
    later(1)
    const file = readStableFile(log)
    fs.appendFileSync(log, 'three\n')
    later(2)
    const entry = entryOfRead(log, walked, file, 'trusted.overlay.metacopy', false)
    t.equal(entry.mode, walked.mode, "the walk's mode")
    t.equal(entry.mtimeNs, 1_000_000_001_000_000_000n, 'the mtime of the bytes read, not the walk’s or the latest')
    fs.chmodSync(log, 0o600)
    t.throws(
      () => entryOfRead(log, walked, file, 'trusted.overlay.metacopy', false),
      { code: 'ECHANGED' },
      'a chmod since: which mode the bytes had is unknown',
    )
  },
)

await t.test(
  'a flagged entry that vanishes while a sync reads it: the flash keeps its old entry with its own flags',
  async (t) => {
    const d = device(t)
    const upper = `${d.ram}/upper`
    writeTree(upper, { '/etc/locked': 'first\n', '/etc/other': 'other\n' })
    execFileSync('chattr', ['+i', `${upper}/etc/locked`])
    t.teardown(() => {
      for (const root of [upper, `${d.flash}/upper`]) spawnSync('chattr', ['-R', '-i', '-a', root], { stdio: 'ignore' })
    })
    t.equal(sync(d).status, 0)
    execFileSync('chattr', ['-i', `${upper}/etc/locked`])
    fs.writeFileSync(`${upper}/etc/locked`, 'second\n')
    execFileSync('chattr', ['+a', `${upper}/etc/locked`])
    fs.writeFileSync(`${upper}/etc/other`, 'changed\n')
    // Older than the baseline's slack by the time the sync starts (as on a busy host): only the rule that a scan
    // leaving an entry records no baseline makes the next sync compare it.
    await new Promise((resolve) => setTimeout(resolve, 2500))
    // Gone when the copy opens it, after the scan read it (flags and all): the kernel's answer to a file renamed
    // away in between, at that very call (strace injects it; the only open(2) of that path in a sync is the copy's).
    const vanishing = spawnSync(
      'strace',
      [
        '-f',
        '-qq',
        '-o',
        '/dev/null',
        '-P',
        `${upper}/etc/locked`,
        '-e',
        'trace=openat',
        '-e',
        'inject=openat:error=ENOENT:when=1',
        'env',
        '-u',
        'NODE_OPTIONS',
        process.execPath,
        OVROOT,
        'sync',
        '--config',
        d.config,
      ],
      { encoding: 'utf8', env: cleanEnvironment() },
    )
    t.equal(vanishing.status, 0, vanishing.stderr)
    t.match(vanishing.stderr, /\/etc\/locked: it vanished while it was read; left for the next sync/)
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/other`, 'utf8'), 'changed\n', 'the rest committed')
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/locked`, 'utf8'), 'first\n', 'the old entry stays')
    t.equal(
      inodeFlags(`${d.flash}/upper/etc/locked`),
      InodeFlag.immutable,
      "with its own flags, not the vanished one's",
    )
    const next = sync(d)
    t.equal(next.status, 0, next.stderr)
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/locked`, 'utf8'), 'second\n', 'the next sync takes it')
    t.equal(inodeFlags(`${d.flash}/upper/etc/locked`), InodeFlag.append, 'and its flags')
  },
)

await t.test(
  "a sync walks each directory's entries before anything below them: a first copy makes sibling directories one after another",
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    writeTree(`${s.dir}/upper`, { '/a/x/f': 'f\n', '/a/y/g': 'g\n', '/b/h': 'h\n', '/c': 'c\n' })
    const order = (levelByLevel: boolean): string[] =>
      [
        ...walkUpper(`${s.dir}/upper`, {
          stubXattr: 'trusted.overlay.metacopy',
          include: () => true,
          skipped: () => undefined,
          levelByLevel,
        }),
      ].map((entry) => entry.path)
    t.same(order(true), ['.', 'a', 'b', 'c', 'a/x', 'a/y', 'a/x/f', 'a/y/g', 'b/h'], 'level by level')
    t.same(order(false), ['.', 'a', 'a/x', 'a/x/f', 'a/y', 'a/y/g', 'b', 'b/h', 'c'], 'archive order otherwise')
    // On ext4, directories made one after another get neighbouring inodes (one inode-table block for many).
    const d = device(t)
    writeTree(`${d.ram}/upper`, Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`/top/d${i}/file`, 'x\n'])))
    const flash = `${s.dir}/ext4.img`
    fs.writeFileSync(flash, '')
    fs.truncateSync(flash, 64 << 20)
    execFileSync('mkfs.ext4', ['-q', '-F', flash])
    execFileSync('mount', ['-o', 'loop', flash, d.flash])
    t.teardown(() => spawnSync('umount', [d.flash]))
    const first = sync(d)
    t.equal(first.status, 0, first.stderr)
    const inodes = Array.from({ length: 8 }, (_, i) => fs.statSync(`${d.flash}/upper/top/d${i}`).ino)
    t.same(
      inodes.slice(1).map((inode, i) => inode - (inodes[i] ?? 0)),
      Array.from({ length: 7 }, () => 1),
      'sibling directories have consecutive inodes on the flash',
    )
  },
)

await t.test('a power cut while a sync replaces flagged entries: the next apply ends with the flags set', async (t) => {
  const layout = (root: string): FlashLayout => ({ root, upperName: 'upper' })
  const change: PendingChange = {
    kind: 'sync',
    requested: 'x',
    entries: 1,
    removals: ['var/old'],
    moves: ['var/locked'],
    parents: [],
    names: 'bytes',
    flags: [
      ['var', InodeFlag.append],
      ['var/locked', InodeFlag.immutable],
    ],
  }
  const states: Record<string, (root: string) => void> = {
    'committed, nothing applied': (root) => commitPending(layout(root), change),
    'committed, flags cleared and everything moved, none set again': (root) => {
      commitPending(layout(root), change)
      execFileSync('chattr', ['-i', '-a', `${root}/upper/var`, `${root}/upper/var/locked`])
      fs.rmSync(`${root}/upper/var/old`)
      fs.rmSync(`${root}/upper/var/locked`)
      fs.renameSync(`${root}/.ovroot/staged/0`, `${root}/upper/var/locked`)
    },
  }
  for (const [name, cut] of Object.entries(states)) {
    const s = scratch()
    t.teardown(() => {
      spawnSync('chattr', ['-R', '-i', '-a', s.dir], { stdio: 'ignore' })
      s.cleanup()
    })
    const root = `${s.dir}/flash`
    writeTree(`${root}/upper`, { '/var/locked': 'old\n', '/var/old': 'old\n' })
    execFileSync('chattr', ['+i', `${root}/upper/var/locked`])
    execFileSync('chattr', ['+a', `${root}/upper/var`])
    writeTree(`${root}/.ovroot/staged`, { '/0': 'new\n' })
    cut(root)
    await applyPending(layout(root), undefined, new OverlayXattrs('trusted'))
    t.equal(fs.readFileSync(`${root}/upper/var/locked`, 'utf8'), 'new\n', `${name}: replaced`)
    t.notOk(fs.existsSync(`${root}/upper/var/old`), `${name}: removed`)
    t.equal(inodeFlags(`${root}/upper/var/locked`), InodeFlag.immutable, `${name}: immutable again`)
    t.equal(inodeFlags(`${root}/upper/var`), InodeFlag.append, `${name}: its directory append-only again`)
  }
})

await t.test(
  'the RAM fill from a flash that reports no holes (JFFS2, UBIFS; ramfs here) leaves its pages of zeros holes',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    // ramfs, like JFFS2 and UBIFS, finds data everywhere with SEEK_DATA: its holes cannot be seen.
    const flash = `${s.dir}/flash`
    fs.mkdirSync(flash)
    execFileSync('mount', ['-t', 'ramfs', 'ramfs', flash])
    writeSparse(`${flash}/disk.img`)
    // A page of data that is half zeros, and a page of zeros between two of data: bytes must stay as they are.
    fs.writeFileSync(
      `${flash}/mixed`,
      Buffer.concat([Buffer.alloc(2048, 1), Buffer.alloc(6144), Buffer.alloc(4096, 2)]),
    )
    fs.mkdirSync(`${s.dir}/fill`)
    copyUpper(flash, `${s.dir}/fill`, 'trusted.overlay.metacopy')
    t.ok(sameBytes(`${s.dir}/fill/disk.img`, `${flash}/disk.img`), 'the same bytes')
    t.equal(fs.statSync(`${s.dir}/fill/disk.img`).blocks, 8, 'in one page of RAM: the zeros stay holes')
    t.ok(sameBytes(`${s.dir}/fill/mixed`, `${flash}/mixed`), 'a file with zeros inside its data, the same bytes')
    t.equal(fs.statSync(`${s.dir}/fill/mixed`).blocks, 16, 'its pages of data only')
  },
)

await t.test(
  'a new hard link to an immutable file that has other names on the flash: every name stays one inode',
  async (t) => {
    const d = device(t)
    const upper = `${d.ram}/upper`
    writeTree(upper, { '/etc/locked': 'immutable\n', '/etc/sub/keep': 'x\n' })
    fs.linkSync(`${upper}/etc/locked`, `${upper}/etc/locked2`)
    fs.linkSync(`${upper}/etc/locked`, `${upper}/etc/sub/alias`)
    execFileSync('chattr', ['+i', `${upper}/etc/locked`])
    t.teardown(() => {
      for (const root of [upper, `${d.flash}/upper`]) spawnSync('chattr', ['-R', '-i', '-a', root], { stdio: 'ignore' })
    })
    const first = sync(d)
    t.equal(first.status, 0, first.stderr)
    const onFlash = `${d.flash}/upper/etc`
    t.equal(fs.statSync(`${onFlash}/locked2`).ino, fs.statSync(`${onFlash}/locked`).ino, 'first sync: linked')
    execFileSync('chattr', ['-i', `${upper}/etc/locked`])
    fs.linkSync(`${upper}/etc/locked`, `${upper}/etc/locked.link`)
    execFileSync('chattr', ['+i', `${upper}/etc/locked`])
    const second = sync(d)
    t.equal(second.status, 0, second.stderr)
    const inode = fs.statSync(`${onFlash}/locked`).ino
    for (const name of ['locked.link', 'locked2', 'sub/alias'])
      t.equal(fs.statSync(`${onFlash}/${name}`).ino, inode, `${name}: the same inode as locked`)
    t.equal(fs.statSync(`${onFlash}/locked`).nlink, 4, 'four names')
    t.equal(inodeFlags(`${onFlash}/locked`), InodeFlag.immutable, 'immutable again')
    // A directory renamed: its name of the inode is new to the flash, the others are unchanged and not even read.
    await scanBeganNow(d)
    fs.renameSync(`${upper}/etc/sub`, `${upper}/etc/sub2`)
    const third = sync(d)
    t.equal(third.status, 0, third.stderr)
    const moved = fs.statSync(`${onFlash}/sub2/alias`).ino
    for (const name of ['locked', 'locked.link', 'locked2'])
      t.equal(fs.statSync(`${onFlash}/${name}`).ino, moved, `${name}: the same inode as sub2/alias`)
    t.equal(fs.statSync(`${onFlash}/locked`).nlink, 4, 'still four names')
    t.equal(inodeFlags(`${onFlash}/locked`), InodeFlag.immutable, 'still immutable')
    t.match(sync(d).stdout, /nothing to sync/, 'and exact: the next finds nothing')
  },
)

await t.test(
  'a new name of a synced file that comes first in the walk (a link, a renamed directory) keeps every name one inode on the flash',
  async (t) => {
    const d = device(t)
    const upper = `${d.ram}/upper`
    writeTree(upper, { '/etc/m-file': 'content\n', '/a/m': 'shared\n', '/c/keep': 'x\n' })
    fs.linkSync(`${upper}/a/m`, `${upper}/c/x`)
    t.equal(sync(d).status, 0)
    const onFlash = `${d.flash}/upper`
    const inode = (path: string): bigint => fs.statSync(`${onFlash}/${path}`, { bigint: true }).ino
    await scanBeganNow(d)
    fs.linkSync(`${upper}/etc/m-file`, `${upper}/etc/a-link`)
    // The first name in the walk is new (b/m): c/x is unchanged, not even read.
    fs.renameSync(`${upper}/a`, `${upper}/b`)
    const second = sync(d)
    t.equal(second.status, 0, second.stderr)
    t.equal(inode('etc/a-link'), inode('etc/m-file'), 'a new link sorting first: one inode')
    t.equal(inode('b/m'), inode('c/x'), 'a renamed directory holding the first name: one inode')
    // A flash copy whose names were split (by an older ovroot) is linked again once the inode is compared.
    fs.rmSync(`${onFlash}/c/x`)
    fs.copyFileSync(`${onFlash}/b/m`, `${onFlash}/c/x`)
    execFileSync('touch', ['-r', `${onFlash}/b/m`, `${onFlash}/c/x`])
    fs.chmodSync(`${upper}/b/m`, fs.statSync(`${upper}/b/m`).mode)
    const third = sync(d)
    t.equal(third.status, 0, third.stderr)
    t.equal(inode('b/m'), inode('c/x'), 'split names linked again')
    fs.writeFileSync(`${upper}/c/x`, 'changed\n')
    t.equal(sync(d).status, 0)
    t.equal(fs.readFileSync(`${onFlash}/b/m`, 'utf8'), 'changed\n', 'a write through one name reaches both')
    t.match(sync(d).stdout, /nothing to sync/, 'and exact: the next finds nothing')
  },
)

await t.test(
  'a staging lock its maker left without its pid (killed right after making it) is taken over, not waited on for minutes',
  async (t) => {
    const d = device(t)
    writeTree(`${d.ram}/upper`, { '/etc/changed': 'x\n' })
    fs.mkdirSync(`${d.dir}/run/staging.lock`)
    const made = new Date(Date.now() - 60_000)
    fs.utimesSync(`${d.dir}/run/staging.lock`, made, made)
    const synced = spawnSync(process.execPath, [OVROOT, 'sync', '--config', d.config], {
      encoding: 'utf8',
      env: cleanEnvironment(),
      timeout: 30_000,
    })
    t.equal(synced.status, 0, synced.stderr)
    t.equal(fs.readFileSync(`${d.flash}/upper/etc/changed`, 'utf8'), 'x\n', 'synced')
    t.notOk(fs.existsSync(`${d.dir}/run/staging.lock`), 'and the lock released')
  },
)

await t.test(
  'a removed name of an immutable file whose other name stays: the flash keeps that name immutable',
  async (t) => {
    const d = device(t)
    const upper = `${d.ram}/upper`
    writeTree(upper, { '/keep/y': 'linked\n', '/gone/other': 'o\n' })
    fs.linkSync(`${upper}/keep/y`, `${upper}/gone/x`)
    execFileSync('chattr', ['+i', `${upper}/keep/y`])
    t.teardown(() => {
      for (const root of [upper, `${d.flash}/upper`]) spawnSync('chattr', ['-R', '-i', '-a', root], { stdio: 'ignore' })
    })
    const first = sync(d)
    t.equal(first.status, 0, first.stderr)
    t.equal(fs.statSync(`${d.flash}/upper/keep/y`).nlink, 2, 'both names on the flash')
    // The user (root) lifts the flag, removes the directory holding the other name, sets the flag again.
    execFileSync('chattr', ['-i', `${upper}/keep/y`])
    fs.rmSync(`${upper}/gone`, { recursive: true })
    execFileSync('chattr', ['+i', `${upper}/keep/y`])
    const second = sync(d)
    t.equal(second.status, 0, second.stderr)
    t.notOk(fs.existsSync(`${d.flash}/upper/gone`), 'the removed name is gone from the flash')
    t.equal(inodeFlags(`${d.flash}/upper/keep/y`), InodeFlag.immutable, 'the name that stays is still immutable')
    t.match(sync(d).stdout, /nothing to sync/, 'and the next sync finds nothing to do')
  },
)
