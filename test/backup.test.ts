/**
 * Backup and restore of real, kernel-written uppers: the restored upper is the
 * original (types, bytes, modes, owners, times, every xattr, hardlinks,
 * whiteouts, stubs) and mounts to the same merged view; GNU tar reads and
 * writes the same archives; other firmware and sysupgrade archives.
 */
import t, { type Test } from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import * as fs from 'node:fs'
import { getXattr, setXattr } from '../src/sys/libc.js'
import {
  holdFirstOpen,
  MOUNT_VARIANTS,
  mountOverlay,
  ovroot,
  scratch,
  snapshot,
  unmount,
  upperSnapshot,
  withoutIdentity,
  withoutAtime,
  withoutBlocks,
  withoutSharedWhiteouts,
} from './helpers/overlay.js'
import {
  random,
  randomLower,
  randomOperation,
  STANDARD_LOWER,
  STANDARD_OPERATIONS,
  writeTree,
} from './helpers/mutate.js'

interface Device {
  dir: string
  lower: string
  upper: string
  work: string
  merged: string
  options: string[]
}

/** A lower, and an upper the kernel wrote through a mount with `options`. */
function device(t: Test, options: string[], change: (merged: string) => void): Device {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const d: Device = {
    dir: s.dir,
    lower: `${s.dir}/lower`,
    upper: `${s.dir}/upper`,
    work: `${s.dir}/work`,
    merged: `${s.dir}/merged`,
    options,
  }
  writeTree(d.lower, STANDARD_LOWER)
  setXattr(`${d.lower}/etc/profile`, 'user.tag', Buffer.from('lower'))
  fs.mkdirSync(d.upper)
  fs.mkdirSync(d.work)
  mountOverlay(d.merged, [d.lower], d.upper, d.work, options)
  change(d.merged)
  unmount(d.merged)
  return d
}

function applyStandardOperations(t: Test): (merged: string) => void {
  return (merged) => {
    for (const [name, operation] of Object.entries(STANDARD_OPERATIONS)) {
      try {
        operation(merged)
      } catch (error) {
        t.fail(`operation "${name}" failed: ${String(error)}`)
      }
    }
  }
}

const backup = (d: Device, file: string, ...extra: string[]) =>
  ovroot(['backup', '--upper', d.upper, '--lower', d.lower, '-o', file, ...extra])
const restore = (d: Device, file: string, into: string, ...extra: string[]) =>
  ovroot(['restore', file, '--upper', into, '--lower', d.lower, ...extra])

/** The merged view of an upper over the device's lower. */
function mergedOf(d: Device, upper: string): ReturnType<typeof snapshot> {
  const work = `${d.dir}/work-${upper.length}-${Math.floor(Math.random() * 1e9)}`
  fs.mkdirSync(work)
  mountOverlay(
    d.merged,
    [d.lower],
    upper,
    work,
    // A restored upper mounts with the device's own options, index=on included (issue 17 item 7).
    d.options,
  )
  try {
    return snapshot(d.merged)
  } finally {
    unmount(d.merged)
  }
}

function roundTrip(t: Test, d: Device, label: string, ...extra: string[]): string {
  const archive = `${d.dir}/backup-${label.replace(/\W+/g, '-')}.ovb`
  const made = backup(d, archive, ...extra)
  t.equal(made.status, 0, `${label}: backup ${made.stderr}`)
  t.equal(fs.statSync(archive).mode & 0o777, 0o600, `${label}: the archive is private (0600)`)
  const into = `${d.dir}/restored-${label.replace(/\W+/g, '-')}`
  fs.mkdirSync(into)
  const restored = restore(d, archive, into, ...extra)
  t.equal(restored.status, 0, `${label}: restore ${restored.stderr}`)
  t.same(
    upperSnapshot(into),
    withoutIdentity(upperSnapshot(d.upper)),
    `${label}: the restored upper equals the original, less the identity of the filesystem it came from`,
  )
  t.same(mergedOf(d, into), mergedOf(d, d.upper), `${label}: and mounts to the same merged view`)
  return archive
}

