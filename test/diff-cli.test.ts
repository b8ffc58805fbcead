/** What `ovroot diff` prints in each format, its exit codes, and its refusals of bad input. */
import t, { type Test } from 'tap'
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { holdFirstOpen, mountOverlay, OVROOT, ovroot, scratch, unmount } from './helpers/overlay.js'
import { writeTree } from './helpers/mutate.js'
import { setXattr } from '../src/sys/libc.js'

interface Device {
  lower: string
  upper: string
  dir: string
}

/** A small device whose upper holds one change of each kind. */
function device(t: Test): Device {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const lower = `${s.dir}/rom`
  const upper = `${s.dir}/overlay/upper`
  const work = `${s.dir}/overlay/work`
  const merged = `${s.dir}/merged`
  writeTree(lower, {
    '/etc/config/network': 'config interface lan\n\toption proto static\n',
    '/etc/passwd': 'root:x:0:0::/root:/bin/ash\n',
    '/etc/shells': '/bin/ash\n',
    '/etc/old': 'old\n',
    '/usr/lib/blob.bin': Buffer.from([0, 1, 2, 3]).toString('latin1'),
  })
  fs.mkdirSync(upper, { recursive: true })
  fs.mkdirSync(work, { recursive: true })
  mountOverlay(merged, [lower], upper, work, [])
  fs.appendFileSync(`${merged}/etc/config/network`, '\toption ipaddr 192.168.1.1\n')
  fs.chmodSync(`${merged}/etc/passwd`, 0o600)
  fs.writeFileSync(`${merged}/etc/shells`, '/bin/ash\n')
  fs.rmSync(`${merged}/etc/old`)
  fs.writeFileSync(`${merged}/etc/new`, 'new\n')
  fs.writeFileSync(`${merged}/usr/lib/blob.bin`, Buffer.from([0, 9, 9]))
  unmount(merged)
  return { lower, upper, dir: s.dir }
}

const layers = (d: Device): string[] => ['--lower', d.lower, '--upper', d.upper]

