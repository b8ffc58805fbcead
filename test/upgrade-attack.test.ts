/**
 * Firmware upgrades on the host, against the cases the issue's rows do not
 * make: an entry whose type the new firmware changes under the user's files,
 * names the manifest must carry, a damaged flash, upgrade-check's errors.
 * Each firmware is a real squashfs with its manifest, the upper a real one
 * written through an overlay over A, reconciled at "boot" on B.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import { MANIFEST_PATH } from '../src/upgrade/manifest.js'
import { mountOverlay, ovroot, scratch, unmount, upperSnapshot } from './helpers/overlay.js'
import { bootContext } from './helpers/upgrade.js'

const OVROOT_OPTIONS = ['index=off', 'metacopy=off', 'redirect_dir=off', 'xino=off', 'nfs_export=off']

/** A squashfs firmware made by POPULATE (with its manifest unless told not to), mounted at DIR/NAME. */
function firmware(dir: string, name: string, populate: (tree: string) => void, manifest = true): string {
  const tree = `${dir}/${name}-tree`
  fs.mkdirSync(tree)
  populate(tree)
  if (manifest) {
    fs.mkdirSync(`${tree}/usr/lib/ovroot`, { recursive: true })
    const made = ovroot(['manifest', tree, '--output', `${tree}/${MANIFEST_PATH}`])
    if (made.status !== 0) throw new Error(made.stderr)
  }
  execFileSync('mksquashfs', [tree, `${dir}/${name}.sqfs`, '-quiet', '-no-progress', '-comp', 'gzip'])
  fs.mkdirSync(`${dir}/${name}`)
  execFileSync('mount', ['-t', 'squashfs', '-o', 'ro,loop', `${dir}/${name}.sqfs`, `${dir}/${name}`])
  return `${dir}/${name}`
}

/** A flash recorded on A, CHANGE made through an overlay over A, then the boot on B: returns what the merged view over B reads. */
async function upgrade(
  dir: string,
  a: string,
  b: string,
  change: (merged: string) => void,
  options: string[] = OVROOT_OPTIONS,
) {
  const { onFirmware } = await import('../src/upgrade/boot.js')
  const layout = { root: `${dir}/flash`, upperName: 'upper' }
  const upper = `${layout.root}/upper`
  const work = `${layout.root}/work`
  fs.mkdirSync(upper, { recursive: true })
  fs.mkdirSync(work, { recursive: true })
  const context = (lower: string) => bootContext(layout, lower)
  await onFirmware(await context(a))
  const merged = `${dir}/merged`
  mountOverlay(merged, [a], upper, work, options)
  change(merged)
  unmount(merged)
  const summary = await onFirmware(await context(b))
  fs.mkdirSync(work, { recursive: true })
  mountOverlay(merged, [b], upper, work, options)
  return { summary, merged, upper, layout, done: () => unmount(merged) }
}

const read = (path: string | Buffer): string | undefined => {
  try {
    return fs.readFileSync(path, 'latin1')
  } catch {
    return undefined
  }
}

await t.test('a directory of A that B makes a file or a symlink: the user’s files in it are never lost', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const a = firmware(s.dir, 'a', (tree) => {
    fs.mkdirSync(`${tree}/etc/conf.d`, { recursive: true })
    fs.writeFileSync(`${tree}/etc/conf.d/base`, 'base 1\n')
    fs.mkdirSync(`${tree}/etc/linked.d`)
    fs.writeFileSync(`${tree}/etc/linked.d/base`, 'base 1\n')
  })
  const b = firmware(s.dir, 'b', (tree) => {
    fs.mkdirSync(`${tree}/etc`, { recursive: true })
    fs.writeFileSync(`${tree}/etc/conf.d`, 'now a file\n')
    fs.symlinkSync('/tmp', `${tree}/etc/linked.d`)
  })
  const run = await upgrade(s.dir, a, b, (merged) => {
    fs.writeFileSync(`${merged}/etc/conf.d/mine`, 'my own file\n')
    fs.appendFileSync(`${merged}/etc/linked.d/base`, 'my edit\n')
  })
  t.teardown(run.done)
  t.equal(read(`${run.upper}/etc/conf.d/mine`), 'my own file\n', 'the user’s own file is still on the flash')
  t.equal(read(`${run.upper}/etc/linked.d/base`), 'base 1\nmy edit\n', 'the user’s edit is still on the flash')
  t.equal(read(`${run.merged}/etc/conf.d/mine`), 'my own file\n', 'and shows over B')
  t.ok(run.summary?.conflicts.includes('/etc/conf.d'), 'the directory B replaced is reported as a conflict')
  t.ok(run.summary?.conflicts.includes('/etc/linked.d'), 'so is the one B made a symlink')
})