for (const [variant, options] of Object.entries(MOUNT_VARIANTS)) {
  await t.test(`round trip of every kind of change, ${variant}`, async (t) => {
    const d = device(t, options, applyStandardOperations(t))
    roundTrip(t, d, variant)
  })

  await t.test(`round trip of seeded random changes, ${variant}`, async (t) => {
    for (const seed of [11, 12, 13]) {
      const s = scratch()
      t.teardown(() => s.cleanup())
      const next = random(seed * 104729 + variant.length)
      const d: Device = {
        dir: s.dir,
        lower: `${s.dir}/lower`,
        upper: `${s.dir}/upper`,
        work: `${s.dir}/work`,
        merged: `${s.dir}/merged`,
        options,
      }
      fs.mkdirSync(d.lower)
      randomLower(d.lower, next)
      fs.mkdirSync(d.upper)
      fs.mkdirSync(d.work)
      mountOverlay(d.merged, [d.lower], d.upper, d.work, options)
      for (let i = 0; i < 30; i++) {
        try {
          randomOperation(d.merged, next, i)
        } catch {
          // an operation that does not apply to this tree
        }
      }
      unmount(d.merged)
      roundTrip(t, d, `seed ${seed}`)
    }
  })
}

await t.test(
  'GNU tar extracts a backup into a directory equal to the upper; ovroot restores an archive GNU tar made of an upper',
  async (t) => {
    const d = device(t, ['redirect_dir=on', 'metacopy=on'], applyStandardOperations(t))
    const archive = `${d.dir}/gnu.ovb`
    t.equal(backup(d, archive).status, 0)
    const extracted = `${d.dir}/by-gnu-tar`
    fs.mkdirSync(extracted)
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xpzf', archive, '-C', extracted])
    // GNU tar gives every entry it extracts the extraction's time as atime.
    t.same(
      withoutAtime(upperSnapshot(extracted)),
      withoutAtime(upperSnapshot(d.upper)),
      'tar --xattrs --xattrs-include=* -xpzf gives the upper back',
    )
    const listing = execFileSync('tar', ['-tvzf', archive], { encoding: 'utf8' })
    t.match(listing, /^c--------- 0\/0 +0,0 .* etc\/banner$/m, 'tar -tvzf lists a whiteout as the 0/0 device it is')

    const byTar = `${d.dir}/made-by-gnu-tar.tgz`
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--format=pax', '-C', d.upper, '-czf', byTar, '.'])
    const into = `${d.dir}/from-gnu-tar`
    fs.mkdirSync(into)
    const result = restore(d, byTar, into)
    t.equal(result.status, 0, result.stderr)
    // GNU tar does not record hardlinks between device nodes: a whiteout inode the kernel shared comes back as whiteouts of their own.
    // It archives a metacopy stub (all hole) as that many zeros, which come back written (overlayfs reads a stub's lower either way).
    t.same(
      withoutBlocks(upperSnapshot(into)),
      withoutBlocks(withoutIdentity(withoutSharedWhiteouts(upperSnapshot(d.upper)))),
      'an archive GNU tar wrote (no manifest) restores to the upper too',
    )
  },
)

/** Names and a link target that are not UTF-8 (Latin-1, a lone continuation byte), next to UTF-8 and a backslash. */
function writeByteNames(merged: string): void {
  const at = (...parts: (string | number[])[]): Buffer =>
    Buffer.concat([
      Buffer.from(merged),
      ...parts.map((part) => (typeof part === 'string' ? Buffer.from(part) : Buffer.from(part))),
    ])
  fs.writeFileSync(at('/etc/caf', [0xe9]), 'latin-1 name\n')
  fs.mkdirSync(at('/etc/d', [0xe9, 0x80]))
  fs.writeFileSync(at('/etc/d', [0xe9, 0x80], '/child'), 'child\n')
  fs.writeFileSync(at('/etc/d', [0xe9, 0x80], '/n', [0xff]), 'nested\n')
  fs.symlinkSync(Buffer.from([0x2f, 0x74, 0x6d, 0x70, 0x2f, 0xe9]), at('/etc/link'))
  fs.writeFileSync(at('/etc/café'), 'utf-8 name\n')
  fs.writeFileSync(at('/etc/back\\slash'), 'backslash\n')
  // A hardlink whose names are not UTF-8: the second names the first, as bytes.
  fs.linkSync(at('/etc/caf', [0xe9]), at('/etc/caf', [0xe9], '.2'))
}

