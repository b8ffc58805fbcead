#!/usr/bin/env node
// Benchmark of a firmware upgrade's reconcile (run as root: npm run bench:upgrade).
//
// Firmware A is the diff benchmark's lower (200,000 files) with its manifest
// (`ovroot manifest`, as an image build ships it); firmware B is A with 10% of
// its files changed (appended to; half of them files the upper changed) and
// its own manifest. The
// upper is the diff benchmark's 20,000 changes, made through a real overlay
// over A. A flash (upper/, work/, .ovroot/) records A as a first boot does;
// then, on a fresh copy of that flash each time, it times what the boot runs
// when it finds B (src/upgrade/boot.ts onFirmware: plan, stage, commit, apply)
// against `ovroot diff --json` of the same upper over A, in the same run. Last,
// a boot on unchanged firmware: the system calls its firmware check makes.
import { execFileSync, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { OVROOT, benchmarkRoot, measure, setUp } from './fixture.mjs'

const runs = Number(process.env.BENCH_RUNS ?? 3)
const MANIFEST = 'usr/lib/ovroot/firmware.manifest'

/** The boot's firmware step as one script, bundled as the CLI is (package.json's build). */
async function bundle(root) {
  const outfile = path.join(root, 'upgrade-firmware.mjs')
  await build({
    entryPoints: [fileURLToPath(new URL('upgrade-firmware.ts', import.meta.url))],
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    external: ['koffi'],
    alias: { 'string-width': fileURLToPath(new URL('../../src/cli/text-width.ts', import.meta.url)) },
    banner: {
      js: "import { createRequire as __ovrootCreateRequire } from 'node:module'; const require = __ovrootCreateRequire(import.meta.url);",
    },
    outfile,
    logLevel: 'warning',
  })
  // koffi resolves from the bundle's directory, as it does from dist/.
  fs.symlinkSync(fileURLToPath(new URL('../../node_modules', import.meta.url)), path.join(root, 'node_modules'))
  return outfile
}

function shipManifest(lower) {
  fs.mkdirSync(path.join(lower, path.dirname(MANIFEST)), { recursive: true })
  execFileSync(process.execPath, [OVROOT, 'manifest', lower, '--output', path.join(lower, MANIFEST)])
}

/**
 * B: A with a tenth of its files appended to (20,000): in even directories the
 * files the benchmark's changes touch (f0, f10, ...), in odd ones others (f5,
 * f15, ...), so that half the upper's changes meet a change of the firmware.
 */
function firmwareB(a, b) {
  execFileSync('cp', ['-a', a, b])
  for (const top of fs.readdirSync(b)) {
    if (!top.startsWith('d')) continue
    for (const dir of fs.readdirSync(path.join(b, top))) {
      const first = Number(dir.slice(1)) % 2 === 0 ? 0 : 5
      for (let f = first; f < 100; f += 10) fs.appendFileSync(path.join(b, top, dir, `f${f}`), 'firmware B\n')
    }
  }
}

/** Wall clock of one run of the firmware step, on a fresh copy of the flash. */
function reconcileOnce(script, flash, lower, scratch) {
  fs.rmSync(scratch, { recursive: true, force: true })
  execFileSync('cp', ['-a', flash, scratch])
  execFileSync('sync')
  const result = spawnSync('/usr/bin/time', ['-f', '%e %M', process.execPath, script, scratch, lower], {
    encoding: 'utf8',
  })
  if (result.status !== 0) throw new Error(`the reconcile failed: ${result.stderr}`)
  const [seconds, kib] = (result.stderr.trim().split('\n').pop() ?? '').split(' ').map(Number)
  return { seconds, kib, said: result.stdout.trim() }
}

await benchmarkRoot('upgrade-bench', async (root) => {
  const a = path.join(root, 'lower')
  shipManifest(a)
  const b = path.join(root, 'lowerB')
  firmwareB(a, b)
  shipManifest(b)
  const layers = setUp(root, 20000)
  execFileSync('umount', [layers.merged])
  const script = await bundle(root)

  // The flash of a device that booted A: its upper, and what the boot on A recorded.
  const flash = path.join(root, 'flash')
  fs.mkdirSync(path.join(flash, 'work'), { recursive: true })
  fs.mkdirSync(path.join(flash, '.ovroot'))
  execFileSync('cp', ['-a', layers.upper, path.join(flash, 'upper')])
  execFileSync(process.execPath, [script, flash, a])

  console.log('\n20,000 changes, firmware B changes 20,000 of the 200,000 files (median of runs, peak RSS; tmpfs)')
  const diff = measure('ovroot diff --json (the same upper over A)', process.execPath, [
    OVROOT,
    'diff',
    '--json',
    '--lower',
    a,
    '--upper',
    layers.upper,
  ])
  const samples = Array.from({ length: runs }, () => reconcileOnce(script, flash, b, path.join(root, 'scratch')))
  samples.sort((x, y) => x.seconds - y.seconds)
  const median = samples[Math.floor(samples.length / 2)]
  const peak = Math.max(...samples.map((sample) => sample.kib)) / 1024
  console.log(
    `${'reconcile A -> B (plan, stage, commit, apply)'.padEnd(44)} ${median.seconds.toFixed(2).padStart(7)} s ${peak.toFixed(1).padStart(8)} MiB   ${median.said}`,
  )
  console.log(
    `\n  reconcile / diff:                        ${(median.seconds / diff.seconds).toFixed(2)}x   (target <= 2x)`,
  )

  // A boot on the firmware the flash recorded: the firmware check's file accesses, from strace.
  const traced = spawnSync(
    'strace',
    ['-qq', '-e', 'trace=openat,read,pread64,close', '-e', 'signal=none', process.execPath, script, flash, a],
    { encoding: 'utf8' },
  )
  console.log('\nA boot on unchanged firmware: what the firmware check reads of the flash and the firmware (strace)')
  const opened = new Map()
  for (const line of traced.stderr.split('\n')) {
    const open = /^openat\(AT_FDCWD, "([^"]+)", .*\) = (\d+)$/.exec(line)
    const read = /^(?:read|pread64)\((\d+), .*\) = (\d+)$/.exec(line)
    const close = /^close\((\d+)\)/.exec(line)
    if (open && (open[1].startsWith(`${flash}/`) || open[1].startsWith(`${a}/`))) opened.set(open[2], open[1])
    else if (read && opened.has(read[1]))
      console.log(`  read ${read[2].padStart(6)} bytes of ${path.relative(root, opened.get(read[1]))}`)
    else if (close) opened.delete(close[1])
  }
})
