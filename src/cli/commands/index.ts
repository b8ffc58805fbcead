import type { CommandModule } from 'yargs'
import { diffCommand } from './diff.js'

export const commands: CommandModule<object, never>[] = [diffCommand as unknown as CommandModule<object, never>]
