/**
 * The ovroot command line: yargs parses, each command module only declares its
 * options and imports its implementation when it runs, so one command loads
 * none of another's code.
 */
import yargs from 'yargs'
import { ExitCode, OvrootError } from '../errors.js'
import { commands } from './commands/index.js'
import { VERSION } from '../version.js'

const EPILOG = `EXIT STATUS
  0   success
  1   diff --exit-code: there are changes
  2   usage error
  3   configuration error
  4   environment: not root, missing directory, device or tool
  5   invalid data: not an upper, corrupt flash or archive
  6   I/O error: a read or write failed, or the medium is full
  7   aborted: a confirmation was declined
  8   upgrade-check: conflicts, hidden or unknown entries (see the listing)
  70  internal error (a bug: please report it)

FILES
  /etc/ovroot.conf   configuration (see --config)

See README.md for every configuration key.`

export async function main(argv: string[]): Promise<void> {
  let parser = yargs(argv)
    .scriptName('ovroot')
    .usage(
      "ovroot <command> [options]\n\nManage an overlay root: the read-only firmware (lower) under the user's changes (upper) on flash.",
    )
    .option('config', {
      type: 'string',
      describe: 'configuration file',
      default: undefined,
      defaultDescription: '/etc/ovroot.conf',
      global: true,
      requiresArg: true,
    })
    .version(VERSION)
    .strict()
    .demandCommand(1, 'a command is required')
    .recommendCommands()
    .help()
    .alias('help', 'h')
    .wrap(Math.min(100, process.stdout.columns || 100))
    .epilog(EPILOG)
    .fail((message: string, error: Error | undefined) => {
      if (error) throw error
      throw new OvrootError('EUSAGE', ExitCode.usage, `${namingTheCommand(message, argv)} (see ovroot --help)`)
    })
  for (const command of commands) parser = parser.command(command)
  await parser.parseAsync()
}

/** yargs' suggestion alone ("Did you mean boot?") does not say what was typed: name it first. */
function namingTheCommand(message: string, argv: string[]): string {
  const typed = argv.find((argument, at) => !argument.startsWith('-') && argv[at - 1] !== '--config')
  if (!message.startsWith('Did you mean') || typed === undefined) return message
  return `unknown command '${typed}'; ${message.replace('Did you mean', 'did you mean')}`
}