await t.test('status lines, sorted by path, no colour in a pipe', async (t) => {
  const d = device(t)
  const result = ovroot(['diff', ...layers(d)])
  t.equal(result.status, 0)
  t.equal(result.stderr, '')
  t.equal(
    result.stdout,
    ['M /etc/config/network', 'A /etc/new', 'D /etc/old', 'm /etc/passwd', 'M /usr/lib/blob.bin', ''].join('\n'),
  )
  const coloured = ovroot(['diff', '--color', 'always', ...layers(d)])
  // eslint-disable-next-line no-control-regex -- the escape codes of a colour are what is asserted
  t.match(coloured.stdout, /\x1b\[32mA \/etc\/new\x1b\[0m/)
})

await t.test('JSON Lines carry type, mode, size and the old state', async (t) => {
  const d = device(t)
  const lines = ovroot(['diff', '--json', ...layers(d)])
    .stdout.trim()
    .split('\n')
    .map((line) => JSON.parse(line) as Record<string, unknown>)
  t.same(
    lines.map((line) => [line.path, line.change, line.type]),
    [
      ['/etc/config/network', 'modified', 'file'],
      ['/etc/new', 'added', 'file'],
      ['/etc/old', 'deleted', 'file'],
      ['/etc/passwd', 'metadata', 'file'],
      ['/usr/lib/blob.bin', 'modified', 'file'],
    ],
  )
  t.match(lines[3], { mode: '0600', fields: ['mode'], was: { mode: '0644' } })
  t.match(lines[1], { size: 4, uid: 0, gid: 0 })
})

await t.test('--all also lists copied-up but identical entries', async (t) => {
  const d = device(t)
  const result = ovroot(['diff', '--all', ...layers(d)])
  t.match(result.stdout, /^= \/etc\/shells$/m)
  t.match(result.stdout, /^= \/etc$/m, 'a parent copied up for its child is unchanged')
  t.notMatch(ovroot(['diff', ...layers(d)]).stdout, /shells/)
})

await t.test('--stat counts per kind, as text or JSON', async (t) => {
  const d = device(t)
  t.equal(
    ovroot(['diff', '--stat', ...layers(d)]).stdout,
    'added     1\nmodified  2\nmetadata  1\ndeleted   1\ntotal     5\n',
  )
  t.same(JSON.parse(ovroot(['diff', '--stat', '--json', ...layers(d)]).stdout), {
    added: 1,
    modified: 2,
    metadata: 1,
    deleted: 1,
    total: 5,
  })
})

await t.test('--patch is a git-style unified diff; binary files are named', async (t) => {
  const d = device(t)
  const result = ovroot(['diff', '--patch', ...layers(d)])
  t.equal(result.status, 0)
  t.equal(
    result.stdout,
    [
      'diff --git a/etc/config/network b/etc/config/network',
      '--- a/etc/config/network',
      '+++ b/etc/config/network',
      '@@ -1,2 +1,3 @@',
      ' config interface lan',
      ' \toption proto static',
      '+\toption ipaddr 192.168.1.1',
      'diff --git a/etc/new b/etc/new',
      'new file mode 100644',
      '--- /dev/null',
      '+++ b/etc/new',
      '@@ -0,0 +1 @@',
      '+new',
      'diff --git a/etc/old b/etc/old',
      'deleted file mode 100644',
      '--- a/etc/old',
      '+++ /dev/null',
      '@@ -1 +0,0 @@',
      '-old',
      'diff --git a/etc/passwd b/etc/passwd',
      'old mode 100644',
      'new mode 100600',
      'diff --git a/usr/lib/blob.bin b/usr/lib/blob.bin',
      'Binary files a/usr/lib/blob.bin and b/usr/lib/blob.bin differ',
      '',
    ].join('\n'),
  )
  // git itself accepts it: apply the patch to a copy of the lower.
  const tree = `${d.dir}/apply`
  fs.cpSync(d.lower, tree, { recursive: true })
  const textOnly = result.stdout.slice(0, result.stdout.indexOf('diff --git a/usr/lib/blob.bin'))
  const applied = spawnSync('git', ['apply', '--unsafe-paths', `--directory=${tree.slice(1)}`, '-p1', '-'], {
    input: textOnly,
    cwd: '/',
    encoding: 'utf8',
  })
  t.equal(applied.status, 0, applied.stderr)
  t.equal(
    fs.readFileSync(`${tree}/etc/config/network`, 'utf8'),
    'config interface lan\n\toption proto static\n\toption ipaddr 192.168.1.1\n',
  )
})

await t.test('names and link targets that are not UTF-8: one escaped form in text, JSON and patch', async (t) => {
  const d = device(t)
  const name = (root: string, ...tail: (string | number[])[]): Buffer =>
    Buffer.concat([Buffer.from(root), ...tail.map((part) => Buffer.from(part))])
  fs.writeFileSync(name(d.lower, '/etc/caf', [0xe9]), 'old\n')
  fs.writeFileSync(name(d.upper, '/etc/caf', [0xe9]), 'new\n')
  fs.writeFileSync(name(d.upper, '/etc/n', [0xff], '\\'), 'added\n')
  fs.symlinkSync(Buffer.from([0x2f, 0x74, 0x6d, 0x70, 0x2f, 0xe9]), `${d.upper}/etc/link`)
  const text = ovroot(['diff', ...layers(d)])
  t.equal(text.status, 0, text.stderr)
  t.match(text.stdout, /^M \/etc\/caf\\xe9$/m, 'text: a byte that is not UTF-8 as \\xNN')
  t.match(text.stdout, /^A \/etc\/link$/m)
  t.match(text.stdout, /^A \/etc\/n\\xff\\\\$/m, 'text: a backslash doubled')
  const json = ovroot(['diff', '--json', ...layers(d)])
  t.equal(json.status, 0, json.stderr)
  const records = json.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as { path: string; target?: string })
  t.ok(
    records.some((record) => record.path === '/etc/caf\\xe9'),
    'JSON: the same escaped form, a valid JSON string',
  )
  t.equal(records.find((record) => record.path === '/etc/link')?.target, '/tmp/\\xe9', 'JSON: the link target too')
  const patch = ovroot(['diff', '--patch', ...layers(d)])
  t.equal(patch.status, 0, patch.stderr)
  t.match(patch.stdout, /^diff --git a\/etc\/caf\\xe9 b\/etc\/caf\\xe9$/m, 'patch: the same escaped form')
  t.match(patch.stdout, /^-old\n\+new$/m, 'and the content diff')
  const changed = ovroot(['diff', '--exit-code', ...layers(d)])
  t.equal(changed.status, 1, '--exit-code: changes, exit 1')
})

await t.test('PATH arguments restrict the report; --exit-code says whether anything changed', async (t) => {
  const d = device(t)
  t.equal(ovroot(['diff', ...layers(d), '/etc/config']).stdout, 'M /etc/config/network\n')
  t.equal(ovroot(['diff', ...layers(d), '/usr', '/etc/config/']).stdout, 'M /etc/config/network\nM /usr/lib/blob.bin\n')
  t.equal(ovroot(['diff', ...layers(d), '/etc/old']).stdout, 'D /etc/old\n')
  t.equal(ovroot(['diff', ...layers(d), '/etc/old/child']).stdout, '', 'a path neither view has is no change')
  t.equal(ovroot(['diff', '--exit-code', ...layers(d)]).status, 1)
  t.equal(ovroot(['diff', '--exit-code', ...layers(d), '/nothing/here']).status, 0)
  t.equal(ovroot(['diff', ...layers(d)]).status, 0, 'without --exit-code changes are not an error')
})

await t.test('the device configuration supplies the paths', async (t) => {
  const d = device(t)
  const config = `${d.dir}/ovroot.conf`
  fs.writeFileSync(config, `[overlay]\nlower = ${d.lower}\ndir = ${d.dir}/overlay\n`)
  t.equal(
    ovroot(['diff', '--config', config, '--stat', '--json']).stdout,
    '{"added":1,"modified":2,"metadata":1,"deleted":1,"total":5}\n',
  )
})

await t.test('bad input: one line naming the thing, a documented exit status', async (t) => {
  const d = device(t)
  const refusals: [string, string[], number, RegExp, { uid?: number }?][] = [
    ['missing upper', ['--lower', d.lower, '--upper', `${d.dir}/nope`], 4, /upper directory .*\/nope does not exist/],
    [
      'upper is a file',
      ['--lower', d.lower, '--upper', `${d.lower}/etc/passwd`],
      4,
      /upper .*passwd is a file, expected a directory/,
    ],
    [
      'lower passed as upper',
      ['--lower', d.lower, '--upper', d.lower],
      5,
      /is not an overlay upper directory: it is the same directory as lower/,
    ],
    [
      'overlay dir passed as upper',
      ['--lower', d.lower, '--upper', `${d.dir}/overlay`],
      5,
      /holds upper\/ and work\/.*pass .*\/overlay\/upper/,
    ],
    ['not root', ['--lower', d.lower, '--upper', d.upper], 4, /needs root \(CAP_SYS_ADMIN\)/, { uid: 65534 }],
    ['--lower without --upper', ['--lower', d.lower], 2, /--lower and --upper go together/],
    ['unknown option', ['--frobnicate'], 2, /Unknown argument/],
    ['--patch with --json', ['--patch', '--json', ...layers(d)], 2, /--patch cannot be combined/],
    ['missing config file', ['--config', `${d.dir}/none.conf`], 4, /none\.conf: no such file/],
  ]
  for (const [name, args, status, message, options] of refusals) {
    if (options?.uid !== undefined) fs.chmodSync(d.dir, 0o755)
    const result = ovroot(['diff', ...args], options)
    t.equal(result.status, status, `${name}: exit ${status}`)
    t.match(result.stderr, message, `${name}: says why`)
    t.equal(result.stderr.trim().split('\n').length, 1, `${name}: one line: ${result.stderr}`)
    t.equal(result.stdout, '', `${name}: no partial report`)
  }
})

await t.test('a merged view passed as the upper is refused', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  writeTree(`${s.dir}/lower`, { '/a': 'a\n' })
  fs.mkdirSync(`${s.dir}/upper`)
  fs.mkdirSync(`${s.dir}/work`)
  mountOverlay(`${s.dir}/merged`, [`${s.dir}/lower`], `${s.dir}/upper`, `${s.dir}/work`, [])
  const result = ovroot(['diff', '--lower', `${s.dir}/lower`, '--upper', `${s.dir}/merged`])
  t.equal(result.status, 5)
  t.match(result.stderr, /it is on overlayfs, so it is a merged view/)
  unmount(`${s.dir}/merged`)
})

