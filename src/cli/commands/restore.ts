import type { CommandModule } from 'yargs'
import { usageError } from '../../errors.js'

interface RestoreArgs {
  config?: string
  archive?: string
  upper?: string
  lower?: string[]
  'dry-run': boolean
  json: boolean
  yes: boolean
  reboot: boolean
  force: boolean
  'passphrase-file'?: string
  cancel: boolean
}

export const restoreCommand: CommandModule<object, RestoreArgs> = {
  command: 'restore [archive]',
  describe: 'Verify a backup (or an OpenWrt sysupgrade archive) completely, then make it the upper at the next boot',
  builder: (yargs) =>
    yargs
      .positional('archive', { type: 'string', describe: 'backup file, or - for standard input' })
      .option('upper', {
        type: 'string',
        requiresArg: true,
        describe: 'restore into this empty directory now, instead of the device at its next boot',
      })
      .option('lower', {
        type: 'string',
        array: true,
        requiresArg: true,
        describe: 'with --upper: the firmware layers, top first',
        defaultDescription: '[overlay] lower',
      })
      .option('dry-run', {
        type: 'boolean',
        default: false,
        describe: "verify, and list what the restore would change (ovroot diff's format); change nothing",
      })
      .option('json', { type: 'boolean', default: false, describe: 'with --dry-run: JSON Lines' })
      .option('yes', { alias: 'y', type: 'boolean', default: false, describe: 'do not ask for confirmation' })
      .option('reboot', { type: 'boolean', default: false, describe: 'reboot now to carry it out' })
      .option('force', {
        type: 'boolean',
        default: false,
        describe: 'restore a backup of other firmware even where the firmware changed the same files',
      })
      .option('passphrase-file', { type: 'string', requiresArg: true, describe: 'passphrase of an encrypted backup' })
      .option('cancel', {
        type: 'boolean',
        default: false,
        describe: 'cancel the change scheduled for the next boot (a restore or a reset)',
      })
      .epilog(
        "Nothing is changed until the whole archive is verified: structure, every checksum, every path. A backup replaces the upper; a sysupgrade archive (OpenWrt's sysupgrade -b) adds its files to it. The swap happens at the next boot, before the overlay is mounted, and survives a power cut at any instant.",
      ),
  handler: async (args) => {
    if (!args.cancel && args.archive === undefined)
      throw usageError('restore needs an archive: a file, or - for standard input')
    if (args.lower !== undefined && args.upper === undefined)
      throw usageError('--lower goes with --upper (an offline restore)')
    const { runRestore } = await import('../../restore/command.js')
    process.exitCode = await runRestore({
      configFile: args.config,
      source: args.archive ?? '-',
      upper: args.upper,
      lowers: args.lower,
      dryRun: args['dry-run'],
      json: args.json,
      yes: args.yes,
      reboot: args.reboot,
      force: args.force,
      passphraseFile: args['passphrase-file'],
      cancel: args.cancel,
    })
  },
}
