#!/usr/bin/env node
// Benchmark of `ovroot sync` (run as root: npm run bench:sync).
//
// The 20,000-change upper of the diff benchmark, held in RAM (tmpfs), is
// persisted to two ext4 "flashes" on loop devices: one by `ovroot sync --to`,
// one by `rsync -aAX --delete`. Then, three times, 1% of the upper's files
// change (appends to 1,950 files) and, 3 s later (the daemon syncs [sync]
// quiet seconds after the last change), each tool persists again. The
// targets are ext4 mounted noatime, as ovroot mounts a device's flash. In the same
// run it reports, per round: bytes written to the target's block device (its
// write counter in /sys/block/loopN/stat, after sync) and wall time; then
// both once more with nothing changed; then the memory of `ovroot sync
// --watch` on that upper, syncing to the ovroot target as a device's flash,
// over ten rounds of 1% changes: its peak (VmHWM) and its RSS after each
// round, against two baselines measured in the same run on the same upper:
// Node itself (`node -e` idling) and chokidar alone, directories only (what the
// daemon watched with before its own inotify watch). With BENCH_SYNC_MINUTES=N
// the daemon's rounds go on for N minutes (the target: flat over 10), its RSS
// printed each minute.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { OVROOT, benchmarkRoot, setUp } from './fixture.mjs'

const sectorsWritten = (loop) =>
  Number(
    fs
      .readFileSync(`/sys/block/${path.basename(loop)}/stat`, 'utf8')
      .trim()
      .split(/\s+/)[6],
  ) * 512

function flash(root, name) {
  const image = path.join(root, `${name}.img`)
  fs.writeFileSync(image, '')
  fs.truncateSync(image, 1 << 30)
  const loop = execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim()
  // No lazy inode-table initialisation writing in the background; noatime, as ovroot mounts a device's flash.
  execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', loop])
  const mount = path.join(root, name)
  fs.mkdirSync(mount)
  execFileSync('mount', ['-o', 'noatime', loop, mount])
  return { loop, mount }
}

/** ext4's journal so far: transactions, and blocks logged (its averages times the count). */
function journal(target) {
  const info = fs.readFileSync(`/proc/fs/jbd2/${path.basename(target.loop)}-8/info`, 'utf8')
  const transactions = Number(/^(\d+) transactions/m.exec(info)?.[1] ?? 0)
  return { transactions, blocks: transactions * Number(/(\d+) logged blocks per transaction/.exec(info)?.[1] ?? 0) }
}

/** Time a command and the bytes it makes reach the device (flushed by sync), and how much of that the journal took. */
function persist(label, target, command, args) {
  execFileSync('sync')
  const before = sectorsWritten(target.loop)
  const journalBefore = journal(target)
  const started = process.hrtime.bigint()
  const result = spawnSync(command, args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' })
  execFileSync('sync')
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  if (result.status !== 0) throw new Error(`${label}: ${result.stderr}`)
  const bytes = sectorsWritten(target.loop) - before
  const said = result.stdout.trim().split('\n').pop() ?? ''
  const journalAfter = journal(target)
  const logged = `(journal: ${journalAfter.transactions - journalBefore.transactions} commits, about ${(((journalAfter.blocks - journalBefore.blocks) * 4096) / 1048576).toFixed(0)} MiB)`
  console.log(
    `  ${label.padEnd(28)} ${seconds.toFixed(2).padStart(6)} s ${(bytes / 1024).toFixed(0).padStart(9)} KiB written ${logged.padEnd(36)} ${said}`,
  )
  return { seconds, bytes }
}

/**
 * The daemon syncs [sync] quiet seconds after the last change; a sync compares
 * again what changed in the 2 s before the previous one began (baseline.ts),
 * so syncing the instant after a change would measure that margin too.
 */
const calm = () => new Promise((resolve) => setTimeout(resolve, 3000))

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** BENCH_SYNC_MINUTES: how long the daemon's rounds go on after the first ten (0: just the ten). */
const longRunMs = Number(process.env.BENCH_SYNC_MINUTES ?? 0) * 60 * 1000

/** A process's peak and current resident memory, MiB. */
function memoryOf(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const kib = (field) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0)
  return { peak: kib('VmHWM') / 1024, rss: kib('VmRSS') / 1024 }
}

/** The peak memory of a Node process running `args` once it has had `ms` to settle. */
async function baseline(label, args, ms) {
  const child = spawn(process.execPath, args, { stdio: 'ignore' })
  await sleep(ms)
  const { peak } = memoryOf(child.pid)
  child.kill('SIGKILL')
  await new Promise((resolve) => child.on('exit', resolve))
  console.log(`  ${label.padEnd(44)} ${peak.toFixed(1).padStart(6)} MiB peak`)
  return peak
}

