/**
 * `ovroot sync`: persist the RAM upper to the flash now (returning once it is
 * durable), or `--watch`: the daemon that does it after changes. `--to DIR`
 * mirrors the live upper into DIR/upper with the same transactions.
 */
import { bytesOf } from '../names.js'
import { resolve } from 'node:path'
import { loadConfig } from '../config/load.js'
import type { Config } from '../config/schema.js'
import { ExitCode, OvrootError, type ExitStatus } from '../errors.js'
import { namespaceForMount } from '../overlay/xattrs.js'
import { readBootRecord, refuseLiveLayer, type BootRecord } from '../pending/device.js'
import { globToRegExp } from '../glob.js'
import { makeDirectory } from '../sys/fs.js'
import { recordFailure, recordSync } from './stats.js'
import { lockedSync } from './lock.js'
import type { SyncSource } from './transaction.js'
import { flashLayout, type FlashLayout } from '../state/flash.js'
import { counted } from '../plural.js'

export interface SyncOptions {
  configFile: string | undefined
  watch: boolean
  to: string | undefined
}

export async function runSync(options: SyncOptions): Promise<ExitStatus> {
  const config = loadConfig(options.configFile)
  const record = readBootRecord(config)
  const source = syncSource(config, record)
  const layout = options.to === undefined ? deviceLayout(config, record) : mirrorLayout(options.to)
  if (options.watch) {
    if (options.to !== undefined)
      throw new OvrootError(
        'EUSAGE',
        ExitCode.usage,
        "--watch keeps the device's own flash in sync; use --to DIR for one mirror at a time",
      )
    const { watchAndSync } = await import('./watch.js')
    return watchAndSync(config, source, layout)
  }
  const outcome = await lockedSync(config.boot.run_dir, source, layout).catch((error: unknown) => {
    // Status shows it (the device's own syncs: a mirror's are the caller's to see).
    if (options.to === undefined)
      recordFailure(
        config.boot.run_dir,
        `${new Date().toISOString()}: ovroot sync failed: ${error instanceof OvrootError ? error.message : String(error)}`,
      )
    throw error
  })
  if (outcome.kind === 'blocked') {
    process.stderr.write(
      `ovroot: a ${outcome.change} is scheduled for the next boot: not syncing, which would undo it\n`,
    )
    return ExitCode.ok
  }
  const { written, removed, bytes } = outcome.result
  if (options.to === undefined) recordSync(config.boot.run_dir, written + removed, bytes)
  process.stdout.write(
    written + removed === 0
      ? 'ovroot: nothing to sync\n'
      : `ovroot: synced ${counted(written, 'entry', 'entries')} (${(bytes / 1024).toFixed(0)} KiB), removed ${removed}\n`,
  )
  return ExitCode.ok
}

export function syncSource(config: Config, record: BootRecord): SyncSource {
  const upper = record.state.overlay?.upper
  if (!upper)
    throw new OvrootError(
      'ENOSTATUS',
      ExitCode.environment,
      'the boot record names no upper: this boot mounted no overlay',
    )
  // Patterns are text, paths are bytes: a pattern matches the bytes of its UTF-8.
  const excluded = config.sync.exclude.map((pattern) => globToRegExp(bytesOf(pattern)))
  return {
    upper,
    namespace: namespaceForMount(config.overlay.options),
    exclude: config.sync.exclude,
    excluded: (path) => excluded.some((pattern) => pattern.test(`/${path}`)),
  }
}

function deviceLayout(config: Config, record: BootRecord): FlashLayout {
  if (!record.state.sync) {
    const why = config.sync.enabled
      ? `the flash was not usable at boot (mode ${record.state.mode})`
      : '[sync] enabled = no'
    throw new OvrootError('ENOSYNC', ExitCode.environment, `this device does not run on a synced RAM upper: ${why}`)
  }
  return flashLayout(config)
}

function mirrorLayout(to: string): FlashLayout {
  const root = resolve(to)
  refuseLiveLayer(`${root}/upper`)
  makeDirectory(root)
  return { root, upperName: 'upper' }
}
