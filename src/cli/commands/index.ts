import type { CommandModule } from 'yargs'
import { bootCommand } from './boot.js'
import { diffCommand } from './diff.js'
import { resetCommand } from './reset.js'
import { statusCommand } from './status.js'

const asCommand = (command: object): CommandModule<object, never> => command as CommandModule<object, never>

export const commands = [bootCommand, statusCommand, diffCommand, resetCommand].map(asCommand)
