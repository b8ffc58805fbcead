#!/usr/bin/env node
/**
 * Entry point. `ovroot boot` runs on every power-on as a child of PID 1, where
 * loading yargs alone would cost 130 ms (seconds under emulation), so a plain
 * `ovroot boot [--config FILE]` goes straight to the agent; the sync daemon as
 * the init script starts it, `ovroot sync --watch [--config FILE]`, straight
 * to the sync command (yargs and its help texts would stay in the daemon's
 * heap for good: README, Performance); everything else, including `ovroot
 * boot --help`, goes through the yargs command line.
 */
import { ExitCode, OvrootError } from '../errors.js'

function report(error: unknown): number {
  if (error instanceof OvrootError) {
    process.stderr.write(`ovroot: ${error.message.split('\n')[0]}\n`)
    return error.exitStatus
  }
  const text = error instanceof Error ? (error.stack ?? error.message) : String(error)
  process.stderr.write(`ovroot: internal error: ${text.split('\n')[0]}\n`)
  if (process.env.OVROOT_DEBUG) process.stderr.write(`${text}\n`)
  return ExitCode.internal
}

async function run(argv: string[]): Promise<void> {
  const plainBoot = argv[0] === 'boot' && (argv.length === 1 || (argv.length === 3 && argv[1] === '--config'))
  if (plainBoot) {
    const { boot } = await import('../boot/agent.js')
    process.exitCode = await boot(argv[2])
    return
  }
  const daemon = plainDaemon(argv)
  if (daemon) {
    const { runSync } = await import('../sync/command.js')
    process.exitCode = await runSync({ configFile: daemon.config, watch: true, to: undefined })
    return
  }
  const { main } = await import('./parser.js')
  await main(argv)
}

/** `sync --watch`, with `--config FILE` before or after it: the configuration file; undefined for any other command line. */
function plainDaemon(argv: string[]): { config: string | undefined } | undefined {
  const [command, first, second, third] = argv
  if (argv.length === 2 && command === 'sync' && first === '--watch') return { config: undefined }
  if (argv.length !== 4 || command !== 'sync') return undefined
  if (first === '--watch' && second === '--config' && third?.startsWith('-') === false) return { config: third }
  if (first === '--config' && third === '--watch' && second?.startsWith('-') === false) return { config: second }
  return undefined
}

run(process.argv.slice(2)).then(
  () => undefined,
  (error: unknown) => {
    process.exitCode = report(error)
  },
)
