import type { CommandModule } from 'yargs'

interface SyncArgs {
  config?: string
  watch: boolean
  to?: string
}

export const syncCommand: CommandModule<object, SyncArgs> = {
  command: 'sync',
  describe: 'Persist the RAM upper to the flash now, in one power-cut-safe transaction ([sync] enabled = yes)',
  builder: (yargs) =>
    yargs
      .option('watch', {
        type: 'boolean',
        default: false,
        describe:
          'the daemon: sync after [sync] quiet seconds of calm, at most [sync] max_delay after a change, and once more on SIGTERM',
      })
      .option('to', {
        type: 'string',
        requiresArg: true,
        describe: 'mirror the live upper into DIR/upper instead (a USB stick), with the same transactions',
      })
      .epilog(
        'Only what changed is written (a changed file whole); an idle device writes nothing. A power cut at any instant leaves, after the next boot, exactly the last committed sync. A scheduled reset or restore is never undone: syncs wait for the reboot that applies it.',
      ),
  handler: async (args) => {
    const { runSync } = await import('../../sync/command.js')
    process.exitCode = await runSync({ configFile: args.config, watch: args.watch, to: args.to })
  },
}
