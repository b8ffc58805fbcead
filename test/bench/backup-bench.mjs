#!/usr/bin/env node
// Benchmark of `ovroot backup` and `ovroot restore` (run as root: npm run bench:backup).
//
// On the 20,000-change upper of the diff benchmark (on tmpfs), in one run:
//   ovroot backup --upper U --lower L -o X     vs  tar --xattrs -czf Y -C U .           (time, size)
//   ovroot restore X --upper R --lower L       vs  tar --xattrs --xattrs-include='*' -xzf Y -C R
//     (restore verifies every path and every file's sha256 as it goes; tar verifies nothing)
// then ovroot backup again on a 200,000-change upper: peak memory must not grow with the upper.
import * as fs from 'node:fs'
import * as path from 'node:path'
import { OVROOT, benchmarkRoot, measure, setUp } from './fixture.mjs'

await benchmarkRoot('backup-bench', (root) => {
  const small = setUp(root, 20000)
  const archive = path.join(root, 'backup.ovb')
  const tarball = path.join(root, 'backup.tgz')
  console.log('\n20,000 changes (median of runs, peak RSS)')
  const backup = measure('ovroot backup', process.execPath, [
    OVROOT,
    'backup',
    '--upper',
    small.upper,
    '--lower',
    small.lower,
    '-o',
    archive,
  ])
  // ovroot writes its archive atomically: a rerun replaces it the same way.
  const tarBackup = measure('tar --xattrs -czf', 'tar', ['--xattrs', '-czf', tarball, '-C', small.upper, '.'])
  const restore = measure('ovroot restore --upper (verifying)', 'sh', [
    '-c',
    `d=$(mktemp -d -p ${root}) && exec ${process.execPath} ${OVROOT} restore ${archive} --upper $d --lower ${small.lower}`,
  ])
  const tarRestore = measure("tar --xattrs --xattrs-include='*' -xzf", 'sh', [
    '-c',
    `d=$(mktemp -d -p ${root}) && exec tar --xattrs --xattrs-include='*' -xzf ${tarball} -C $d`,
  ])
  const ovrootBytes = fs.statSync(archive).size
  const tarBytes = fs.statSync(tarball).size
  console.log(
    `archive sizes: ovroot ${(ovrootBytes / 1048576).toFixed(2)} MiB, tar ${(tarBytes / 1048576).toFixed(2)} MiB`,
  )
  const big = setUp(root, 200000)
  console.log('\n200,000 changes')
  const backupBig = measure('ovroot backup', process.execPath, [
    OVROOT,
    'backup',
    '--upper',
    big.upper,
    '--lower',
    big.lower,
    '-o',
    path.join(root, 'big.ovb'),
  ])
  console.log('\nratios')
  console.log(
    `  backup time / tar:                      ${(backup.seconds / tarBackup.seconds).toFixed(2)}x   (target <= 2x)`,
  )
  console.log(`  backup size / tar:                      ${(ovrootBytes / tarBytes).toFixed(3)}x   (target <= 1.0x)`)
  console.log(
    `  restore time / tar extraction:          ${(restore.seconds / tarRestore.seconds).toFixed(2)}x   (target <= 1.5x)`,
  )
  console.log(
    `  backup peak memory 200,000 / 20,000:    ${(backupBig.mib / backup.mib).toFixed(2)}x   (10x the upper; flat means streaming)`,
  )
})
