import type { CommandModule } from 'yargs'
import { backupCommand } from './backup.js'
import { bootCommand } from './boot.js'
import { diffCommand } from './diff.js'
import { resetCommand } from './reset.js'
import { restoreCommand } from './restore.js'
import { statusCommand } from './status.js'
import { syncCommand } from './sync.js'

const asCommand = (command: object): CommandModule<object, never> => command as CommandModule<object, never>

export const commands = [bootCommand, statusCommand, diffCommand, resetCommand, backupCommand, restoreCommand, syncCommand].map(asCommand)
