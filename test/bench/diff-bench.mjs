#!/usr/bin/env node
// Benchmark of `ovroot diff` (run as root: npm run bench:diff).
//
// A lower of 200,000 files (2,000 directories of 100 files, 10 B to 2 KB) gets
// changes through a real overlay mount. In the same run it times, with GNU
// time for wall clock and peak memory:
//   ovroot   ovroot diff --json UPPER             (what we ship)
//   naive    diff -rq LOWER MERGED                (the full walk of both trees)
//   floor    getfattr -R -d -m - UPPER            (a C walk reading every xattr of the upper)
// at 20,000 changes, then again at 200,000 changes to show how the time
// scales and whether peak memory grows with the upper.
import { OVROOT, benchmarkRoot, measure, setUp } from './fixture.mjs'

await benchmarkRoot('diff-bench', (root) => {
  const small = setUp(root, 20000)
  console.log('\n20,000 changes (median of runs, peak RSS; all on tmpfs, so this is CPU and syscalls, not disk)')
  const ovrootDiff = (layers) =>
    measure('ovroot diff --json', process.execPath, [
      OVROOT,
      'diff',
      '--json',
      '--lower',
      layers.lower,
      '--upper',
      layers.upper,
    ])
  const floorOf = (layers) =>
    measure('getfattr -R -d -m - UPPER (floor)', 'getfattr', ['-R', '-d', '-m', '-', layers.upper])
  const ovroot = ovrootDiff(small)
  const naive = measure('diff -rq LOWER MERGED (naive full walk)', 'diff', ['-rq', small.lower, small.merged])
  const floor = floorOf(small)
  const big = setUp(root, 200000)
  console.log('\n200,000 changes')
  const ovrootBig = ovrootDiff(big)
  const floorBig = floorOf(big)
  console.log('\nratios')
  console.log(
    `  naive / ovroot (speed-up):              ${(naive.seconds / ovroot.seconds).toFixed(1)}x   (target >= 10x)`,
  )
  console.log(
    `  ovroot / floor at 20,000 changes:       ${(ovroot.seconds / floor.seconds).toFixed(2)}x   (target <= 2x)`,
  )
  console.log(`  ovroot / floor at 200,000 changes:      ${(ovrootBig.seconds / floorBig.seconds).toFixed(2)}x`)
  console.log(
    `  peak memory 200,000 / 20,000:           ${(ovrootBig.mib / ovroot.mib).toFixed(2)}x   (10x the upper; flat means it does not grow with it)`,
  )
})
