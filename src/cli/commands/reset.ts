import type { CommandModule } from 'yargs'

interface ResetArgs {
  config?: string
  yes: boolean
  reboot: boolean
  'dry-run': boolean
  keep?: string[]
  upper?: string
  cancel: boolean
}

export const resetCommand: CommandModule<object, ResetArgs> = {
  command: 'reset',
  describe: 'Factory reset: wipe the user\'s changes at the next boot, keeping what the keep list names',
  builder: (yargs) =>
    yargs
      .option('yes', { alias: 'y', type: 'boolean', default: false, describe: 'do not ask for confirmation' })
      .option('reboot', { type: 'boolean', default: false, describe: 'reboot now to carry it out' })
      .option('dry-run', { type: 'boolean', default: false, describe: 'list what would be removed and kept, change nothing' })
      .option('keep', { type: 'string', array: true, requiresArg: true, describe: 'also keep this path or glob (repeatable)' })
      .option('upper', { type: 'string', requiresArg: true, describe: 'reset this unmounted upper now (images, recovery)' })
      .option('cancel', { type: 'boolean', default: false, describe: 'cancel a scheduled reset' })
      .epilog(
        'The keep list is the union of [reset] keep, the files in [reset] keep_lists (OpenWrt\'s /etc/sysupgrade.conf and /lib/upgrade/keep.d/*: one path or glob a line) and --keep. Everything else in the upper goes, hidden files included. The reset runs at the next boot, before the overlay is mounted, and survives a power cut at any instant.',
      ) as never,
  handler: async (args) => {
    const { runReset } = await import('../../reset/command.js')
    process.exitCode = await runReset({
      configFile: args.config,
      yes: args.yes,
      reboot: args.reboot,
      dryRun: args['dry-run'],
      keep: args.keep ?? [],
      upper: args.upper,
      cancel: args.cancel,
    })
  },
}
