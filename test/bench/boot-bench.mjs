#!/usr/bin/env node
// Boot benchmark (npm run bench:boot; needs the lab: qemu/vm build).
//
// Boots the demo device under QEMU (TCG) several times with ovroot-init and
// with a plain shell script doing the same mounts and pivot (the floor), on
// the same images and the same NOR flash, alternating, and reports the median
// time from the shim's start to the exec of the real init, and the peak
// memory of `ovroot boot`. The floor boots also time a cold `node -e 0` (no
// Node.js has run yet), the part of ovroot's cost that is the runtime's.
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'

const VM = fileURLToPath(new URL('../../qemu/vm', import.meta.url))
const runs = Number(process.env.BENCH_RUNS ?? 5)
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovroot-boot-bench-'))
const flash = path.join(dir, 'nor.flash')

function boot(extra, command) {
  const result = spawnSync(VM, ['boot', '--flash', flash, '--timeout', '300', ...extra, '--run', command], {
    encoding: 'utf8',
  })
  if (result.status !== 0) throw new Error(`boot failed (${result.status}): ${result.stderr}`)
  return result.stdout
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]

try {
  boot([], 'true') // the first boot formats the flash; it is not measured
  const ovroot = []
  const plain = []
  const memory = []
  const nodeCold = []
  for (let i = 0; i < runs; i++) {
    const out = boot(
      [],
      'echo "$(cat /run/ovroot/shim-start) $(cat /run/ovroot/init-exec-uptime)"; ovroot status --json',
    )
    const [start, end] = out.trim().split('\n')[0].split(' ').map(Number)
    ovroot.push(end - start)
    memory.push(JSON.parse(out.split('\n').find((line) => line.startsWith('{'))).peakMemoryKiB / 1024)
    const floor = boot(
      ['--append', 'init=/usr/lib/ovroot-lab/plain-init'],
      'cat /run/plain-boot; a=$(cut -d" " -f1 /proc/uptime); /usr/bin/node -e 0; echo "$a $(cut -d" " -f1 /proc/uptime)"',
    )
    const [plainLine, nodeLine] = floor.trim().split('\n')
    const [plainStart, plainEnd] = plainLine.split(' ').map(Number)
    plain.push(plainEnd - plainStart)
    const [nodeStart, nodeEnd] = nodeLine.split(' ').map(Number)
    nodeCold.push(nodeEnd - nodeStart)
  }
  const o = median(ovroot)
  const p = median(plain)
  console.log(`boots: ${runs} of each, alternating, QEMU TCG, NOR flash (JFFS2), 256 MB`)
  console.log(`ovroot-init + ovroot boot   ${o.toFixed(2)} s   (runs: ${ovroot.map((v) => v.toFixed(2)).join(' ')})`)
  console.log(`plain shell, same mounts    ${p.toFixed(2)} s   (runs: ${plain.map((v) => v.toFixed(2)).join(' ')})`)
  console.log(`ovroot adds                 ${(o - p).toFixed(2)} s   (target <= 1 s)`)
  console.log(
    `  of which a cold node -e 0  ${median(nodeCold).toFixed(2)} s   (the runtime's start, before any ovroot code)`,
  )
  console.log(`ovroot boot peak memory     ${median(memory).toFixed(1)} MiB   (target <= 60 MB)`)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}
