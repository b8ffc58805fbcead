/**
 * `ovroot reset --dry-run`: the device's changes as `ovroot diff` reports
 * them, each marked with what the reset does to it.
 */
import type { XattrNamespace } from '../overlay/xattrs.js'
import { checkDiffRequest, openDiff } from '../diff/open.js'
import { BufferedOutput, jsonLine, LeftOut, statusLine } from '../diff/report.js'
import { ExitCode, type ExitStatus } from '../errors.js'
import type { ResetPlan } from './prune.js'

export function printResetPreview(
  upper: string,
  lowers: string[],
  namespace: XattrNamespace,
  plan: ResetPlan,
  json: boolean,
): ExitStatus {
  const removed = new Set(plan.remove)
  const discards = (path: string): boolean => {
    for (let prefix = path; prefix !== ''; prefix = prefix.slice(0, prefix.lastIndexOf('/')))
      if (removed.has(prefix)) return true
    return false
  }
  const output = new BufferedOutput((text) => process.stdout.write(text))
  const leftOut = new LeftOut('the preview', 'reset --dry-run')
  openDiff(checkDiffRequest({ upper, lowers, namespace, all: false, paths: [] })).run((change) => {
    const action = discards(change.path) ? 'discard' : 'keep'
    output.push(
      json ? `{"reset":"${action}",${jsonLine(change).slice(1)}` : `${action.padEnd(8)}${statusLine(change, false)}`,
    )
  }, leftOut.note)
  output.flush()
  return leftOut.status(ExitCode.ok)
}
