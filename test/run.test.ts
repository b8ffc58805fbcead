/** runTool, how ovroot runs mkfs, flash_erase and the UBI tools: a tool that outlives its timeout is given up. */
import t from 'tap'
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
