/** The configuration file: documented defaults, strict validation, one-line errors. */
import t from 'tap'
import * as fs from 'node:fs'
import * as os from 'node:os'
import { parse } from 'ini'
import { applyOverride, forcedReset, parseConfig } from '../src/config/load.js'
import { parseKernelArguments } from '../src/state/cmdline.js'
import { defaultConfig, SCHEMA } from '../src/config/schema.js'
import { OvrootError } from '../src/errors.js'
import { VERSION } from '../src/version.js'
import { ovroot } from './helpers/overlay.js'

function catchError(action: () => unknown): Error | undefined {
  try {
    action()
  } catch (error) {
    return error as Error
  }
  return undefined
}

const shipped = fs.readFileSync(new URL('../etc/ovroot.conf', import.meta.url), 'utf8')

await t.test('etc/ovroot.conf documents every key with its default', async (t) => {
  t.same(parseConfig(shipped, 'etc/ovroot.conf'), defaultConfig())
  const document = parse(shipped) as Record<string, Record<string, string>>
  for (const [section, keys] of Object.entries(SCHEMA)) {
    for (const key of Object.keys(keys))
      t.ok(document[section] && key in document[section], `[${section}] ${key} is in etc/ovroot.conf`)
  }
})

await t.test('values are parsed into their types', async (t) => {
  const config = parseConfig(
    '[overlay]\nlower = /rom /rom2\noptions = redirect_dir=on,metacopy=on\n[flash]\ndrivers = ubi ram\nreformat_corrupt = yes\n[boot]\ntimeout = 5\n',
    'x.conf',
  )
  t.same(config.overlay.lower, ['/rom', '/rom2'])
  t.same(config.overlay.options, ['redirect_dir=on', 'metacopy=on'])
  t.same(config.flash.drivers, ['ubi', 'ram'])
  t.equal(config.flash.reformat_corrupt, true)
  t.equal(config.boot.timeout, 5)
  const sync = parseConfig(
    '[sync]\nenabled = yes\nbudget = 64m\nquiet = 10\nexclude = /tmp /var/log/*.tmp\n',
    'x.conf',
  ).sync
  t.same(
    sync,
    { enabled: true, quiet: 10, max_delay: 300, budget: 64 << 20, exclude: ['/tmp', '/var/log/*.tmp'] },
    '[sync] keys, budget with a unit',
  )
})

await t.test('a file a Windows editor saved (a UTF-8 byte order mark, CRLF line ends) reads as written', async (t) => {
  const config = parseConfig('\uFEFF[flash]\r\ndrivers = ubi ram\r\n[boot]\r\ntimeout = 5\r\n', 'x.conf')
  t.same(config.flash.drivers, ['ubi', 'ram'])
  t.equal(config.boot.timeout, 5)
})

await t.test('a quoted value reads as the same value unquoted', async (t) => {
  // The ini parser turns '30' into a number: the key then said "timeout = 30: expected a whole number".
  for (const quoted of ["'30'", '"30"'])
    t.equal(parseConfig(`[boot]\ntimeout = ${quoted}\n`, 'x.conf').boot.timeout, 30, quoted)
  t.equal(parseConfig("[flash]\nreformat_corrupt = 'yes'\n", 'x.conf').flash.reformat_corrupt, true)
})

await t.test('errors name the file, the section, the key and what was expected', async (t) => {
  const cases: [string, RegExp][] = [
    ['[flash]\nreformat_corrupt = maybe\n', /^x\.conf: \[flash\] reformat_corrupt = maybe: expected yes or no$/],
    [
      '[flash]\ndrivers = mtd floppy\n',
      /^x\.conf: \[flash\] drivers = mtd floppy: expected a list of media drivers from mtd, ubi, block, ram$/,
    ],
    [
      '[overlay]\nlower =\n',
      /^x\.conf: \[overlay\] lower = : expected absolute paths separated by spaces, at least one$/,
    ],
    ['[flash]\nfrobnicate = 1\n', /^x\.conf: \[flash\] frobnicate: unknown key; expected one of drivers, name, device/],
    [
      '[network]\nx = 1\n',
      /^x\.conf: \[network\]: unknown section; expected one of \[overlay\], \[flash\], \[boot\], \[reset\], \[sync\], \[upgrade\]$/,
    ],
    [
      '[sync]\nbudget = lots\n',
      /^x\.conf: \[sync\] budget = lots: expected a number of bytes, with k, m or g \(0: no limit\)$/,
    ],
    ['[sync]\nexclude = tmp\n', /^x\.conf: \[sync\] exclude = tmp: expected absolute paths/],
    ['lower = /rom\n', /^x\.conf: lower: a key outside any section/],
    ['[overlay]\nlower = rom\n', /expected absolute paths separated by spaces/],
    ['[overlay]\noptions = lowerdir=/x\n', /expected overlay mount options/],
    ['[boot]\ntimeout = 0\n', /expected a whole number of seconds from 1 to 3600/],
    ['[flash]\ndevice = sda1\n', /expected empty, a \/dev path, LABEL=name or PARTUUID=id/],
  ]
  for (const [text, message] of cases) {
    const error = catchError(() => parseConfig(text, 'x.conf'))
    t.ok(error instanceof OvrootError && error.exitStatus === 3, `${message.source}: a configuration error`)
    t.match(error?.message, message)
  }
})

