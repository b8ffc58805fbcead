#!/usr/bin/env node
/**
 * Entry point. `ovroot boot` runs on every power-on as a child of PID 1, where
 * loading yargs alone would cost 130 ms (seconds under emulation), so a plain
 * `ovroot boot [--config FILE]` goes straight to the agent; everything else,
 * including `ovroot boot --help`, goes through the yargs command line.
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
  const { main } = await import('./parser.js')
  await main(argv)
}

run(process.argv.slice(2)).then(
  () => undefined,
  (error: unknown) => {
    process.exitCode = report(error)
  },
)
