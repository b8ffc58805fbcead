/** Media drivers on real block devices (loop devices): naming, first-boot detection. */
import t, { type Test } from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import { resolveBlockDevice, blockDriver } from '../src/media/block.js'
import { parseProcMtd } from '../src/media/mtd.js'
import { defaultConfig } from '../src/config/schema.js'

/** A 64 MiB loop device (this host's kernel scans no partition tables; the lab's does, see device.test.ts). */
function disk(t: Test): string {
  const image = `${fs.mkdtempSync(`${os.tmpdir()}/ovroot-media-`)}/disk.img`
  fs.writeFileSync(image, '')
  fs.truncateSync(image, 64 << 20)
  const loop = execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim()
  t.teardown(() => {
    spawnSync('losetup', ['-d', loop])
    fs.rmSync(image, { force: true })
  })
  return loop
}

/** What the block driver says the device holds. */
function inspector(device: string): () => string {
  const config = defaultConfig()
  config.flash.device = device
  return () => {
    const volume = blockDriver.find(config)
    if ('absent' in volume) throw new Error(volume.absent)
    return volume.inspect()
  }
}

await t.test('a block device by path and by LABEL=', async (t) => {
  const device = disk(t)
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'ovroot_test_lbl', device])
  t.equal(resolveBlockDevice(device), device)
  t.equal(resolveBlockDevice('LABEL=ovroot_test_lbl'), device)
  t.same(resolveBlockDevice('LABEL=no_such_label'), { absent: 'no block device with LABEL=no_such_label' })
  t.same(resolveBlockDevice(''), { absent: 'no block device configured ([flash] device is empty)' })
  t.same(resolveBlockDevice('/dev/null'), { absent: '/dev/null is not a block device' })
  t.same(resolveBlockDevice('/dev/no-such-device'), { absent: '/dev/no-such-device does not exist' })
  // udev's /dev/disk/by-* names are symlinks to the node.
  const link = `/dev/ovroot-test-by-name-${process.pid}`
  fs.symlinkSync(device, link)
  t.teardown(() => fs.rmSync(link, { force: true }))
  t.equal(resolveBlockDevice(link), device, 'a symlink to the device names the device')
})

await t.test('what a block device holds: formatted, blank, the format marker, or unrecognised', async (t) => {
  const device = disk(t)
  const inspect = inspector(device)
  t.equal(inspect(), 'blank', 'all zeros: blank')
  const fd = fs.openSync(device, 'r+')
  fs.writeSync(fd, Buffer.from([0xde, 0xad, 0xc0, 0xde]), 0, 4, 0)
  fs.fsyncSync(fd)
  t.equal(inspect(), 'blank', '0xdeadc0de: format me')
  fs.writeSync(fd, Buffer.from('not a filesystem, not erased'), 0, 28, 0)
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  t.equal(inspect(), 'unrecognised', 'anything else is left alone')
  execFileSync('mkfs.ext4', ['-q', '-F', device])
  t.equal(inspect(), 'formatted')
})

await t.test('blank means provably blank: a signature anywhere leaves the device alone', async (t) => {
  const device = disk(t)
  const inspect = inspector(device)
  const write = (bytes: Buffer, offset: number): void => {
    const fd = fs.openSync(device, 'r+')
    fs.writeSync(fd, bytes, 0, bytes.length, offset)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
  }
  write(Buffer.from('_BHRfS_M'), 0x10040)
  t.equal(inspect(), 'unrecognised', 'a btrfs superblock at 64 KiB, zeros before it')
  write(Buffer.alloc(8), 0x10040)
  t.equal(inspect(), 'blank', 'zeros again')
  write(Buffer.from([1]), (64 << 20) - 1)
  t.equal(inspect(), 'unrecognised', 'one byte at the very end (a GPT backup header lives there)')
  write(Buffer.alloc(64 << 20, 0xff), 0)
  t.equal(inspect(), 'blank', 'erased (0xFF) throughout')
  write(Buffer.from([0]), 32 << 20)
  t.equal(inspect(), 'unrecognised', 'erased but for one byte')
})

await t.test('MTD partitions by name', async (t) => {
  const procMtd =
    'dev:    size   erasesize  name\nmtd0: 00040000 00010000 "u-boot"\nmtd3: 00800000 00010000 "rootfs_data"\n'
  t.same(parseProcMtd(procMtd, 'rootfs_data'), { index: 3, size: 0x800000, eraseSize: 0x10000 })
  t.equal(parseProcMtd(procMtd, 'nope'), undefined)
})