await t.test(
  'names and link targets that are not UTF-8: backup and restore give them back byte for byte, GNU tar agrees both ways',
  async (t) => {
    const d = device(t, [], writeByteNames)
    roundTrip(t, d, 'byte names')
    const archive = `${d.dir}/bytes.ovb`
    t.equal(backup(d, archive).status, 0)
    const tarBytes = execFileSync('gzip', ['-dc', archive])
    t.ok(tarBytes.includes(Buffer.from('hdrcharset=BINARY')), 'pax hdrcharset=BINARY marks a name that is not UTF-8')
    const extracted = `${d.dir}/bytes-by-gnu-tar`
    fs.mkdirSync(extracted)
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xpzf', archive, '-C', extracted])
    t.same(
      withoutAtime(upperSnapshot(extracted)),
      withoutAtime(upperSnapshot(d.upper)),
      'GNU tar extracts the names and the target as bytes',
    )
    const byTar = `${d.dir}/bytes-by-gnu-tar.tgz`
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--format=pax', '-C', d.upper, '-czf', byTar, '.'])
    const into = `${d.dir}/bytes-from-gnu-tar`
    fs.mkdirSync(into)
    const result = restore(d, byTar, into)
    t.equal(result.status, 0, result.stderr)
    t.same(
      upperSnapshot(into),
      withoutIdentity(withoutSharedWhiteouts(upperSnapshot(d.upper))),
      "ovroot restores GNU tar's archive of them byte for byte",
    )
  },
)

await t.test(
  'encrypted backups: round trip; a wrong passphrase, a flipped byte, a cut-off end are refused in one line',
  async (t) => {
    const d = device(t, [], applyStandardOperations(t))
    const passphrase = `${d.dir}/passphrase`
    fs.writeFileSync(passphrase, 'correct horse battery staple\n')
    const archive = roundTrip(t, d, 'encrypted', '--passphrase-file', passphrase)
    t.not(fs.readFileSync(archive).subarray(0, 2).toString('hex'), '1f8b', 'not a readable gzip')
    t.notOk(fs.readFileSync(archive).includes(Buffer.from('option proto static')), 'no configuration in clear')
    const refused = (file: string, extra: string[], pattern: RegExp, status = 5): void => {
      const into = `${d.dir}/refused-${Math.floor(Math.random() * 1e9)}`
      fs.mkdirSync(into)
      const result = restore(d, file, into, ...extra)
      t.equal(result.status, status, `${pattern}: exit ${status}`)
      t.match(result.stderr, pattern)
      t.equal(result.stderr.trim().split('\n').length, 1, 'one line')
      t.same(fs.readdirSync(into), [], 'nothing restored')
    }
    fs.writeFileSync(`${d.dir}/wrong`, 'Tr0ub4dor&3\n')
    refused(archive, ['--passphrase-file', `${d.dir}/wrong`], /wrong passphrase for this encrypted backup/)
    refused(archive, [], /is an encrypted backup: pass --passphrase-file/, 2)
    const bytes = fs.readFileSync(archive)
    const flipped = Buffer.from(bytes)
    const middle = Math.floor(bytes.length / 2)
    flipped.writeUInt8(flipped.readUInt8(middle) ^ 0x01, middle)
    fs.writeFileSync(`${d.dir}/flipped.ovb`, flipped)
    refused(
      `${d.dir}/flipped.ovb`,
      ['--passphrase-file', passphrase],
      /damaged or was tampered with \(chunk 0 fails authentication\)/,
    )
    fs.writeFileSync(`${d.dir}/cut.ovb`, bytes.subarray(0, bytes.length - 100))
    refused(`${d.dir}/cut.ovb`, ['--passphrase-file', passphrase], /damaged or was tampered with/)
    // Key-derivation parameters are read before anything is authenticated: only backup's own are derived with.
    const costly = Buffer.from(bytes)
    costly[24] = 16
    fs.writeFileSync(`${d.dir}/costly.ovb`, costly)
    refused(
      `${d.dir}/costly.ovb`,
      ['--passphrase-file', passphrase],
      /damaged or was tampered with \(key-derivation parameters N=2\^16 r=8 p=1, not the N=2\^15 r=8 p=1 ovroot writes\)/,
    )
    // A passphrase means encryption: a plain archive in the encrypted one's place is refused.
    const plain = `${d.dir}/plain.ovb`
    t.equal(backup(d, plain).status, 0)
    refused(plain, ['--passphrase-file', passphrase], /is not an encrypted backup, but --passphrase-file was given/)
  },
)

