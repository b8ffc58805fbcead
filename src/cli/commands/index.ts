import type { ArgumentsCamelCase, CommandModule } from 'yargs'
import { backupCommand } from './backup.js'
import { bootCommand } from './boot.js'
import { diffCommand } from './diff.js'
import { manifestCommand } from './manifest.js'
import { resetCommand } from './reset.js'
import { restoreCommand } from './restore.js'
import { statusCommand } from './status.js'
import { syncCommand } from './sync.js'
import { upgradeCheckCommand } from './upgrade-check.js'

const asCommand = (command: object): CommandModule<object, never> => command as CommandModule<object, never>

/** A command that calls into libc checks the platform before any work, so an unsupported one gets one line and nothing half-done. */
function needingSystemLayer(command: CommandModule<object, never>): CommandModule<object, never> {
  return {
    ...command,
    handler: async (args: ArgumentsCamelCase<never>) => {
      const { requireSystemLayer } = await import('../../sys/libc.js')
      requireSystemLayer()
      await command.handler(args)
    },
  }
}

export const commands = [
  asCommand(bootCommand),
  asCommand(statusCommand),
  ...[diffCommand, resetCommand, backupCommand, restoreCommand, syncCommand, manifestCommand, upgradeCheckCommand]
    .map(asCommand)
    .map(needingSystemLayer),
]
