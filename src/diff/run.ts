/** `ovroot diff`: resolve the directories, stream the report, compute the exit status. */
import { loadConfig } from '../config/load.js'
import { ExitCode, type ExitStatus } from '../errors.js'
import { hostTreeReader } from '../sys/fs.js'
import { changedUnderneath, type Change } from '../overlay/diff.js'
import { namespaceForMount, type XattrNamespace } from '../overlay/xattrs.js'
import { checkDiffRequest, openDiff } from './open.js'
import { BufferedOutput, ChangeCounter, LeftOut, loadRenderer, type DiffFormat } from './report.js'
import { upperDir } from '../state/flash.js'

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
}

export async function runDiff(options: DiffCommandOptions): Promise<ExitStatus> {
  // A file the user names is always read and validated, even when --lower and --upper make it unnecessary.
  const config =
    options.configFile !== undefined || !options.lowers || !options.upper ? loadConfig(options.configFile) : undefined
  const lowers = options.lowers ?? config?.overlay.lower ?? []
  const upper = options.upper ?? (config ? upperDir(config) : '')
  const configuredNamespace = namespaceForMount(config?.overlay.options ?? [])
  const namespace = options.namespace ?? (options.upper === undefined ? configuredNamespace : undefined)
  const request = checkDiffRequest({ upper, lowers, namespace, all: options.all, paths: options.paths })
  const output = new BufferedOutput((text) => process.stdout.write(text))
  const counter = new ChangeCounter()
  const render = await loadRenderer(options.format, options.colour, hostTreeReader)
  // A live upper changes while it is read: an entry it lost or replaced meanwhile is named, not fatal.
  const leftOut = new LeftOut('the report', 'diff')
  const print = (change: Change): string | Buffer => {
    counter.add(change)
    try {
      return render(change)
    } catch (error) {
      // --patch reads the bytes after the entry was compared.
      if (!changedUnderneath(error)) throw error
      leftOut.note(change.path, error)
      return ''
    }
  }
  openDiff(request).run((change) => output.push(print(change)), leftOut.note)
  if (options.format === 'stat') output.push(counter.render(options.json, options.all))
  output.flush()
  // The report is whole but for the entries named: a status of its own, as a backup's changed file.
  return leftOut.status(options.exitCode && counter.changed > 0 ? ExitCode.changed : ExitCode.ok)
}
