/**
 * `ovroot restore --dry-run`: the merged view the restore would give,
 * compared with the one the device has now, in `ovroot diff`'s formats.
 * Both are stacks over the same firmware layers, the current upper being one
 * more layer of the "before" view.
 */
import { BufferedOutput, jsonLine, LeftOut, statusLine } from '../diff/report.js'
import { ExitCode, type ExitStatus } from '../errors.js'
import { OverlayDiff } from '../overlay/diff.js'
import { LayerStack, type Layer } from '../overlay/stack.js'
import { OverlayXattrs, type XattrNamespace } from '../overlay/xattrs.js'
import { readEntry, replaceMetadata } from '../sys/entries.js'
import { hostTreeReader, statPath } from '../sys/fs.js'
import type { ExtractResult } from './extract.js'
import { bytesOf } from '../names.js'

export function printRestorePreview(
  target: { upper: string; lowers: string[]; namespace: XattrNamespace },
  staging: string,
  result: ExtractResult,
  json: boolean,
): ExitStatus {
  const xattrs = new OverlayXattrs(result.header?.namespace ?? target.namespace)
  const lowers: Layer[] = target.lowers.map((root) => ({
    root: bytesOf(root === '/' ? '' : root.replace(/\/+$/, '')),
    role: 'lower',
  }))
  const current: Layer[] =
    statPath(target.upper)?.type === 'dir' ? [{ root: bytesOf(target.upper), role: 'lower' }] : []
  // A merge leaves the upper's root as it is: the staging's own (a temporary directory's) is no change to /.
  if (result.kind === 'sysupgrade' && current.length > 0) {
    const root = readEntry(bytesOf(target.upper), '.', '')
    if (root !== 'socket') replaceMetadata(bytesOf(staging), root)
  }
  const restored: Layer = { root: bytesOf(staging), role: 'upper' }
  // A sysupgrade archive lands on the current upper; a backup replaces it.
  const after = new LayerStack(
    [restored, ...(result.kind === 'sysupgrade' ? current : []), ...lowers],
    hostTreeReader,
    xattrs,
  )
  const before = new LayerStack([...current, ...lowers], hostTreeReader, xattrs)
  const output = new BufferedOutput((text) => process.stdout.write(text))
  let changes = 0
  const leftOut = new LeftOut('the preview', 'restore --dry-run')
  new OverlayDiff(after, before, hostTreeReader, xattrs, { all: false, paths: [] }).run((change) => {
    changes++
    output.push(json ? jsonLine(change) : statusLine(change, false))
  }, leftOut.note)
  output.flush()
  // An empty list on stdout stays what scripts parse; a person is told it means no change, not no answer.
  if (changes === 0 && !json) process.stderr.write('ovroot: restoring this archive would change nothing\n')
  return leftOut.status(ExitCode.ok)
}
