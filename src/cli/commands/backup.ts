import type { CommandModule } from 'yargs'
import { usageError } from '../../errors.js'

interface BackupArgs {
  config?: string
  archive?: string
  output: string
  upper?: string
  lower?: string[]
  'changes-only': boolean
  exclude?: string[]
  'passphrase-file'?: string
}

export const backupCommand: CommandModule<object, BackupArgs> = {
  command: 'backup [archive]',
  describe:
    "Archive the upper faithfully: a gzip'd pax tar with every xattr, whiteouts, hardlinks, sparse holes and one digest over the whole stream",
  builder: (yargs) =>
    yargs
      .positional('archive', { type: 'string', describe: 'archive file, the same as --output' })
      .option('output', {
        alias: 'o',
        type: 'string',
        default: '-',
        requiresArg: true,
        describe: 'archive file (written 0600, atomically), or - for standard output',
      })
      .option('upper', {
        type: 'string',
        requiresArg: true,
        describe: 'upper directory (a copy of a flash)',
        defaultDescription: '[overlay] dir + /upper',
      })
      .option('lower', {
        type: 'string',
        array: true,
        requiresArg: true,
        describe: 'lower layer directory; repeat for several, top first',
        defaultDescription: '[overlay] lower',
      })
      .option('changes-only', {
        type: 'boolean',
        default: false,
        describe: 'only what ovroot diff reports as changed (and the directories above it)',
      })
      .option('exclude', {
        type: 'string',
        array: true,
        requiresArg: true,
        describe: 'leave out this path or glob of the merged view and what is below it (repeatable)',
      })
      .option('passphrase-file', {
        type: 'string',
        requiresArg: true,
        describe: 'encrypt (scrypt, AES-256-GCM) with the passphrase in this file',
      })
      .example('ovroot backup /tmp/device.ovb', 'back up this device')
      .example('ssh router ovroot backup - > router.ovb', 'back up a device over ssh')
      .epilog(
        "GNU tar reads the archive: tar --xattrs --xattrs-include='*' -xpzf FILE (as root) extracts a directory equal to the upper.",
      ),
  handler: async (args) => {
    if ((args.lower === undefined) !== (args.upper === undefined))
      throw usageError("--lower and --upper go together: give both, or neither to use the device's configuration")
    if (args.archive !== undefined && args.output !== '-' && args.output !== args.archive)
      throw usageError(`two archives named: ${args.archive} and --output ${args.output}; give one`)
    const { runBackup } = await import('../../backup/command.js')
    process.exitCode = await runBackup({
      configFile: args.config,
      output: args.archive ?? args.output,
      upper: args.upper,
      lowers: args.lower,
      changesOnly: args['changes-only'],
      exclude: args.exclude ?? [],
      passphraseFile: args['passphrase-file'],
    })
  },
}
