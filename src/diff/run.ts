/** `ovroot diff`: resolve the directories, stream the report, compute the exit status. */
import { loadConfig } from '../config/load.js'
import { upperDir } from '../config/schema.js'
import { ExitCode, type ExitStatus } from '../errors.js'
import { hostTreeReader } from '../sys/fs.js'
import type { Change } from '../overlay/diff.js'
import type { XattrNamespace } from '../overlay/xattrs.js'
import { checkDiffRequest, openDiff } from './open.js'
import { planTasks } from './plan.js'
import { BufferedOutput, ChangeCounter, loadRenderer, type DiffFormat } from './report.js'
import { ThreadedWalk, type ThreadChoice } from './threads.js'

export interface DiffCommandOptions {
  configFile: string | undefined
  lowers: string[] | undefined
  upper: string | undefined
  paths: string[]
  all: boolean
  format: DiffFormat
  /** With --stat: counts as JSON. */
  json: boolean
  exitCode: boolean
  namespace: XattrNamespace | undefined
  colour: boolean
  threads: ThreadChoice
}

/**
 * Pending directories to plan before walking. With a thread count, a couple
 * per thread, so that even a small upper gives every helper work; with auto,
 * enough to judge the pace by (the tasks are split further if helpers join).
 */
const TASKS_PER_THREAD = 2
const AUTO_TASKS = 16

export async function runDiff(options: DiffCommandOptions): Promise<ExitStatus> {
  let { lowers, upper, namespace } = options
  if (!lowers || !upper) {
    const config = loadConfig(options.configFile)
    lowers = config.overlay.lower
    upper = upperDir(config)
    namespace ??= config.overlay.options.includes('userxattr') ? 'user' : 'trusted'
  }
  const request = checkDiffRequest({ upper, lowers, namespace, all: options.all, paths: options.paths })
  const output = new BufferedOutput((text) => process.stdout.write(text))
  const counter = new ChangeCounter()
  const render = await loadRenderer(options.format, options.colour, hostTreeReader)
  const print = (change: Change): string => {
    counter.add(change)
    return render(change)
  }
  const opened = openDiff(request)
  const walk = new ThreadedWalk({ opened, request, format: options.format, colour: options.colour, print, counter, output, threads: options.threads })
  const target = options.threads === 'auto' ? AUTO_TASKS : TASKS_PER_THREAD * options.threads
  await walk.run(() => planTasks(opened.diff, target, print))
  if (process.env.OVROOT_DEBUG) process.stderr.write(`ovroot: ${walk.describe()}\n`)
  if (options.format === 'stat') output.push(counter.render(options.json, options.all))
  output.flush()
  return options.exitCode && counter.changed > 0 ? ExitCode.changed : ExitCode.ok
}