await t.test(
  'plain backups: a truncated or bit-flipped archive is refused in one line, nothing restored',
  async (t) => {
    const d = device(t, [], applyStandardOperations(t))
    const archive = `${d.dir}/plain.ovb`
    t.equal(backup(d, archive).status, 0)
    const bytes = fs.readFileSync(archive)
    const cases: [string, Buffer][] = [
      ['truncated', bytes.subarray(0, Math.floor(bytes.length * 0.6))],
      ['bit-flipped', Buffer.from(bytes.map((byte, i) => (i === Math.floor(bytes.length / 2) ? byte ^ 0x10 : byte)))],
    ]
    for (const [name, content] of cases) {
      fs.writeFileSync(`${d.dir}/${name}.ovb`, content)
      const into = `${d.dir}/${name}`
      fs.mkdirSync(into)
      const result = restore(d, `${d.dir}/${name}.ovb`, into)
      t.equal(result.status, 5, `${name}: exit 5 (invalid data)`)
      t.match(result.stderr, /^ovroot: .*(damaged|truncated)/, name)
      t.equal(result.stderr.trim().split('\n').length, 1, `${name}: one line`)
      t.same(fs.readdirSync(into), [], `${name}: nothing restored`)
      t.notOk(
        fs.readdirSync(d.dir).some((entry) => entry.includes('ovroot-restore')),
        `${name}: no staging left behind`,
      )
    }
  },
)

await t.test(
  '--changes-only leaves out copy-ups identical to the firmware; --exclude leaves out paths; standard output; a positional archive',
  async (t) => {
    const d = device(t, [], applyStandardOperations(t))
    const full = execFileSync('node', [fileArgument(), 'backup', '--upper', d.upper, '--lower', d.lower, '-o', '-'])
    t.equal(full.subarray(0, 2).toString('hex'), '1f8b', '- writes the gzip archive to standard output')
    const named = `${d.dir}/named.ovb`
    t.equal(ovroot(['backup', named, '--upper', d.upper, '--lower', d.lower]).status, 0)
    t.equal(fs.readFileSync(named).subarray(0, 2).toString('hex'), '1f8b', 'a positional archive names the file')
    const twice = ovroot(['backup', named, '-o', `${d.dir}/other.ovb`, '--upper', d.upper, '--lower', d.lower])
    t.equal(twice.status, 2, 'an archive named twice is a usage error')
    t.match(twice.stderr, /two archives named/)
    const changes = `${d.dir}/changes.ovb`
    t.equal(backup(d, changes, '--changes-only', '--exclude', '/etc/init.d').status, 0)
    const names = execFileSync('tar', ['-tzf', changes], { encoding: 'utf8' }).split('\n')
    t.ok(names.includes('etc/config/network'), 'a modified file is in')
    t.notOk(names.includes('etc/config/system'), 'a copy-up rewritten identical is not')
    t.notOk(names.includes('etc/protocols'), 'a file opened for writing and unchanged is not')
    t.notOk(
      names.some((name) => name.startsWith('etc/init.d')),
      '--exclude leaves out a subtree',
    )
    const into = `${d.dir}/changes-restored`
    fs.mkdirSync(into)
    t.equal(restore(d, changes, into).status, 0)
    const expected = mergedOf(d, d.upper)
    const got = mergedOf(d, into)
    for (const [path, entry] of expected)
      if (!path.startsWith('/etc/init.d')) t.same(got.get(path), entry, `${path}: same merged view`)
  },
)

await t.test(
  'other firmware: files changed by both the user and the firmware are listed and refused unless --force',
  async (t) => {
    const d = device(t, [], (m) => {
      fs.appendFileSync(`${m}/etc/config/network`, 'user line\n')
      // Copied up, bytes unchanged (issue 17 item 13): no conflict when the firmware changes them.
      fs.chmodSync(`${m}/etc/config/system`, 0o600)
      fs.utimesSync(`${m}/etc/passwd`, new Date(), new Date())
    })
    fs.writeFileSync(`${d.lower}/etc/openwrt_release`, "DISTRIB_ID='OpenWrt'\nDISTRIB_RELEASE='23.05.0'\n")
    const archive = `${d.dir}/old-firmware.ovb`
    t.equal(backup(d, archive).status, 0)
    fs.writeFileSync(`${d.lower}/etc/openwrt_release`, "DISTRIB_ID='OpenWrt'\nDISTRIB_RELEASE='24.10.0'\n")
    fs.appendFileSync(`${d.lower}/etc/config/network`, 'new firmware default\n')
    fs.appendFileSync(`${d.lower}/etc/config/system`, 'new firmware default\n')
    fs.appendFileSync(`${d.lower}/etc/passwd`, 'new:x:1:1::/:/bin/false\n')
    const into = `${d.dir}/other-firmware`
    fs.mkdirSync(into)
    const refused = restore(d, archive, into)
    t.equal(refused.status, 5)
    t.match(
      refused.stderr,
      /backup of OpenWrt 23\.05\.0, this device runs OpenWrt 24\.10\.0: 1 file changed by both the user and the new firmware \(\/etc\/config\/network\); --force/,
    )
    t.same(fs.readdirSync(into), [], 'nothing restored')
    t.equal(restore(d, archive, into, '--force').status, 0, '--force restores')
    t.match(fs.readFileSync(`${into}/etc/config/network`, 'utf8'), /user line/)
  },
)