await t.test(
  'upgrade-check IMAGE: a missing file or one that is no squashfs is one line, a documented status, nothing written',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = firmware(s.dir, 'a', (tree) => {
      fs.mkdirSync(`${tree}/etc`)
      fs.writeFileSync(`${tree}/etc/motd`, 'motd\n')
    })
    fs.mkdirSync(`${s.dir}/flash/upper`, { recursive: true })
    fs.writeFileSync(`${s.dir}/junk.img`, 'not a squashfs at all\n'.repeat(100))
    fs.writeFileSync(`${s.dir}/empty.img`, '')
    const check = (image: string) => ovroot(['upgrade-check', image, '--lower', a, '--upper', `${s.dir}/flash/upper`])
    const missing = check(`${s.dir}/missing.sqfs`)
    t.equal(missing.status, 4, 'a missing image: environment (exit 4), as a missing backup is')
    t.match(missing.stderr, /^ovroot: upgrade-check: \S+missing\.sqfs does not exist\n$/, 'one line naming it')
    for (const name of ['junk.img', 'empty.img']) {
      const junk = check(`${s.dir}/${name}`)
      t.equal(junk.status, 5, `${name}: invalid data (exit 5)`)
      t.match(
        junk.stderr,
        new RegExp(`^ovroot: upgrade-check: \\S+${name} is not a squashfs image[^\\n]*\\n$`),
        'one line saying what is wrong',
      )
    }
    t.notOk(
      fs.existsSync(`${s.dir}/flash/.ovroot/firmware`),
      'nothing was recorded on the flash for an image never looked at',
    )
  },
)

await t.test(
  'a damaged base manifest on the flash: the boot goes on, what it held is unknown (kept, reported) or taken again',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const files = (version: string) => (tree: string) => {
      fs.mkdirSync(`${tree}/etc`, { recursive: true })
      fs.writeFileSync(`${tree}/etc/motd`, `motd ${version}\n`)
      fs.writeFileSync(`${tree}/etc/profile`, `profile ${version}\n`)
    }
    const a = firmware(s.dir, 'a', files('1'))
    const b = firmware(s.dir, 'b', files('2'))
    const run = await upgrade(s.dir, a, b, (merged) => {
      fs.appendFileSync(`${merged}/etc/motd`, 'mine\n')
      fs.utimesSync(`${merged}/etc/profile`, new Date(), new Date())
      const manifest = `${s.dir}/flash/.ovroot/base.manifest`
      fs.truncateSync(manifest, fs.statSync(manifest).size - 20)
    })
    t.teardown(run.done)
    t.same(
      run.summary?.unknown.sort(),
      ['/etc', '/etc/motd', '/etc/profile'],
      'the boot on B reconciled: O unknown, named',
    )
    t.equal(read(`${run.merged}/etc/motd`), 'motd 1\nmine\n', 'the user’s edit is kept')

    // Records taken at boot (no manifest shipped): the same firmware takes them again.
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { currentIdentity } = await import('../src/upgrade/identity.js')
    const { readFirmwareRecord, baseSource } = await import('../src/upgrade/record.js')
    const { OverlayXattrs } = await import('../src/overlay/xattrs.js')
    const c = firmware(s.dir, 'c', files('3'), false)
    const layout = { root: `${s.dir}/flash2`, upperName: 'upper' }
    fs.mkdirSync(`${layout.root}/upper/etc`, { recursive: true })
    fs.writeFileSync(`${layout.root}/upper/etc/motd`, 'motd 3\nmine\n')
    const boot = async () =>
      onFirmware({
        layout,
        lower: c,
        xattrs: new OverlayXattrs('trusted'),
        preferFirmware: false,
        recorded: readFirmwareRecord(layout),
        current: await currentIdentity(c),
        work: `${layout.root}/work`,
      })
    await boot()
    fs.writeFileSync(`${layout.root}/.ovroot/base.manifest`, 'ovroot-manifest 1 0000\ngarbage\n')
    await t.resolves(boot(), 'the next boot on the same firmware goes on')
    const record = readFirmwareRecord(layout)
    t.match(
      record && baseSource(layout, record, []).lookup('etc/motd'),
      { type: 'f', size: 7 },
      'and took the records again',
    )
  },
)

