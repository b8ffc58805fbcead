// What the benchmarks share: a lower of 200,000 files on a tmpfs, an upper
// the kernel writes with a given number of changes, and timing with GNU time
// (median wall clock, peak resident memory).
import { execFileSync, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'

export const OVROOT = fileURLToPath(new URL('../../dist/ovroot.js', import.meta.url))
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
      case 0:
        fs.appendFileSync(file, 'appended\n')
        break
      case 1:
        fs.rmSync(file)
        break
      case 2:
        fs.chmodSync(file, 0o600)
        break
      default:
        fs.writeFileSync(path.join(dir, `new${f}`), 'new file\n')
    }
  }
}

export function measure(label, command, args) {
  const samples = []
  for (let i = 0; i < runs; i++) {
    const result = spawnSync('/usr/bin/time', ['-f', '%e %M', command, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'ignore', 'pipe'],
      maxBuffer: 1 << 26,
    })
    const last = result.stderr.trim().split('\n').pop() ?? ''
    const [seconds, kib] = last.split(' ').map(Number)
    samples.push({ seconds, kib })
  }
  samples.sort((a, b) => a.seconds - b.seconds)
  const median = samples[Math.floor(samples.length / 2)]
  const peak = Math.max(...samples.map((s) => s.kib))
  console.log(
    `${label.padEnd(44)} ${median.seconds.toFixed(2).padStart(7)} s ${(peak / 1024).toFixed(1).padStart(8)} MiB`,
  )
  return { seconds: median.seconds, mib: peak / 1024 }
}

export function setUp(root, changes) {
  const lower = path.join(root, 'lower')
  const upper = path.join(root, `upper${changes}`)
  const work = path.join(root, `work${changes}`)
  const merged = path.join(root, `merged${changes}`)
  for (const dir of [upper, work, merged]) fs.mkdirSync(dir)
  execFileSync('mount', [
    '-t',
    'overlay',
    'overlay',
    '-o',
    `lowerdir=${lower},upperdir=${upper},workdir=${work}`,
    merged,
  ])
  change(merged, changes)
  return { lower, upper, merged }
}

/** Run `body` on a fresh 4 GiB tmpfs holding the generated lower; unmount everything after. */
export async function benchmarkRoot(name, body) {
  if (process.getuid?.() !== 0) {
    console.error(`${name}: run as root (it mounts overlays)`)
    process.exit(4)
  }
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ovroot-bench-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4g', 'tmpfs', root])
  try {
    fs.mkdirSync(path.join(root, 'lower'))
    console.log(`generating a lower of ${DIRS * FILES_PER_DIR} files...`)
    generateLower(path.join(root, 'lower'))
    await body(root)
  } finally {
    for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n').reverse()) {
      const target = line.split(' ')[1]
      if (target?.startsWith(`${root}/`)) spawnSync('umount', [target])
    }
    spawnSync('umount', [root])
    fs.rmSync(root, { recursive: true, force: true })
  }
}