await t.test(
  "an OpenWrt sysupgrade archive: its files land on the upper, directories keep the firmware's metadata",
  async (t) => {
    const d = device(t, [], () => undefined)
    const root = `${d.dir}/sysupgrade-root`
    writeTree(root, {
      '/etc/config/network': 'from sysupgrade\n',
      '/etc/dropbear/authorized_keys': 'ssh-ed25519 AAAA\n',
    })
    fs.chmodSync(`${d.lower}/etc`, 0o751)
    const archive = `${d.dir}/sysupgrade.tgz`
    execFileSync('tar', ['-C', root, '-czf', archive, 'etc/config/network', 'etc/dropbear/authorized_keys'])
    const into = `${d.dir}/from-sysupgrade`
    fs.mkdirSync(into)
    const result = restore(d, archive, into)
    t.equal(result.status, 0, result.stderr)
    t.match(result.stdout, /OpenWrt sysupgrade archive, 2 entries/)
    t.equal(fs.readFileSync(`${into}/etc/config/network`, 'utf8'), 'from sysupgrade\n')
    t.equal(fs.statSync(`${into}/etc`).mode & 0o777, 0o751, "a directory the archive needs takes the firmware's mode")
  },
)

await t.test('a socket in the upper is skipped and named; the rest is backed up', async (t) => {
  const d = device(t, [], (m) => fs.writeFileSync(`${m}/etc/kept`, 'kept\n'))
  execFileSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind('${d.upper}/etc/control.sock')`])
  const archive = `${d.dir}/with-socket.ovb`
  const result = backup(d, archive)
  t.equal(result.status, 0)
  t.match(result.stderr, /^ovroot: skipped \/etc\/control\.sock: a socket cannot be archived$/m)
  const names = execFileSync('tar', ['-tzf', archive], { encoding: 'utf8' })
  t.match(names, /^etc\/kept$/m)
  t.notMatch(names, /control\.sock/)
})

await t.test('a file written all through the backup is refused in one line, and no archive is left', async (t) => {
  const d = device(t, [], (m) => fs.writeFileSync(`${m}/etc/busy`, Buffer.alloc(64 << 20, 7)))
  // Stamps the file's mtime and ctime as fast as the kernel's clock ticks: every read of its 64 MiB sees a change.
  const writer = spawn('python3', ['-c', 'import os, sys\nwhile True: os.utime(sys.argv[1])', `${d.upper}/etc/busy`], {
    stdio: 'ignore',
  })
  t.teardown(() => writer.kill())
  const before = fs.statSync(`${d.upper}/etc/busy`).mtimeMs
  while (fs.statSync(`${d.upper}/etc/busy`).mtimeMs === before) await new Promise((resolve) => setTimeout(resolve, 10))
  const archive = `${d.dir}/busy.ovb`
  const result = backup(d, archive)
  t.equal(result.status, 6, 'an I/O exit status')
  t.match(
    result.stderr,
    /^ovroot: \S+\/etc\/busy changed while it was read, twice; back up when it is not being written/,
  )
  t.equal(result.stderr.trim().split('\n').length, 1, 'one line')
  t.notOk(fs.existsSync(archive), 'no archive, not even a partial one')
  t.same(
    fs.readdirSync(d.dir).filter((name) => name.includes('busy')),
    [],
    'and no temporary file',
  )
})

await t.test(
  'a file rewritten between the walk and its read is archived with the metadata of the version whose bytes it holds',
  async (t) => {
    const d = plainDevice(t, (upper) => {
      fs.mkdirSync(`${upper}/etc`)
      fs.writeFileSync(`${upper}/etc/racy`, 'old\n', { mode: 0o644 })
      setXattr(`${upper}/etc/racy`, 'user.version', Buffer.from('old'))
      execFileSync('touch', ['-d', '2001-01-01 00:00:00', `${upper}/etc/racy`])
    })
    // Its first open (after the walk's stat and xattrs) waits while it gets new bytes, mode, xattr and mtime.
    const newMtime = 1262304000 // 2010-01-01
    const held = await holdFirstOpen(`${d.upper}/etc/racy`, 'rewrite', 'new version\n', '600', `${newMtime}`, 'new')
    t.teardown(() => held.kill())
    const archive = `${d.dir}/racy.ovb`
    const made = backup(d, archive)
    t.equal(made.status, 0, `backup ${made.stderr}`)
    t.equal(await held.done, 0, 'the file changed while the backup held it open')
    const into = `${d.dir}/racy-restored`
    fs.mkdirSync(into)
    const restored = restore(d, archive, into)
    t.equal(restored.status, 0, `restore ${restored.stderr}`)
    const file = `${into}/etc/racy`
    t.same(fs.readFileSync(file), Buffer.from('new version\n'), 'the new bytes')
    t.equal(fs.statSync(file).mode & 0o7777, 0o600, 'with their mode')
    t.equal(fs.lstatSync(file, { bigint: true }).mtimeNs, BigInt(newMtime) * 1_000_000_000n, 'their mtime')
    t.same(getXattr(file, 'user.version'), Buffer.from('new'), 'and their xattr')
  },
)

function fileArgument(): string {
  return new URL('../dist/ovroot.js', import.meta.url).pathname
}

/** An upper written directly (no mount needed for what it holds), over the standard lower. */
function plainDevice(t: Test, fill: (upper: string) => void): Device {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const d: Device = {
    dir: s.dir,
    lower: `${s.dir}/lower`,
    upper: `${s.dir}/upper`,
    work: `${s.dir}/work`,
    merged: `${s.dir}/merged`,
    options: [],
  }
  writeTree(d.lower, STANDARD_LOWER)
  fs.mkdirSync(d.upper)
  fill(d.upper)
  return d
}

const mtimeNs = (file: string | Buffer): bigint => fs.lstatSync(file, { bigint: true }).mtimeNs

await t.test(
  'times: before 1970 (a negative fraction too), nanoseconds, an atime of its own come back exactly; GNU tar agrees both ways',
  async (t) => {
    const d = plainDevice(t, (upper) => {
      fs.mkdirSync(`${upper}/var`)
      fs.writeFileSync(`${upper}/var/1960`, 'old\n')
      execFileSync('touch', ['-d', '1960-01-01 00:00:00.5', `${upper}/var/1960`])
      // 1.5 s before the epoch: pax -1.5, not -0.5 or -1 + .5.
      fs.symlinkSync('1960', `${upper}/var/before-epoch`)
      execFileSync('touch', ['-h', '-d', '1969-12-31 23:59:58.5', `${upper}/var/before-epoch`])
      fs.writeFileSync(`${upper}/var/ns`, 'nanoseconds\n')
      execFileSync('touch', ['-m', '-d', '2020-01-01 00:00:00.123456789', `${upper}/var/ns`])
      execFileSync('touch', ['-a', '-d', '2021-06-01 12:00:00.987654321', `${upper}/var/ns`])
      execFileSync('touch', ['-m', '-d', '2106-02-07 06:28:16.000000001', `${upper}/var`])
    })
    const archive = roundTrip(t, d, 'times')
    t.equal(
      mtimeNs(`${d.upper}/var/before-epoch`),
      -1_500_000_000n,
      'the test really has a time 1.5 s before the epoch',
    )

    const extracted = `${d.dir}/times-by-gnu-tar`
    fs.mkdirSync(extracted)
    execFileSync('tar', ['-xpzf', archive, '-C', extracted])
    for (const name of ['var', 'var/1960', 'var/before-epoch', 'var/ns'])
      t.equal(
        mtimeNs(`${extracted}/${name}`),
        mtimeNs(`${d.upper}/${name}`),
        `GNU tar extracts ${name}'s mtime to the nanosecond`,
      )

    const byTar = `${d.dir}/times-made-by-gnu-tar.tgz`
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--format=pax', '-C', d.upper, '-czf', byTar, '.'])
    const into = `${d.dir}/times-from-gnu-tar`
    fs.mkdirSync(into)
    const result = restore(d, byTar, into)
    t.equal(result.status, 0, result.stderr)
    t.same(
      upperSnapshot(into),
      withoutIdentity(upperSnapshot(d.upper)),
      "GNU tar's pax times (negative, fractions trimmed, atime) restore exactly",
    )
  },
)