await t.test(
  'a damaged firmware record on the flash: the boot reconciles against the base it has, and records the firmware again',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const files = (version: string) => (tree: string) => {
      fs.mkdirSync(`${tree}/etc`, { recursive: true })
      fs.writeFileSync(`${tree}/etc/motd`, `motd ${version}\n`)
      fs.writeFileSync(`${tree}/etc/profile`, `profile ${version}\n`)
    }
    const a = firmware(s.dir, 'a', files('1'))
    const b = firmware(s.dir, 'b', files('2'))
    const run = await upgrade(s.dir, a, b, (merged) => {
      fs.appendFileSync(`${merged}/etc/motd`, 'mine\n')
      fs.utimesSync(`${merged}/etc/profile`, new Date(), new Date())
      fs.writeFileSync(`${s.dir}/flash/.ovroot/firmware`, '{"identity":')
    })
    t.teardown(run.done)
    t.ok(run.summary, 'the boot on B went on and reconciled')
    t.same(run.summary?.conflicts, ['/etc/motd'], 'the user’s edit: a conflict, kept')
    t.equal(read(`${run.merged}/etc/motd`), 'motd 1\nmine\n', 'the user’s edit shows')
    t.equal(read(`${run.merged}/etc/profile`), 'profile 2\n', 'the stale copy went')
    const { readFirmwareRecord } = await import('../src/upgrade/record.js')
    const { currentIdentity } = await import('../src/upgrade/identity.js')
    t.equal(readFirmwareRecord(run.layout)?.identity, (await currentIdentity(b)).identity, 'B is recorded')
  },
)

await t.test('metacopy: a file the user renamed whose source B removed is not dropped silently', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const a = firmware(s.dir, 'a', (tree) => {
    fs.mkdirSync(`${tree}/etc`, { recursive: true })
    fs.writeFileSync(`${tree}/etc/old`, 'old name\n')
    fs.writeFileSync(`${tree}/etc/moved`, 'moved 1\n')
  })
  const b = firmware(s.dir, 'b', (tree) => {
    fs.mkdirSync(`${tree}/etc`, { recursive: true })
    fs.writeFileSync(`${tree}/etc/moved`, 'moved 2\n')
  })
  const options = ['redirect_dir=on', 'metacopy=on', 'index=off']
  const run = await upgrade(
    s.dir,
    a,
    b,
    (merged) => {
      fs.renameSync(`${merged}/etc/old`, `${merged}/etc/new`)
      fs.renameSync(`${merged}/etc/moved`, `${merged}/etc/moved.mine`)
    },
    options,
  )
  t.teardown(run.done)
  const { getXattr } = await import('../src/sys/libc.js')
  t.ok(fs.existsSync(`${run.upper}/etc/moved.mine`), 'the renamed file B changed is still there')
  t.equal(getXattr(`${run.upper}/etc/moved.mine`, 'trusted.overlay.metacopy'), undefined, '... as a plain copy')
  t.equal(read(`${run.merged}/etc/moved.mine`), 'moved 2\n', '... with B’s data (its source changed)')
  t.ok(run.summary?.conflicts.includes('/etc/new'), 'the renamed file whose source B removed is reported by its name')
})