await t.test('a lower at / (the layout of a running device) resolves from the real root', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const name = `ovroot-probe-${process.pid}`
  writeTree(`${s.dir}/upper`, { [`/${name}`]: 'x\n' })
  const result = ovroot(['diff', '--lower', '/', '--upper', `${s.dir}/upper`])
  t.equal(result.status, 0, result.stderr)
  t.equal(result.stdout, `A /${name}\n`)
})

await t.test(
  '--patch prints lines that are not UTF-8 (a Latin-1 file) byte for byte, as git does; patch and git apply reproduce the upper',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const [lower, upper] = [`${s.dir}/rom`, `${s.dir}/upper`]
    writeTree(lower, { '/etc/utf8': 'café\nold\n' })
    writeTree(upper, { '/etc/utf8': 'café\nnew\n' })
    const latin1 = (text: string): Buffer => Buffer.from(text, 'latin1')
    fs.writeFileSync(`${lower}/etc/latin1`, latin1('caf\xe9\nold \xa3\nsame\n'))
    fs.writeFileSync(`${upper}/etc/latin1`, latin1('caf\xe9\nnew \xa5\xff\nsame\n'))
    fs.writeFileSync(`${upper}/etc/added`, latin1('na\xefve\n'))
    const result = spawnSync('env', [
      '-u',
      'NODE_OPTIONS',
      process.execPath,
      OVROOT,
      'diff',
      '--patch',
      '--lower',
      lower,
      '--upper',
      upper,
    ])
    t.equal(result.status, 0, result.stderr.toString())
    const expected = Buffer.concat([
      Buffer.from(
        'diff --git a/etc/added b/etc/added\nnew file mode 100644\n--- /dev/null\n+++ b/etc/added\n@@ -0,0 +1 @@\n',
      ),
      latin1('+na\xefve\n'),
      Buffer.from('diff --git a/etc/latin1 b/etc/latin1\n--- a/etc/latin1\n+++ b/etc/latin1\n@@ -1,3 +1,3 @@\n'),
      latin1(' caf\xe9\n-old \xa3\n+new \xa5\xff\n same\n'),
      Buffer.from(
        'diff --git a/etc/utf8 b/etc/utf8\n--- a/etc/utf8\n+++ b/etc/utf8\n@@ -1,2 +1,2 @@\n café\n-old\n+new\n',
      ),
    ])
    t.same(result.stdout, expected, 'every byte as the files hold it')
    // Applied to copies of the lower, by patch and by git, it gives the upper's bytes.
    for (const [tool, args] of [
      ['patch', ['-p1', '--quiet']],
      ['git', ['apply', '-p1']],
    ] as const) {
      const tree = `${s.dir}/${tool}`
      fs.cpSync(lower, tree, { recursive: true })
      const applied = spawnSync(tool, args, { input: result.stdout, cwd: tree })
      t.equal(applied.status, 0, `${tool}: ${applied.stderr.toString()}`)
      for (const name of ['latin1', 'added', 'utf8'])
        t.same(fs.readFileSync(`${tree}/etc/${name}`), fs.readFileSync(`${upper}/etc/${name}`), `${tool}: /etc/${name}`)
    }
  },
)

