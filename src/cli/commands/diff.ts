import type { CommandModule } from 'yargs'
import { usageError } from '../../errors.js'

interface DiffArgs {
  config?: string
  lower?: string[]
  upper?: string
  paths?: string[]
  all: boolean
  json: boolean
  stat: boolean
  patch: boolean
  conflicts: boolean
  'exit-code': boolean
  xattrs: 'auto' | 'trusted' | 'user'
  color: 'auto' | 'always' | 'never'
}

export const diffCommand: CommandModule<object, DiffArgs> = {
  command: 'diff [paths..]',
  describe: 'List what the upper changes relative to the lower, from the upper alone (no mount needed)',
  builder: (yargs) =>
    yargs
      .positional('paths', { type: 'string', array: true, describe: 'report only these subtrees of the merged view' })
      .option('lower', {
        type: 'string',
        array: true,
        requiresArg: true,
        describe: 'lower layer directory; repeat for several, top first',
        defaultDescription: '[overlay] lower',
      })
      .option('upper', {
        type: 'string',
        requiresArg: true,
        describe: 'upper directory (a mounted or copied flash)',
        defaultDescription: '[overlay] dir + /upper',
      })
      .option('all', {
        type: 'boolean',
        default: false,
        describe: 'also list upper entries identical to the lower, as unchanged',
      })
      .option('json', { type: 'boolean', default: false, describe: 'JSON Lines: one object per change' })
      .option('stat', {
        type: 'boolean',
        default: false,
        describe: 'print counts per kind of change instead of the list',
      })
      .option('patch', {
        type: 'boolean',
        default: false,
        describe: 'print a unified diff (git style) of changed regular files',
      })
      .option('conflicts', {
        type: 'boolean',
        default: false,
        describe: "the last firmware upgrade's conflicts: base, user and firmware side of each (with --patch: diffs)",
      })
      .option('exit-code', {
        type: 'boolean',
        default: false,
        describe: 'exit 1 when anything changed, 0 when nothing did',
      })
      .option('xattrs', {
        choices: ['auto', 'trusted', 'user'] as const,
        default: 'auto' as const,
        describe: 'overlay xattr namespace: user for userxattr overlays',
      })
      .option('color', {
        choices: ['auto', 'always', 'never'] as const,
        default: 'auto' as const,
        describe: 'colour the status letters (auto: on a terminal, unless NO_COLOR)',
      })
      .example('ovroot diff', 'what the user changed on this device')
      .example('ovroot diff --json /etc', 'changes under /etc as JSON Lines')
      .example('ovroot diff --lower /mnt/rom --upper /mnt/flash/upper --patch', "audit a copy of a device's flash")
      .example('ovroot diff --conflicts --patch', 'what the last firmware upgrade and the user both changed'),
  handler: async (args) => {
    if ((args.lower === undefined) !== (args.upper === undefined))
      throw usageError("--lower and --upper go together: give both, or neither to use the device's configuration")
    if (args.patch && (args.json || args.stat)) throw usageError('--patch cannot be combined with --json or --stat')
    if (args.conflicts) {
      if (args.stat || args.all || (args.paths ?? []).length > 0)
        throw usageError('--conflicts takes only --patch or --json (and --lower/--upper)')
      const { runConflicts } = await import('../../upgrade/conflicts.js')
      process.exitCode = runConflicts({
        configFile: args.config,
        lower: args.lower?.[0],
        upper: args.upper,
        patch: args.patch,
        json: args.json,
      })
      return
    }
    const { runDiff } = await import('../../diff/run.js')
    process.exitCode = await runDiff({
      configFile: args.config,
      lowers: args.lower,
      upper: args.upper,
      paths: args.paths ?? [],
      all: args.all,
      format: args.patch ? 'patch' : args.stat ? 'stat' : args.json ? 'json' : 'text',
      json: args.json,
      exitCode: args['exit-code'],
      namespace: args.xattrs === 'auto' ? undefined : args.xattrs,
      colour:
        args.color === 'always' || (args.color === 'auto' && process.stdout.isTTY === true && !process.env.NO_COLOR),
    })
  },
}