await t.test(
  'a stale copy refreshed from a sparse file of B keeps its holes (64 MiB with 4 KiB of data is not 64 MiB of flash)',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = firmware(s.dir, 'a', (tree) => {
      fs.mkdirSync(`${tree}/var`, { recursive: true })
      fs.writeFileSync(`${tree}/var/image`, 'small 1\n')
    })
    const b = firmware(s.dir, 'b', (tree) => {
      fs.mkdirSync(`${tree}/var`, { recursive: true })
      fs.writeFileSync(`${tree}/var/image`, '')
      fs.truncateSync(`${tree}/var/image`, 64 << 20)
      const fd = fs.openSync(`${tree}/var/image`, 'r+')
      fs.writeSync(fd, Buffer.alloc(4096, 7), 0, 4096, 32 << 20)
      fs.closeSync(fd)
    })
    const run = await upgrade(s.dir, a, b, (merged) => fs.chmodSync(`${merged}/var/image`, 0o600))
    t.teardown(run.done)
    const stat = fs.statSync(`${run.upper}/var/image`)
    t.equal(stat.mode & 0o7777, 0o600, 'the user’s mode on B’s data')
    t.equal(stat.size, 64 << 20, 'B’s size')
    // squashfs answers SEEK_DATA by its blocks (128 KiB): the data block is written whole, the holes never.
    t.ok(stat.blocks * 512 <= 1 << 20, `its holes kept (${stat.blocks * 512} bytes allocated, not 64 MiB)`)
    const data = fs.readFileSync(`${run.merged}/var/image`)
    t.equal(
      data.subarray(32 << 20, (32 << 20) + 4096).toString('hex'),
      Buffer.alloc(4096, 7).toString('hex'),
      'B’s bytes',
    )
  },
)

await t.test(
  'names as bytes through the reconcile: newline, backslash, tab, invalid UTF-8, a literal \\x in a name',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const names = ['new\nline', 'back\\slash', 'tab\there', 'bad\xff\xfe', 'lit\\x41eral', '-dash', '\\']
    const files = (version: string) => (tree: string) => {
      fs.mkdirSync(`${tree}/etc`, { recursive: true })
      for (const name of names) {
        fs.writeFileSync(Buffer.from(`${tree}/etc/${name}`, 'latin1'), `${version}\n`)
        fs.writeFileSync(Buffer.from(`${tree}/etc/${name}.edit`, 'latin1'), `${version}\n`)
      }
    }
    const a = firmware(s.dir, 'a', files('1'))
    const b = firmware(s.dir, 'b', files('2'))
    const at = (root: string, name: string): Buffer => Buffer.from(`${root}/etc/${name}`, 'latin1')
    const run = await upgrade(s.dir, a, b, (merged) => {
      for (const name of names) {
        fs.utimesSync(at(merged, name), new Date(), new Date())
        fs.appendFileSync(at(merged, `${name}.edit`), 'mine\n')
      }
    })
    t.teardown(run.done)
    for (const name of names) {
      t.equal(read(at(run.merged, name)), '2\n', `${JSON.stringify(name)}: the stale copy went, B shows`)
      t.notOk(fs.existsSync(at(run.upper, name)), `${JSON.stringify(name)}: no copy left`)
      t.equal(read(at(run.merged, `${name}.edit`)), '1\nmine\n', `${JSON.stringify(name)}.edit: the user’s edit kept`)
    }
    const { showBytes } = await import('../src/names.js')
    t.same(
      run.summary?.conflicts.sort(),
      names.map((name) => `/etc/${showBytes(`${name}.edit`)}`).sort(),
      'each conflict named in the escaped form',
    )
  },
)