await t.test('--patch shows a regular file that became another type, or another type that became one', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const [lower, upper] = [`${s.dir}/rom`, `${s.dir}/upper`]
  writeTree(lower, { '/etc/was-file': 'old\n', '/etc/was-link': { link: 'target' } })
  writeTree(upper, { '/etc/was-file': { link: 'elsewhere' }, '/etc/was-link': 'now a file\n' })
  const result = ovroot(['diff', '--patch', '--lower', lower, '--upper', upper])
  t.equal(result.status, 0, result.stderr)
  t.equal(
    result.stdout,
    [
      'diff --git a/etc/was-file b/etc/was-file',
      'deleted file mode 100644',
      '--- a/etc/was-file',
      '+++ /dev/null',
      '@@ -1 +0,0 @@',
      '-old',
      'diff --git a/etc/was-link b/etc/was-link',
      'new file mode 100644',
      '--- /dev/null',
      '+++ b/etc/was-link',
      '@@ -0,0 +1 @@',
      '+now a file',
      '',
    ].join('\n'),
  )
})

await t.test(
  'a redirect through a symlinked directory of the lower finds nothing there, as in the kernel',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const [lower, upper] = [`${s.dir}/rom`, `${s.dir}/upper`]
    writeTree(lower, { '/etc/x': 'firmware\n', '/var': { link: s.dir } })
    fs.writeFileSync(`${s.dir}/secret`, 'outside the lower\n')
    writeTree(upper, { '/etc/x': '' })
    fs.truncateSync(`${upper}/etc/x`, 18)
    setXattr(`${upper}/etc/x`, 'trusted.overlay.metacopy', Buffer.alloc(0))
    setXattr(`${upper}/etc/x`, 'trusted.overlay.redirect', Buffer.from('/var/secret'))
    const result = ovroot(['diff', '--patch', '--lower', lower, '--upper', upper])
    t.equal(result.status, 5)
    t.equal(result.stdout, '', 'nothing read outside the lower')
    t.match(result.stderr, /^ovroot: .*\/etc\/x: metacopy file whose data is in no lower layer/)
  },
)