/** Data at `offset` of a file that is otherwise hole (the file is made `size` long first). */
function writeAt(file: string, size: number, ...pieces: [offset: number, data: Buffer][]): void {
  fs.writeFileSync(file, '')
  fs.truncateSync(file, size)
  const fd = fs.openSync(file, 'r+')
  for (const [offset, data] of pieces) fs.writeSync(fd, data, 0, data.length, offset)
  fs.closeSync(fd)
}

await t.test(
  'sparse files: holes stay holes through backup and restore, GNU tar extracts them identically and its sparse archives restore',
  async (t) => {
    const page = (fill: number): Buffer => Buffer.alloc(4096, fill)
    const d = plainDevice(t, (upper) => {
      fs.mkdirSync(`${upper}/var`)
      // 64 MiB holding 4 KiB: a hole, data, a hole to the end.
      writeAt(`${upper}/var/disk.img`, 64 << 20, [1 << 20, page(1)])
      // Data at both ends, a hole between; data to the last byte.
      writeAt(`${upper}/var/ends`, 8 << 20, [0, page(2)], [(8 << 20) - 4096, page(3)])
      // All hole, and a file with holes that also carries an xattr.
      writeAt(`${upper}/var/empty-image`, 16 << 20)
      writeAt(`${upper}/var/tagged`, 1 << 20, [8192, Buffer.from('tagged\n')])
      setXattr(`${upper}/var/tagged`, 'user.kind', Buffer.from('sparse'))
    })
    t.equal(fs.statSync(`${d.upper}/var/disk.img`).blocks, 8, 'the test file really holds one page')
    // Before the round trip's mounts give the upper root an overlay uuid the archive does not have.
    const archived = upperSnapshot(d.upper)
    const archive = roundTrip(t, d, 'sparse')
    const tarBytes = execFileSync('gzip', ['-dc', archive])
    t.ok(tarBytes.length < 1 << 20, `the tar stream carries the data, not the holes (${tarBytes.length} bytes)`)
    t.ok(tarBytes.includes(Buffer.from('GNU.sparse.major=1')), 'GNU sparse 1.0')

    const extracted = `${d.dir}/sparse-by-gnu-tar`
    fs.mkdirSync(extracted)
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xpzf', archive, '-C', extracted])
    t.same(
      withoutAtime(upperSnapshot(extracted)),
      withoutAtime(archived),
      'GNU tar extracts the same files with the same holes',
    )

    const byTar = `${d.dir}/sparse-by-gnu-tar.tgz`
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--format=pax', '-S', '-C', d.upper, '-czf', byTar, '.'])
    const into = `${d.dir}/sparse-from-gnu-tar`
    fs.mkdirSync(into)
    const result = restore(d, byTar, into)
    t.equal(result.status, 0, result.stderr)
    t.same(
      upperSnapshot(into),
      withoutIdentity(upperSnapshot(d.upper)),
      "GNU tar's sparse archive (tar -S) restores with its holes (the filesystem identity is cleared)",
    )
  },
)

