#!/usr/bin/env node
// Benchmark of `ovroot diff` (run as root: npm run bench:diff).
//
// A lower of 200,000 files (2,000 directories of 100 files, 10 B to 2 KB) gets
// changes through a real overlay mount. In the same run it times, with GNU
// time for wall clock and peak memory:
//   ovroot   ovroot diff --json UPPER             (what we ship: --threads auto)
//   single   ovroot diff --json --threads 1 UPPER (one thread, no helpers)
//   naive    diff -rq LOWER MERGED                (the full walk of both trees)
//   floor    getfattr -R -d -m - UPPER            (a C walk reading every xattr of the upper)
// at 20,000 changes, then again at 200,000 changes to show how the time
// scales and whether peak memory grows with the upper.
import { execFileSync, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'

const OVROOT = fileURLToPath(new URL('../../dist/ovroot.js', import.meta.url))
const DIRS = 2000
const FILES_PER_DIR = 100
const runs = Number(process.env.BENCH_RUNS ?? 3)

function seeded(seed) {
  let state = seed >>> 0
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0
    return state / 4294967296
  }
}

function generateLower(lower) {
  const next = seeded(42)
  for (let d = 0; d < DIRS; d++) {
    const dir = path.join(lower, `d${Math.floor(d / 100)}`, `d${d}`)
    fs.mkdirSync(dir, { recursive: true })
    for (let f = 0; f < FILES_PER_DIR; f++) {
      fs.writeFileSync(path.join(dir, `f${f}`), Buffer.alloc(10 + Math.floor(next() * 2038), 97 + (f % 26)))
    }
  }
}

/** `count` changes spread evenly: appends, deletions, chmods and new files in equal parts. */
function change(merged, count) {
  const stride = (DIRS * FILES_PER_DIR) / count
  for (let i = 0; i < count; i++) {
    const n = Math.floor(i * stride)
    const d = Math.floor(n / FILES_PER_DIR)
    const f = n % FILES_PER_DIR
    const dir = path.join(merged, `d${Math.floor(d / 100)}`, `d${d}`)
    const file = path.join(dir, `f${f}`)
    switch (i % 4) {
      case 0: fs.appendFileSync(file, 'appended\n'); break
      case 1: fs.rmSync(file); break
      case 2: fs.chmodSync(file, 0o600); break
      default: fs.writeFileSync(path.join(dir, `new${f}`), 'new file\n')
    }
  }
}

function measure(label, command, args) {
  const samples = []
  for (let i = 0; i < runs; i++) {
    const result = spawnSync('/usr/bin/time', ['-f', '%e %M', command, ...args], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 1 << 26 })
    const last = result.stderr.trim().split('\n').pop() ?? ''
    const [seconds, kib] = last.split(' ').map(Number)
    samples.push({ seconds, kib })
  }
  samples.sort((a, b) => a.seconds - b.seconds)
  const median = samples[Math.floor(samples.length / 2)]
  const peak = Math.max(...samples.map((s) => s.kib))
  console.log(`${label.padEnd(44)} ${median.seconds.toFixed(2).padStart(7)} s ${(peak / 1024).toFixed(1).padStart(8)} MiB`)
  return { seconds: median.seconds, mib: peak / 1024 }
}

function setUp(root, changes) {
  const lower = path.join(root, 'lower')
  const upper = path.join(root, `upper${changes}`)
  const work = path.join(root, `work${changes}`)
  const merged = path.join(root, `merged${changes}`)
  for (const dir of [upper, work, merged]) fs.mkdirSync(dir)
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${work}`, merged])
  change(merged, changes)
  return { lower, upper, merged }
}

if (process.getuid?.() !== 0) {
  console.error('diff-bench: run as root (it mounts overlays)')
  process.exit(4)
}
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ovroot-bench-'))
execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4g', 'tmpfs', root])
try {
  fs.mkdirSync(path.join(root, 'lower'))
  console.log(`generating a lower of ${DIRS * FILES_PER_DIR} files...`)
  generateLower(path.join(root, 'lower'))
  const small = setUp(root, 20000)
  console.log(`\n20,000 changes (median of ${runs} runs, peak RSS; all on tmpfs, so this is CPU and syscalls, not disk)`)
  const ovrootDiff = (layers, threads) => measure(`ovroot diff --json --threads ${threads}`, process.execPath, [OVROOT, 'diff', '--json', '--threads', threads, '--lower', layers.lower, '--upper', layers.upper])
  const floorOf = (layers) => measure('getfattr -R -d -m - UPPER (floor)', 'getfattr', ['-R', '-d', '-m', '-', layers.upper])
  const ovroot = ovrootDiff(small, 'auto')
  const single = ovrootDiff(small, '1')
  const naive = measure('diff -rq LOWER MERGED (naive full walk)', 'diff', ['-rq', small.lower, small.merged])
  const floor = floorOf(small)
  const big = setUp(root, 200000)
  console.log('\n200,000 changes')
  const ovrootBig = ovrootDiff(big, 'auto')
  const singleBig = ovrootDiff(big, '1')
  const floorBig = floorOf(big)
  console.log('\nratios')
  console.log(`  naive / ovroot (speed-up):              ${(naive.seconds / ovroot.seconds).toFixed(1)}x   (target >= 10x)`)
  console.log(`  ovroot / floor at 20,000 changes:       ${(ovroot.seconds / floor.seconds).toFixed(2)}x   (target <= 2x)`)
  console.log(`  ovroot / floor at 200,000 changes:      ${(ovrootBig.seconds / floorBig.seconds).toFixed(2)}x`)
  console.log(`  one thread / auto at 200,000 changes:   ${(singleBig.seconds / ovrootBig.seconds).toFixed(2)}x   (what the helper threads gain)`)
  console.log(`  peak memory 200,000 / 20,000, one thread: ${(singleBig.mib / single.mib).toFixed(2)}x   (10x the upper; flat means it does not grow with it)`)
  console.log(`  peak memory 200,000 / 20,000, auto:       ${(ovrootBig.mib / ovroot.mib).toFixed(2)}x   (includes the helper thread started at 200,000 only)`)
} finally {
  for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n').reverse()) {
    const target = line.split(' ')[1]
    if (target?.startsWith(`${root}/`)) spawnSync('umount', [target])
  }
  spawnSync('umount', [root])
  fs.rmSync(root, { recursive: true, force: true })
}
