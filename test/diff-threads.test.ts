/**
 * `ovroot diff` on several threads prints exactly what one thread prints:
 * the same lines in the same order, the same counts and exit status, and the
 * same one-line error when a helper meets bad data. The upper is large enough
 * for helpers to stream a task in pieces and to pause a task that is not yet
 * due (more than a megabyte of output in one directory).
 */
import t from 'tap'
import * as fs from 'node:fs'
import { setXattr } from '../src/sys/libc.js'
import { checkDiffRequest, openDiff } from '../src/diff/open.js'
import { planTasks, splitTasks, type Plan } from '../src/diff/plan.js'
import { jsonLine } from '../src/diff/report.js'
import type { OverlayDiff } from '../src/overlay/diff.js'
import { cleanEnvironment, ovroot, scratch } from './helpers/overlay.js'

function buildLayers(root: string): { lower: string; upper: string } {
  const lower = `${root}/lower`
  const upper = `${root}/upper`
  for (let d = 0; d < 30; d++) {
    fs.mkdirSync(`${lower}/small/d${d}`, { recursive: true })
    fs.mkdirSync(`${upper}/small/d${d}`, { recursive: true })
    for (let f = 0; f < 20; f++) fs.writeFileSync(`${lower}/small/d${d}/f${f}`, `lower ${d}/${f}\n`)
    for (let f = 0; f < 20; f += 3) fs.writeFileSync(`${upper}/small/d${d}/f${f}`, `upper ${d}/${f}\n`)
    fs.writeFileSync(`${upper}/small/d${d}/new`, 'new\n')
  }
  // Two directories with over a megabyte of report each: the second is walked while the first is not yet printed.
  for (const big of ['big-a', 'big-b']) {
    fs.mkdirSync(`${upper}/${big}/inner`, { recursive: true })
    for (let f = 0; f < 9000; f++) fs.writeFileSync(`${upper}/${big}/inner/a-file-with-a-rather-long-name-to-make-the-report-large-${f}`, '')
  }
  return { lower, upper }
}

t.test('every thread count prints the same report', async (t) => {
  const s = scratch()
  t.teardown(s.cleanup)
  const { lower, upper } = buildLayers(s.dir)
  const run = (format: string[], threads: string): ReturnType<typeof ovroot> =>
    ovroot(['diff', ...format, '--exit-code', '--threads', threads, '--lower', lower, '--upper', upper], { env: cleanEnvironment({ OVROOT_DEBUG: '1' }) })
  for (const format of [['--json'], [], ['--stat', '--json']]) {
    const single = run(format, '1')
    t.equal(single.status, 1, `${format.join(' ') || 'text'}, one thread: exit 1 (changes)`)
    t.match(single.stderr, /0 on 0 helper threads/, 'one thread uses no helper')
    for (const threads of ['2', '3', 'auto']) {
      const result = run(format, threads)
      t.equal(result.status, 1, `${format.join(' ') || 'text'}, --threads ${threads}: exit 1`)
      t.ok(result.stdout === single.stdout, `${format.join(' ') || 'text'}, --threads ${threads}: byte for byte the one-thread report`)
    }
  }
  const helpersOnly = run(['--json'], '2')
  t.match(helpersOnly.stderr, /: 0 on the main thread, \d+ on 2 helper threads/, 'with --threads 2 the helpers walk every task')
  t.equal(JSON.parse(run(['--stat', '--json'], '3').stdout).added, 2 * 9002 + 30, 'counts from helpers are added up')
})

/** What printing a plan's tasks in order, each walked depth first, gives. */
function printPlan(diff: OverlayDiff, plan: Plan): string {
  let text = ''
  for (const task of plan.tasks) {
    text += task.before
    diff.walk(task.dir, (change) => (text += jsonLine(change)))
  }
  return text + plan.after
}

t.test('planning and splitting tasks never changes the report', async (t) => {
  const s = scratch()
  t.teardown(s.cleanup)
  const { lower, upper } = buildLayers(s.dir)
  const open = () => openDiff(checkDiffRequest({ upper, lowers: [lower], all: true, paths: [] })).diff
  const reference = ovroot(['diff', '--json', '--all', '--threads', '1', '--lower', lower, '--upper', upper]).stdout
  for (const target of [1, 4, 40, 10000]) {
    const diff = open()
    const plan = planTasks(diff, target, jsonLine)
    t.equal(printPlan(diff, plan), reference, `target ${target}: ${plan.tasks.length} tasks print the one-walk report`)
    const again = open()
    const split = splitTasks(again, planTasks(again, target, jsonLine), jsonLine)
    t.equal(printPlan(again, split), reference, `target ${target}, split once more: ${split.tasks.length} tasks, same report`)
  }
})

t.test('a helper that meets bad data fails the command with one line', async (t) => {
  const s = scratch()
  t.teardown(s.cleanup)
  const { lower, upper } = buildLayers(s.dir)
  fs.writeFileSync(`${upper}/small/d17/stub`, '')
  fs.truncateSync(`${upper}/small/d17/stub`, 100)
  setXattr(`${upper}/small/d17/stub`, 'trusted.overlay.metacopy', Buffer.alloc(0))
  for (const threads of ['1', '2']) {
    const result = ovroot(['diff', '--json', '--threads', threads, '--lower', lower, '--upper', upper])
    t.equal(result.status, 5, `--threads ${threads}: exit 5 (invalid data)`)
    t.match(result.stderr, /^ovroot: .*small\/d17\/stub: metacopy file whose data is in no lower layer/, `--threads ${threads}: names the file`)
    t.equal(result.stderr.trim().split('\n').length, 1, `--threads ${threads}: one line`)
  }
})

t.test('--threads takes auto or a count', async (t) => {
  const result = ovroot(['diff', '--threads', 'many', '--lower', '/', '--upper', '/'])
  t.equal(result.status, 2, 'exit 2 (usage)')
  t.match(result.stderr, /--threads many: expected auto or a whole number from 1 to 64/)
})
