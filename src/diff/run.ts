/** `ovroot diff`: resolve the directories, stream the report, compute the exit status. */
import { loadConfig } from '../config/load.js'
import { upperDir } from '../config/schema.js'
import { ExitCode, type ExitStatus } from '../errors.js'
import { hostTreeReader } from '../sys/fs.js'
import type { XattrNamespace } from '../overlay/xattrs.js'
import { openDiff } from './open.js'
import { patchFor } from './patch.js'
import { BufferedOutput, ChangeCounter, jsonLine, statusLine } from './report.js'

export interface DiffCommandOptions {
  configFile: string | undefined
  lowers: string[] | undefined
  upper: string | undefined
  paths: string[]
  all: boolean
  format: 'text' | 'json' | 'stat' | 'patch'
  /** With --stat: counts as JSON. */
  json: boolean
  exitCode: boolean
  namespace: XattrNamespace | undefined
  colour: boolean
}

export async function runDiff(options: DiffCommandOptions): Promise<ExitStatus> {
  let { lowers, upper, namespace } = options
  if (!lowers || !upper) {
    const config = loadConfig(options.configFile)
    lowers = config.overlay.lower
    upper = upperDir(config)
    namespace ??= config.overlay.options.includes('userxattr') ? 'user' : 'trusted'
  }
  const output = new BufferedOutput((text) => process.stdout.write(text))
  const counter = new ChangeCounter()
  const render = {
    text: (change: Parameters<typeof statusLine>[0]) => output.push(statusLine(change, options.colour)),
    json: (change: Parameters<typeof jsonLine>[0]) => output.push(jsonLine(change)),
    patch: (change: Parameters<typeof jsonLine>[0]) => output.push(patchFor(change, hostTreeReader)),
    stat: () => undefined,
  }[options.format]
  openDiff({ upper, lowers, namespace, all: options.all, paths: options.paths }, (change) => {
    counter.add(change)
    render(change)
  }).run()
  if (options.format === 'stat') output.push(counter.render(options.json, options.all))
  output.flush()
  return options.exitCode && counter.changed > 0 ? ExitCode.changed : ExitCode.ok
}
