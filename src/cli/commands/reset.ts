import type { CommandModule } from 'yargs'

interface ResetArgs {
  config?: string
  yes: boolean
  reboot: boolean
  'dry-run': boolean
  json: boolean
  keep?: string[]
  paths?: string[]
  upper?: string
  cancel: boolean
}

export const resetCommand: CommandModule<object, ResetArgs> = {
  command: 'reset [paths..]',
  describe: "Factory reset: wipe the user's changes at the next boot, keeping what the keep list names",
  builder: (yargs) =>
    yargs
      .positional('paths', {
        type: 'string',
        array: true,
        describe: "reset only these paths (and what is below them) to the firmware's state",
      })
      .option('yes', { alias: 'y', type: 'boolean', default: false, describe: 'do not ask for confirmation' })
      .option('reboot', { type: 'boolean', default: false, describe: 'reboot now to carry it out' })
      .option('dry-run', {
        type: 'boolean',
        default: false,
        describe: "list the changes the reset discards and keeps (ovroot diff's format), change nothing",
      })
      .option('json', {
        type: 'boolean',
        default: false,
        describe: 'with --dry-run: JSON Lines, ovroot diff\'s records with a "reset" field',
      })
      .option('keep', {
        type: 'string',
        array: true,
        requiresArg: true,
        describe: 'also keep this path or glob (repeatable)',
      })
      .option('upper', {
        type: 'string',
        requiresArg: true,
        describe: 'reset this unmounted upper now (images, recovery)',
      })
      .option('cancel', {
        type: 'boolean',
        default: false,
        describe: 'cancel the change scheduled for the next boot (a reset or a restore)',
      })
      .epilog(
        "The keep list is the union of [reset] keep, the files in [reset] keep_lists (OpenWrt's /etc/sysupgrade.conf and /lib/upgrade/keep.d/*: one path or glob a line) and --keep. Everything else in the upper goes, hidden files included; with PATHs, only what is at or below them. The reset runs at the next boot, before the overlay is mounted, needs no free space on the flash (it works on a full one), and survives a power cut at any instant.",
      ),
  handler: async (args) => {
    const { runReset } = await import('../../reset/command.js')
    process.exitCode = await runReset({
      configFile: args.config,
      yes: args.yes,
      reboot: args.reboot,
      dryRun: args['dry-run'],
      json: args.json,
      keep: args.keep ?? [],
      paths: args.paths ?? [],
      upper: args.upper,
      cancel: args.cancel,
    })
  },
}
