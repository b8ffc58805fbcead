import type { CommandModule } from 'yargs'

interface ManifestArgs {
  config?: string
  dir?: string
  output?: string
}

export const manifestCommand: CommandModule<object, ManifestArgs> = {
  command: 'manifest [dir]',
  describe: 'Write the firmware manifest of a root tree (image builders ship it at /usr/lib/ovroot/firmware.manifest)',
  builder: (yargs) =>
    yargs
      .positional('dir', { type: 'string', describe: 'the root tree', defaultDescription: 'the top [overlay] lower' })
      .option('output', { type: 'string', requiresArg: true, describe: 'write here (atomically) instead of stdout' })
      .example(
        'ovroot manifest rootfs --output rootfs/usr/lib/ovroot/firmware.manifest',
        'before mksquashfs, in an image build',
      ),
  handler: async (args) => {
    const { runManifest } = await import('../../upgrade/manifest-command.js')
    process.exitCode = runManifest({ configFile: args.config, dir: args.dir, output: args.output })
  },
}