await t.test('kernel command-line overrides go through the same validation', async (t) => {
  const config = defaultConfig()
  applyOverride(config, 'kernel command line', 'flash.drivers', 'ram')
  t.same(config.flash.drivers, ['ram'])
  t.throws(
    () => applyOverride(config, 'kernel command line', 'flash.bogus', '1'),
    /kernel command line: \[flash\] bogus: unknown key/,
  )
  t.throws(() => applyOverride(config, 'kernel command line', 'nodots', '1'), /expected section\.key/)
})

await t.test('ovroot.reset takes the words [flash] reformat_corrupt takes; anything else is refused', async (t) => {
  const reset = (cmdline: string): boolean => forcedReset(parseKernelArguments(cmdline))
  for (const yes of ['ovroot.reset=1', 'ovroot.reset=yes', 'ovroot.reset=true', 'ovroot.reset=on', 'ovroot.reset'])
    t.equal(reset(`quiet ${yes} console=ttyS0`), true, yes)
  for (const no of ['', 'ovroot.reset=0', 'ovroot.reset=no', 'ovroot.reset=off', 'ovroot.reset=1 ovroot.reset=0'])
    t.equal(reset(no), false, no || 'absent')
  t.throws(() => reset('ovroot.reset=please'), {
    message: 'kernel command line: ovroot.reset=please: expected yes or no',
  })
  // An empty value is a template or typo, not a yes: a reset button must not fire on it.
  t.throws(() => reset('quiet ovroot.reset= console=ttyS0'), {
    message: 'kernel command line: ovroot.reset=: expected yes or no',
  })
})