await t.test(
  'an entry removed from the upper while diff reads it is named on stderr and left out; the rest is reported, exit 6',
  async (t) => {
    for (const [format, tagged] of [
      ['text', true],
      ['patch', false],
    ] as const) {
      const s = scratch()
      t.teardown(() => s.cleanup())
      const [lower, upper] = [`${s.dir}/rom`, `${s.dir}/upper`]
      writeTree(lower, { '/etc/gone': 'old\n', '/etc/kept': 'old\n' })
      writeTree(upper, { '/etc/gone': 'new\n', '/etc/kept': 'new\n', '/etc/zz-added': 'added\n' })
      // With an xattr, the comparison reads it after the removal; without, --patch reads the bytes after it.
      if (tagged) for (const root of [lower, upper]) setXattr(`${root}/etc/gone`, 'user.tag', Buffer.from('a'))
      // Comparing bytes opens the upper's copy, then the lower's: that open waits while the upper's goes.
      const held = await holdFirstOpen(`${lower}/etc/gone`, 'remove', `${upper}/etc/gone`)
      t.teardown(() => held.kill())
      const result = ovroot(['diff', ...(format === 'patch' ? ['--patch'] : []), '--lower', lower, '--upper', upper])
      t.equal(await held.done, 0, `${format}: removed while diff compared it`)
      t.equal(result.status, 6, `${format}: a status of its own`)
      t.match(
        result.stderr,
        /^ovroot: \/etc\/gone: left out of the report, it changed while diff read it \(.*no such file or directory\)\n$/,
        `${format}: one line naming it`,
      )
      t.notMatch(result.stdout, /etc\/gone/, `${format}: not reported`)
      t.match(
        result.stdout,
        format === 'patch' ? /^\+added$/m : /^M \/etc\/kept\nA \/etc\/zz-added\n$/m,
        `${format}: the rest is`,
      )
    }
  },
)
