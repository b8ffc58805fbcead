import type { CommandModule } from 'yargs'

export const bootCommand: CommandModule<object, { config?: string }> = {
  command: 'boot',
  describe: "Mount the overlay root at power-on (run by init/ovroot-init as PID 1's child, before the real init)",
  builder: (yargs) =>
    yargs.epilog(
      'Finds the flash through the [flash] drivers in order, formats it on first boot, applies a pending change (a factory reset, a restore, the end of an interrupted sync), mounts the overlay and pivots: / is the merged view, /rom the firmware, /overlay the flash. Flash trouble ends on a RAM upper with the reason in `ovroot status`. Kernel command-line arguments ovroot.SECTION.KEY=VALUE override the configuration; ovroot.reset=1 forces a factory reset.',
    ),
  handler: async (args) => {
    const { boot } = await import('../../boot/agent.js')
    process.exitCode = await boot(args.config)
  },
}