await t.test(
  'an archive written into the upper it backs up leaves itself out: -o (its temporary file) and a redirected standard output',
  async (t) => {
    const d = plainDevice(t, (upper) =>
      writeTree(upper, { '/root/.profile': 'profile\n', '/etc/config/network': 'lan\n' }),
    )
    const rootNames = (archive: string): string[] =>
      execFileSync('tar', ['-tzf', archive], { encoding: 'utf8' })
        .split('\n')
        .filter((name) => name.startsWith('root/'))
    const inside = `${d.upper}/root/b.ovb`
    const made = backup(d, inside)
    t.equal(made.status, 0, made.stderr)
    t.same(rootNames(inside), ['root/', 'root/.profile'], '-o: its temporary file is not in it')
    const into = `${d.dir}/restored-inside`
    fs.mkdirSync(into)
    t.equal(restore(d, inside, into).status, 0)
    t.same(fs.readdirSync(`${into}/root`), ['.profile'], 'nor in the restored upper')

    const redirected = `${d.upper}/root/out.ovb`
    execFileSync('sh', [
      '-c',
      `exec node "$0" backup --upper "$1" --lower "$2" > "$3"`,
      fileArgument(),
      d.upper,
      d.lower,
      redirected,
    ])
    t.same(
      rootNames(redirected),
      ['root/', 'root/.profile', 'root/b.ovb'],
      'standard output: the file it writes is not in it',
    )
  },
)