await t.test(
  'A -> B -> A -> B, with and without shipped manifests: each boot shows the firmware’s files and the user’s changes',
  async (t) => {
    for (const shipped of [true, false]) {
      const s = scratch()
      t.teardown(() => s.cleanup())
      const files = (version: string) => (tree: string) => {
        fs.mkdirSync(`${tree}/etc/init.d`, { recursive: true })
        for (const name of ['motd', 'profile', 'network', 'banner'])
          fs.writeFileSync(`${tree}/etc/${name}`, `${name} ${version}\n`)
        fs.writeFileSync(`${tree}/etc/init.d/${version === 'A' ? 'old' : 'new'}`, `${version}\n`)
      }
      const fw = { A: firmware(s.dir, 'a', files('A'), shipped), B: firmware(s.dir, 'b', files('B'), shipped) }
      const { onFirmware } = await import('../src/upgrade/boot.js')
      const { currentIdentity } = await import('../src/upgrade/identity.js')
      const { readFirmwareRecord } = await import('../src/upgrade/record.js')
      const { OverlayXattrs } = await import('../src/overlay/xattrs.js')
      const layout = { root: `${s.dir}/flash`, upperName: 'upper' }
      const upper = `${layout.root}/upper`
      const work = `${layout.root}/work`
      fs.mkdirSync(upper, { recursive: true })
      const boot = async (version: 'A' | 'B', change?: (merged: string) => void): Promise<string> => {
        const lower = fw[version]
        await onFirmware({
          layout,
          lower,
          xattrs: new OverlayXattrs('trusted'),
          preferFirmware: false,
          recorded: readFirmwareRecord(layout),
          current: await currentIdentity(lower),
          work,
        })
        fs.mkdirSync(work, { recursive: true })
        mountOverlay(`${s.dir}/merged`, [lower], upper, work, OVROOT_OPTIONS)
        change?.(`${s.dir}/merged`)
        return `${s.dir}/merged`
      }
      const label = shipped ? 'shipped' : 'recorded at boot'
      let merged = await boot('A', (m) => {
        fs.utimesSync(`${m}/etc/motd`, new Date(), new Date())
        fs.appendFileSync(`${m}/etc/network`, 'mine\n')
        fs.rmSync(`${m}/etc/banner`)
        fs.writeFileSync(`${m}/etc/own`, 'own\n')
      })
      unmount(merged)
      // Records taken at boot: what the user changed since the last boot on A is unknown (README): A boots once more.
      unmount(await boot('A'))
      for (const [round, version] of (['B', 'A', 'B'] as const).entries()) {
        merged = await boot(version)
        const at = `${label}, boot ${round + 2} (${version})`
        t.equal(read(`${merged}/etc/motd`), `motd ${version}\n`, `${at}: the touched file shows this firmware’s`)
        t.equal(read(`${merged}/etc/profile`), `profile ${version}\n`, `${at}: an untouched file, this firmware’s`)
        t.equal(read(`${merged}/etc/network`), 'network A\nmine\n', `${at}: the user’s edit stays`)
        t.equal(read(`${merged}/etc/banner`), undefined, `${at}: the user’s deletion stays`)
        t.equal(read(`${merged}/etc/own`), 'own\n', `${at}: the user’s own file`)
        t.same(
          fs.readdirSync(`${merged}/etc/init.d`),
          [version === 'A' ? 'old' : 'new'],
          `${at}: this firmware’s directory`,
        )
        unmount(merged)
      }
    }
  },
)