await t.test('an f2fs with one damaged superblock is f2fs (the kernel mounts it with the other)', async (t) => {
  const device = disk(t)
  execFileSync('mkfs.f2fs', ['-q', '-f', device])
  const config = defaultConfig()
  config.flash.device = device
  const volume = (): ReturnType<typeof blockDriver.find> => blockDriver.find(config)
  const wipe = (offset: number): void => {
    const fd = fs.openSync(device, 'r+')
    fs.writeSync(fd, Buffer.alloc(4), 0, 4, offset)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
  }
  wipe(0x400)
  const found = volume()
  if ('absent' in found) throw new Error(found.absent)
  t.equal(found.inspect(), 'formatted', 'the first superblock damaged: still formatted, never erased')
  t.equal(found.filesystem, 'f2fs', 'and mounted as f2fs, not the ext4 [flash] filesystem = auto picks at 64 MiB')
  wipe(0x1400)
  t.equal(inspector(device)(), 'unrecognised', 'both superblocks damaged: unrecognised, left alone')
})

await t.test('an ext4 the kernel found inconsistent is repaired before it is mounted', async (t) => {
  const device = disk(t)
  execFileSync('mkfs.ext4', ['-q', '-F', device])
  const target = fs.mkdtempSync(`${os.tmpdir()}/ovroot-media-mnt-`)
  t.teardown(() => {
    spawnSync('umount', [target])
    fs.rmSync(target, { recursive: true, force: true })
  })
  const precious = Buffer.alloc(1 << 20, 0x5a)
  execFileSync('mount', [device, target])
  fs.writeFileSync(`${target}/precious`, precious)
  execFileSync('umount', [target])
  // What a kernel that met an inconsistency leaves: a file's blocks called free, and the errors flag. Never
  // written to here: writeback on such an ext4 can wedge every sync(2) of the machine.
  const first = execFileSync('debugfs', ['-R', 'blocks /precious', device], { encoding: 'utf8' }).trim().split(/\s+/)[0]
  execFileSync('debugfs', ['-w', '-R', `freeb ${first} 16`, device], { stdio: 'ignore' })
  execFileSync('debugfs', ['-w', '-R', 'ssv state 3', device], { stdio: 'ignore' })
  const config = defaultConfig()
  config.flash.device = device
  const volume = blockDriver.find(config)
  if ('absent' in volume) throw new Error(volume.absent)
  t.equal(volume.inspect(), 'formatted')
  await volume.check?.()
  t.equal(spawnSync('e2fsck', ['-fn', device]).status, 0, 'consistent before it is mounted')
  volume.mount(target)
  t.ok(fs.readFileSync(`${target}/precious`).equals(precious), 'the file is whole')
})

await t.test('a read-only block device is named so, never formatted, checked or mounted', async (t) => {
  const device = disk(t)
  execFileSync('mkfs.ext4', ['-q', '-F', device])
  execFileSync('blockdev', ['--setro', device])
  t.teardown(() => spawnSync('blockdev', ['--setrw', device]))
  t.throws(inspector(device), {
    code: 'EROFS',
    message: `block device ${device} is read-only (write-protected: a locked card, blockdev --setro); left as it is`,
  })
})

await t.test('an ext4 with errors and no e2fsck on the device: named so, left untouched', async (t) => {
  const device = disk(t)
  execFileSync('mkfs.ext4', ['-q', '-F', device])
  execFileSync('debugfs', ['-w', '-R', 'ssv state 3', device], { stdio: 'ignore' })
  const config = defaultConfig()
  config.flash.device = device
  const volume = blockDriver.find(config)
  if ('absent' in volume) throw new Error(volume.absent)
  const path = process.env.PATH
  process.env.PATH = fs.mkdtempSync(`${os.tmpdir()}/ovroot-media-nopath-`)
  t.teardown(() => {
    process.env.PATH = path
  })
  // Not "errors e2fsck -p does not repair on its own": it never ran.
  await t.rejects(volume.check?.() ?? Promise.resolve(), {
    code: 'ENOTOOL',
    message: `block device ${device} (ext4) has errors the kernel recorded: it is checked (e2fsck -p) before it is mounted, and e2fsck did not run (e2fsck: tool not found (install it on the device)); left untouched`,
  })
})
