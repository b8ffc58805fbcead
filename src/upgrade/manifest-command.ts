/** `ovroot manifest [DIR] [--output FILE]`: what an image build runs before packing its rootfs. */
import * as nodePath from 'node:path'
import { loadConfig } from '../config/load.js'
import { ExitCode, OvrootError, type ExitStatus } from '../errors.js'
import { bytesOf } from '../names.js'
import { realPath, statPath, writeFileAtomic } from '../sys/fs.js'
import { writeManifest } from './manifest.js'

export interface ManifestCommandOptions {
  configFile: string | undefined
  /** The tree; the configured top lower when absent. */
  dir: string | undefined
  /** Where to write it (atomically); stdout when absent. */
  output: string | undefined
}

export function runManifest(options: ManifestCommandOptions): ExitStatus {
  const given = options.dir ?? loadConfig(options.configFile).overlay.lower[0] ?? '/'
  const root = realPath(given)
  if (root === undefined || statPath(root)?.type !== 'dir')
    throw new OvrootError('ENOTDIR', ExitCode.environment, `manifest: ${given} is not a directory`)
  const exclude: string[] = []
  if (options.output !== undefined) {
    // The file being written is not part of the tree it describes.
    const outputDir = realPath(nodePath.dirname(nodePath.resolve(options.output)))
    const output = outputDir && nodePath.join(outputDir, nodePath.basename(options.output))
    const relative = output && nodePath.relative(root, output)
    if (relative && !relative.startsWith('..') && !nodePath.isAbsolute(relative)) exclude.push(bytesOf(relative))
  }
  const text = writeManifest(bytesOf(root === '/' ? '' : root), exclude)
  if (options.output === undefined) process.stdout.write(text)
  else writeFileAtomic(options.output, text)
  return ExitCode.ok
}