await t.test('what the ini format would silently drop is refused, naming the key', async (t) => {
  const refused: [string, RegExp][] = [
    ['[reset]\nkeep = /etc/a\nkeep = /etc/b\n', /^x\.conf: \[reset\] keep: given twice; expected once$/],
    [
      '[reset]\nkeep = /etc/a\n[sync]\nquiet = 5\n[reset]\nkeep = /etc/b\n',
      /^x\.conf: \[reset\] keep: given twice; expected once$/,
    ],
    [
      '[reset]\nkeep = /root/notes#1 /etc/x\n',
      /^x\.conf: \[reset\] keep = \/root\/notes#1 \/etc\/x: expected no ; or #/,
    ],
    ['[sync]\nexclude = /tmp/a;b /var\n', /^x\.conf: \[sync\] exclude = \/tmp\/a;b \/var: expected no ; or #/],
  ]
  for (const [text, expected] of refused) {
    const error = catchError(() => parseConfig(text, 'x.conf'))
    t.ok(error instanceof OvrootError && error.exitStatus === 3, text)
    t.match(error?.message, expected)
  }
  t.same(
    parseConfig('[reset]\nkeep = /etc/a ; why\nkeep_lists = /etc/b # why\n[sync]\nexclude = /tmp/a\\;b\n', 'x.conf'),
    {
      ...defaultConfig(),
      reset: { keep: ['/etc/a'], keep_lists: ['/etc/b'] },
      sync: { ...defaultConfig().sync, exclude: ['/tmp/a;b'] },
    },
    'a comment after a space, an escaped ; in a value',
  )
})

await t.test('a bad configuration stops the command with exit status 3 and one line', async (t) => {
  const file = `${fs.mkdtempSync(`${os.tmpdir()}/ovroot-conf-`)}/bad.conf`
  fs.writeFileSync(file, '[flash]\nreformat_corrupt = maybe\n')
  const result = ovroot(['diff', '--config', file])
  t.equal(result.status, 3)
  t.equal(result.stderr, `ovroot: ${file}: [flash] reformat_corrupt = maybe: expected yes or no\n`)
})

await t.test(
  'a --config FILE given explicitly is read and validated even when --lower and --upper make it unnecessary',
  async (t) => {
    const dir = fs.mkdtempSync(`${os.tmpdir()}/ovroot-conf-`)
    fs.mkdirSync(`${dir}/lower`)
    fs.mkdirSync(`${dir}/upper`)
    const missing = ovroot([
      'diff',
      '--config',
      `${dir}/missing.conf`,
      '--lower',
      `${dir}/lower`,
      '--upper',
      `${dir}/upper`,
    ])
    t.equal(missing.status, 4)
    t.match(missing.stderr, /missing\.conf: no such file or directory/)
    fs.writeFileSync(`${dir}/bad.conf`, '[flash]\nfrobnicate = 1\n')
    const bad = ovroot(['diff', '--config', `${dir}/bad.conf`, '--lower', `${dir}/lower`, '--upper', `${dir}/upper`])
    t.equal(bad.status, 3)
    t.match(bad.stderr, /\[flash\] frobnicate: unknown key/)
  },
)

await t.test('--version and --help', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  t.equal(VERSION, pkg.version, 'src/version.ts follows package.json')
  t.equal(ovroot(['--version']).stdout.trim(), pkg.version)
  const help = ovroot(['--help'])
  t.equal(help.status, 0)
  t.match(help.stdout, /EXIT STATUS/)
  t.match(help.stdout, /ovroot diff/)
  const none = ovroot([])
  t.equal(none.status, 2)
  t.match(none.stderr, /a command is required/)
  for (const args of [['statsu'], ['--config', '/etc/ovroot.conf', 'statsu']]) {
    const typo = ovroot(args)
    t.equal(typo.status, 2, `${args.join(' ')}: a usage error`)
    t.equal(
      typo.stderr,
      "ovroot: unknown command 'statsu'; did you mean status? (see ovroot --help)\n",
      'names what was typed',
    )
  }
})

await t.test('status and reset outside a device booted by ovroot: one line, exit 4', async (t) => {
  const dir = fs.mkdtempSync(`${os.tmpdir()}/ovroot-status-`)
  const config = `${dir}/ovroot.conf`
  fs.writeFileSync(config, `[boot]\nrun_dir = ${dir}/run\n`)
  for (const args of [['status'], ['reset', '--yes']]) {
    const result = ovroot([...args, '--config', config])
    t.equal(result.status, 4, `${args[0]}: exit 4`)
    t.match(result.stderr, /^ovroot: .*status\.json: no boot record/)
  }
  fs.mkdirSync(`${dir}/run`)
  fs.writeFileSync(`${dir}/run/status.json`, '{not json')
  const garbled = ovroot(['status', '--config', config])
  t.equal(garbled.status, 5)
  t.equal(
    garbled.stderr,
    `ovroot: ${dir}/run/status.json: unreadable boot record; expected the JSON ovroot boot writes\n`,
  )
  // JSON, but not the shape boot writes: one line too, never an internal error or a status without its mode.
  for (const damaged of [
    '{"mode":"flash","bootedAt":"x","overlay":{"lowers":5}}',
    '{"mode":"flash","bootedAt":"x","upgrade":{"counts":null}}',
    '{"mode":"bogus","bootedAt":"x"}',
    '{"mode":"degraded","bootedAt":"x","reset":{"kept":"/etc"}}',
  ]) {
    fs.writeFileSync(`${dir}/run/status.json`, damaged)
    const result = ovroot(['status', '--config', config])
    t.equal(result.status, 5, damaged)
    t.match(
      result.stderr,
      /^ovroot: .*status\.json: unreadable boot record; expected the JSON ovroot boot writes\n$/,
      damaged,
    )
  }
})

await t.test('[overlay] options that an upgrade leaves undefined are named', async (t) => {
  const { upgradeWarnings } = await import('../src/config/schema.js')
  t.same(upgradeWarnings(['redirect_dir=on', 'metacopy=on', 'index=on']), [], 'the reconcile handles these')
  t.match(upgradeWarnings(['index=on', 'nfs_export=on']), [/nfs_export=on: .*old firmware/])
})