await t.test(
  'a flash too full to stage the reconcile: one typed error, the upper and the record untouched, the staging dropped',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = firmware(s.dir, 'a', (tree) => {
      fs.mkdirSync(`${tree}/var`, { recursive: true })
      fs.writeFileSync(`${tree}/var/blob`, 'a'.repeat(64))
    })
    const b = firmware(s.dir, 'b', (tree) => {
      fs.mkdirSync(`${tree}/var`, { recursive: true })
      fs.writeFileSync(`${tree}/var/blob`, Buffer.alloc(3 << 20, 'b'))
    })
    const { onFirmware } = await import('../src/upgrade/boot.js')
    const { OverlayXattrs } = await import('../src/overlay/xattrs.js')
    const { applyPending } = await import('../src/pending/apply.js')
    const flash = `${s.dir}/flash`
    fs.mkdirSync(flash)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,noatime', 'tmpfs', flash])
    const layout = { root: flash, upperName: 'upper' }
    fs.mkdirSync(`${flash}/upper`)
    fs.mkdirSync(`${flash}/work`)
    const xattrs = new OverlayXattrs('trusted')
    const context = (lower: string) => bootContext(layout, lower, { xattrs })
    await onFirmware(await context(a))
    mountOverlay(`${s.dir}/merged`, [a], `${flash}/upper`, `${flash}/work`, OVROOT_OPTIONS)
    fs.chmodSync(`${s.dir}/merged/var/blob`, 0o600)
    unmount(`${s.dir}/merged`)
    const before = upperSnapshot(`${flash}/upper`)
    const record = fs.readFileSync(`${flash}/.ovroot/firmware`, 'utf8')
    await t.rejects(
      onFirmware(await context(b)),
      { code: 'EUPGRADE', failure: { committed: false, cause: /ENOSPC|no room|no space/i } },
      'the staging found no room: an uncommitted upgrade failure naming it',
    )
    t.same(upperSnapshot(`${flash}/upper`), before, 'the upper is as it was')
    t.equal(fs.readFileSync(`${flash}/.ovroot/firmware`, 'utf8'), record, 'A is still the record')
    t.notOk(fs.existsSync(`${flash}/.ovroot/pending`), 'nothing committed')
    await applyPending(layout, `${flash}/work`, xattrs)
    t.same(
      fs.readdirSync(`${flash}/.ovroot`).filter((name) => name.startsWith('staged')),
      [],
      'the next boot drops the staging left behind',
    )
  },
)

await t.test(
  'upgrade-check on a live upper: an entry listed, then gone before it is read, is left out (no error)',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const a = firmware(s.dir, 'a', (tree) => {
      fs.mkdirSync(`${tree}/etc`, { recursive: true })
      fs.writeFileSync(`${tree}/etc/motd`, 'motd 1\n')
    })
    const b = firmware(s.dir, 'b', (tree) => {
      fs.mkdirSync(`${tree}/etc`, { recursive: true })
      fs.writeFileSync(`${tree}/etc/motd`, 'motd 2\n')
    })
    const upper = `${s.dir}/upper`
    fs.mkdirSync(`${upper}/etc`, { recursive: true })
    fs.writeFileSync(`${upper}/etc/motd`, 'motd 1\n')
    // The directory's listing names an entry a process removes before the walk reads it.
    const realFs = await import('../src/sys/fs.js')
    const listNames: typeof realFs.listNames = (path) => {
      const names = realFs.listNames(path)
      return String(path).endsWith('/etc') ? [...names, 'removed-meanwhile'] : names
    }
    const walk = await t.mockImport<typeof import('../src/upper/walk.js')>('../src/upper/walk.js', {
      '../src/sys/fs.js': { ...realFs, listNames },
    })
    const { planUpgrade } = await t.mockImport<typeof import('../src/upgrade/reconcile.js')>(
      '../src/upgrade/reconcile.js',
      { '../src/upper/walk.js': walk },
    )
    const { treeSource } = await import('../src/upgrade/sources.js')
    const { OverlayXattrs } = await import('../src/overlay/xattrs.js')
    const { bytesOf } = await import('../src/names.js')
    const plan = planUpgrade(
      bytesOf(upper),
      new OverlayXattrs('trusted'),
      treeSource(bytesOf(a)),
      treeSource(bytesOf(b)),
      {
        preferFirmware: false,
        live: true,
      },
    )
    t.same(
      plan.entries.map((item) => `${item.path} ${item.verdict.class}`),
      ['etc converged', 'etc/motd stale'],
      'the plan of what is there',
    )
  },
)
