import type { CommandModule } from 'yargs'

export const statusCommand: CommandModule<object, { config?: string; json: boolean }> = {
  command: 'status',
  describe: 'Show what the root runs on (flash, ram, degraded, failsafe) and why',
  builder: (yargs) =>
    yargs.option('json', { type: 'boolean', default: false, describe: 'one JSON object, for scripts and fleet tools' }),
  handler: async (args) => {
    const { showStatus } = await import('../../status/show.js')
    process.exitCode = showStatus(args.config, args.json)
  },
}
