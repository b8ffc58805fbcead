/** runTool, how ovroot runs mkfs, flash_erase and the UBI tools: a tool that outlives its timeout is given up. */
import t from 'tap'
import * as fs from 'node:fs'
import * as os from 'node:os'
import { runTool } from '../src/sys/run.js'

await t.test('a tool whose output outlives its kill is given up, not awaited', async (t) => {
  // sh is killed at the timeout; the sleep it started keeps the output open for 60 s.
  const started = Date.now()
  await t.rejects(runTool('sh', ['-c', 'sleep 60 & wait'], 1), { code: 'ETOOL', message: /timed out after 1 s/ })
  t.ok(Date.now() - started < 30_000, `given up after ${(Date.now() - started) / 1000} s`)
})

await t.test('a tool that dies of a signal says which, not an exit status', async (t) => {
  await t.rejects(runTool('sh', ['-c', 'kill -FPE $$'], 10), {
    code: 'ETOOL',
    message: 'sh -c kill -FPE $$: killed by SIGFPE',
  })
})

await t.test('a tool the kernel will not execute says why, not an exit status', async (t) => {
  const dir = fs.mkdtempSync(`${os.tmpdir()}/ovroot-run-`)
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  // A tool without its execute bit (copied from a FAT card, a noexec mount): nothing ran, there is no status.
  fs.writeFileSync(`${dir}/mkfs.ext4`, '#!/bin/sh\n', { mode: 0o644 })
  await t.rejects(runTool(`${dir}/mkfs.ext4`, ['-q'], 10), {
    code: 'EACCES',
    exitStatus: 4,
    message: `execute ${dir}/mkfs.ext4: permission denied`,
  })
})
