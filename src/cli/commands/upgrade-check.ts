import type { CommandModule } from 'yargs'
import { usageError } from '../../errors.js'

interface UpgradeCheckArgs {
  config?: string
  image: string
  lower?: string
  upper?: string
  json: boolean
}

export const upgradeCheckCommand: CommandModule<object, UpgradeCheckArgs> = {
  command: 'upgrade-check <image>',
  describe:
    'Before flashing: what the first boot on a new firmware image would do to the upper, class by class (exit 8: conflicts, hidden or unknown entries)',
  builder: (yargs) =>
    yargs
      .positional('image', { type: 'string', demandOption: true, describe: 'the new squashfs image (or a directory)' })
      .option('lower', {
        type: 'string',
        requiresArg: true,
        describe: 'the running firmware',
        defaultDescription: 'the top [overlay] lower',
      })
      .option('upper', {
        type: 'string',
        requiresArg: true,
        describe: 'the upper (its flash is the directory above)',
        defaultDescription: '[overlay] dir + /upper',
      })
      .option('json', {
        type: 'boolean',
        default: false,
        describe: 'one JSON object: counts, named entries, every class',
      })
      .example('ovroot upgrade-check /tmp/firmware.squashfs || echo "look before flashing"', 'in an updater'),
  handler: async (args) => {
    if ((args.lower === undefined) !== (args.upper === undefined))
      throw usageError("--lower and --upper go together: give both, or neither to use the device's configuration")
    const { runUpgradeCheck } = await import('../../upgrade/check.js')
    process.exitCode = await runUpgradeCheck({
      configFile: args.config,
      image: args.image,
      lower: args.lower,
      upper: args.upper,
      json: args.json,
    })
  },
}