await t.test(
  'inode flags (chattr +i, +a, +d) come back, set last; where the filesystem has none they are reported, not dropped',
  async (t) => {
    const d = plainDevice(t, (upper) => {
      writeTree(upper, {
        '/etc/resolv.conf': 'nameserver 192.0.2.1\n',
        '/etc/locked/inside': 'in an immutable directory\n',
        '/var/log/messages': 'append only\n',
        '/root/scratch': 'no dump\n',
      })
      execFileSync('chattr', ['+i', `${upper}/etc/resolv.conf`, `${upper}/etc/locked`])
      execFileSync('chattr', ['+a', `${upper}/var/log/messages`])
      execFileSync('chattr', ['+d', `${upper}/root/scratch`])
    })
    const archive = `${d.dir}/flags.ovb`
    t.equal(backup(d, archive).status, 0)
    t.ok(execFileSync('gzip', ['-dc', archive]).includes(Buffer.from('SCHILY.fflags=schg')), "star's and bsdtar's key")

    // ramfs keeps no inode flags: the restore completes and names what it could not keep.
    const ramfs = `${d.dir}/ramfs`
    fs.mkdirSync(ramfs)
    execFileSync('mount', ['-t', 'ramfs', 'ramfs', ramfs])
    // scratch()'s cleanup unmounts it, with the tmpfs it is in.
    fs.mkdirSync(`${ramfs}/into`)
    const reported = restore(d, archive, `${ramfs}/into`)
    t.equal(reported.status, 0, reported.stderr)
    t.match(
      reported.stderr,
      /^ovroot: inode flags \(chattr\) not kept on 4 entries \(.*\): \/etc\/locked \/etc\/resolv\.conf \/root\/scratch \/var\/log\/messages\n$/,
    )
    t.equal(fs.readFileSync(`${ramfs}/into/etc/resolv.conf`, 'utf8'), 'nameserver 192.0.2.1\n', 'the rest restored')

    roundTrip(t, d, 'flags')
    const restored = `${d.dir}/restored-flags`
    t.throws(() => fs.writeFileSync(`${restored}/etc/resolv.conf`, 'x'), { code: 'EPERM' }, 'immutable again')
    t.throws(() => fs.writeFileSync(`${restored}/etc/locked/new`, 'x'), { code: 'EPERM' }, 'a directory too')
    fs.appendFileSync(`${restored}/var/log/messages`, 'more\n')
    t.throws(() => fs.writeFileSync(`${restored}/var/log/messages`, 'x'), { code: 'EPERM' }, 'append only again')
  },
)

await t.test(
  'backup --changes-only: an entry removed while compared is named in one line and left out; the rest is done, exit 6',
  async (t) => {
    const d = plainDevice(t, (upper) => writeTree(upper, { '/etc/gone': 'new\n', '/etc/kept': 'new\n' }))
    writeTree(d.lower, { '/etc/gone': 'old\n', '/etc/kept': 'old\n' })
    // As diff's own test: with an xattr on both, the comparison reads the upper's after the lower's open, which
    // waits while the upper's copy goes.
    const tagBoth = (): void => {
      for (const root of [d.lower, d.upper]) setXattr(`${root}/etc/gone`, 'user.tag', Buffer.from('a'))
    }
    tagBoth()
    const held = await holdFirstOpen(`${d.lower}/etc/gone`, 'remove', `${d.upper}/etc/gone`)
    t.teardown(() => held.kill())
    const archive = `${d.dir}/changes.ovb`
    const made = backup(d, archive, '--changes-only')
    t.equal(await held.done, 0, 'removed while backup compared it')
    t.equal(made.status, 6, 'a status of its own')
    t.match(
      made.stderr,
      /^ovroot: \/etc\/gone: left out of the backup, it changed while backup --changes-only read it \(.*no such file or directory\)\n$/,
      'one line naming it',
    )
    const listed = execFileSync('tar', ['-tzf', archive], { encoding: 'utf8' })
    t.match(listed, /^etc\/kept$/m, 'the rest is archived')
    t.notMatch(listed, /etc\/gone/)
  },
)