const INIT_SCRIPT = new URL('../../qemu/image/rootfs/etc/init.d/ovroot', import.meta.url)

/** What the daemon watched with before its own inotify watch (sys/watch.ts): chokidar, directories only, on the upper. */
const CHOKIDAR_ALONE = `
const { watch } = await import(${JSON.stringify(new URL('../../node_modules/chokidar/esm/index.js', import.meta.url).href)})
const watcher = watch(process.argv[1], { ignoreInitial: true, followSymlinks: false, persistent: true,
  ignorePermissionErrors: true, atomic: false, ignored: (_path, stats) => stats !== undefined && !stats.isDirectory() })
watcher.on('raw', () => undefined)
`

await benchmarkRoot('sync-bench', async (root) => {
  const layers = setUp(root, 20000)
  // A boot record and configuration as on a device booted with [sync] enabled, the upper in RAM.
  const run = path.join(root, 'run')
  fs.mkdirSync(run)
  fs.writeFileSync(
    path.join(run, 'status.json'),
    JSON.stringify({
      mode: 'flash',
      bootedAt: 'x',
      overlay: { lowers: [layers.lower], upper: layers.upper, work: '', options: '' },
      sync: { mirror: '' },
    }),
  )
  const config = path.join(root, 'ovroot.conf')
  fs.writeFileSync(
    config,
    `[overlay]\nlower = ${layers.lower}\n[boot]\nrun_dir = ${run}\n[sync]\nenabled = yes\nquiet = 3600\n`,
  )
  const ovrootFlash = flash(root, 'ovroot-flash')
  const rsyncFlash = flash(root, 'rsync-flash')
  const ovrootSync = (label) =>
    persist(label, ovrootFlash, process.execPath, [OVROOT, 'sync', '--config', config, '--to', ovrootFlash.mount])
  const rsync = (label) =>
    persist(label, rsyncFlash, 'rsync', ['-aAX', '--delete', `${layers.upper}/`, `${rsyncFlash.mount}/upper/`])
  await calm()
  console.log('\nfirst copy of the 20,000-change upper')
  ovrootSync('ovroot sync --to (full)')
  rsync('rsync -aAX --delete (full)')
  const files = []
  for (const dir of fs.readdirSync(layers.merged)) {
    for (const sub of fs.readdirSync(path.join(layers.merged, dir))) {
      for (const name of fs.readdirSync(path.join(layers.merged, dir, sub)))
        if (name.startsWith('f')) files.push(path.join(layers.merged, dir, sub, name))
    }
  }
  const totals = { ovroot: { seconds: 0, bytes: 0 }, rsync: { seconds: 0, bytes: 0 }, changed: 0 }
  for (let round = 0; round < 3; round++) {
    const changed = files.filter((_, i) => i % 100 === round * 7)
    for (const file of changed) fs.appendFileSync(file, `round ${round}\n`)
    await calm()
    const changedBytes = changed.reduce((sum, file) => sum + fs.statSync(file).size, 0)
    totals.changed += changedBytes
    console.log(`\nround ${round + 1}: ${changed.length} files changed (1%), ${(changedBytes / 1024).toFixed(0)} KiB`)
    const a = ovrootSync('ovroot sync --to')
    const b = rsync('rsync -aAX --delete')
    for (const [key, value] of [
      ['ovroot', a],
      ['rsync', b],
    ]) {
      totals[key].seconds += value.seconds
      totals[key].bytes += value.bytes
    }
  }
  await calm()
  console.log('\nnothing changed')
  const idle = { ovroot: ovrootSync('ovroot sync --to'), rsync: rsync('rsync -aAX --delete') }
  console.log('\nthe daemon (ovroot sync --watch) on the 20,000-change upper, over ten rounds of 1% changes')
  const floor = await baseline('node itself (node -e, idle)', ['-e', 'setTimeout(() => {}, 1e9)'], 3000)
  const chokidarAlone = await baseline(
    'chokidar alone (the daemon before), directories only',
    ['--input-type=module', '-e', CHOKIDAR_ALONE, layers.upper],
    15000,
  )
  // The daemon syncs to the ovroot target as to a device's flash: quiet 1 s, so a round is synced at once.
  const daemonConfig = path.join(root, 'daemon.conf')
  fs.writeFileSync(
    daemonConfig,
    `[overlay]\nlower = ${layers.lower}\ndir = ${ovrootFlash.mount}\n[boot]\nrun_dir = ${run}\n[sync]\nenabled = yes\nquiet = 1\nmax_delay = 10\n`,
  )
  fs.rmSync(path.join(run, 'sync.json'), { force: true })
  const stats = () =>
    fs.existsSync(path.join(run, 'sync.json')) ? JSON.parse(fs.readFileSync(path.join(run, 'sync.json'), 'utf8')) : {}
  // Started as the device starts it: with the Node flags, environment and heap cap of its init script.
  const initScript = fs.readFileSync(INIT_SCRIPT, 'utf8')
  const daemonFlags = (/^DAEMON_NODE_FLAGS='([^']*)'/m.exec(initScript)?.[1] ?? '').split(' ').filter(Boolean)
  const daemonOptions = /^DAEMON_NODE_OPTIONS='([^']*)'/m.exec(initScript)?.[1] ?? ''
  const arenas = /^DAEMON_MALLOC_ARENA_MAX=(\d+)/m.exec(initScript)?.[1]
  const daemonEnv = { NODE_OPTIONS: daemonOptions, ...(arenas === undefined ? {} : { MALLOC_ARENA_MAX: arenas }) }
  console.log(
    `  (the daemon runs as node ${[...daemonFlags, 'ovroot'].join(' ')} with ${JSON.stringify(daemonEnv)}, as etc/init.d/ovroot starts it)`,
  )
  const daemon = spawn(process.execPath, [...daemonFlags, OVROOT, 'sync', '--watch', '--config', daemonConfig], {
    stdio: 'ignore',
    env: { ...process.env, ...daemonEnv },
  })
  while (stats().watcher !== 'watching') await sleep(100)
  const ready = memoryOf(daemon.pid)
  console.log(`  ${'daemon watching and synced'.padEnd(44)} ${ready.peak.toFixed(1).padStart(6)} MiB peak`)
  const afterRounds = []
  const started = Date.now()
  /** A round changes 1% of the files and waits for the daemon's sync; past the tenth, the files the first ten copied up: the upper stays the same size. */
  const daemonRound = async (round) => {
    const before = stats().lastSync
    for (const file of files.filter((_, i) => i % 100 === 50 + (round % 10)))
      fs.appendFileSync(file, `daemon round ${round}\n`)
    while (stats().lastSync === before) await sleep(100)
    return memoryOf(daemon.pid)
  }
  for (let round = 0; round < 10; round++) afterRounds.push((await daemonRound(round)).rss)
  const end = memoryOf(daemon.pid)
  console.log(
    `  ${'daemon over the ten rounds'.padEnd(44)} ${end.peak.toFixed(1).padStart(6)} MiB peak, RSS after each round ${Math.min(...afterRounds).toFixed(1)}-${Math.max(...afterRounds).toFixed(1)} MiB (${((Date.now() - started) / 1000).toFixed(0)} s)`,
  )
  let last = end
  if (longRunMs > 0) {
    console.log(`  the daemon's rounds going on for ${longRunMs / 60000} minutes: RSS after each round, each minute`)
    const longStart = Date.now()
    let minute = 0
    let round = 10
    let inMinute = []
    while (Date.now() - longStart < longRunMs) {
      last = await daemonRound(round++)
      inMinute.push(last.rss)
      if (Date.now() - longStart >= (minute + 1) * 60000) {
        minute++
        console.log(
          `  minute ${String(minute).padStart(2)}: ${String(inMinute.length).padStart(3)} rounds, RSS ${Math.min(...inMinute).toFixed(1)}-${Math.max(...inMinute).toFixed(1)} MiB, peak so far ${last.peak.toFixed(1)} MiB`,
        )
        inMinute = []
      }
    }
    console.log(`  ${`daemon after ${round} rounds`.padEnd(44)} ${last.peak.toFixed(1).padStart(6)} MiB peak`)
  }
  daemon.kill('SIGTERM')
  await new Promise((resolve) => daemon.on('exit', resolve))
  console.log(
    `  daemon peak above node itself: ${(last.peak - floor).toFixed(1)} MiB (chokidar alone: ${(chokidarAlone - floor).toFixed(1)} MiB)   (target: peak <= 64 MiB)`,
  )
  console.log('\nratios over the three rounds')
  console.log(`  ovroot bytes written / changed files' bytes: ${(totals.ovroot.bytes / totals.changed).toFixed(2)}x`)
  console.log(`  rsync bytes written / changed files' bytes:  ${(totals.rsync.bytes / totals.changed).toFixed(2)}x`)
  console.log(
    `  ovroot bytes / rsync bytes:                  ${(totals.ovroot.bytes / totals.rsync.bytes).toFixed(2)}x   (target <= 1x)`,
  )
  console.log(
    `  ovroot time / rsync time:                    ${(totals.ovroot.seconds / totals.rsync.seconds).toFixed(2)}x   (target <= 1x)`,
  )
  console.log(
    `  with nothing changed, ovroot time / rsync:   ${(idle.ovroot.seconds / idle.rsync.seconds).toFixed(2)}x`,
  )
  for (const target of [ovrootFlash, rsyncFlash]) {
    spawnSync('umount', [target.mount])
    spawnSync('losetup', ['-d', target.loop])
  }
})
