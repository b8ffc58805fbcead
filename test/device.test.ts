/**
 * The device lab: every lifecycle scenario is a real boot of the demo image
 * under QEMU (TCG), through qemu/vm exactly as a user or CI runs it.
 */
import t, { type Test } from 'tap'
import * as fs from 'node:fs'
import { execFileSync } from 'node:child_process'
import { boot, changesFrom, consoleLog, run, statusFrom, workspace } from './helpers/lab.js'
import { ConsoleSession } from './helpers/console.js'
import {
  corruptFlash,
  DIFF,
  EXPECTED_DIFF,
  interactiveConsole,
  lifecycle,
  STATUS,
  UNLOADABLE_INITS,
  unloadableInit,
  USER_CHANGES,
} from './helpers/scenarios.js'

await t.test('NOR flash (JFFS2 on MTD): first boot, persistence, reset with a keep list', async (t) =>
  lifecycle(t, 'nor'),
)

await t.test(
  "the demo console on a pty: one shell with job control that answers; the README's backup, reset and restore reboot it; poweroff -f leaves",
  async (t) => interactiveConsole(t, [], 'poweroff', true),
)

await t.test('power cut during heavy writes: the next boot mounts the flash, synced files are intact', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  const args = ['--flash', flash]
  const cut = boot([
    ...args,
    '--cut-after',
    '4',
    '--run',
    'head -c 300000 /dev/urandom > /etc/synced && sync && md5sum /etc/synced && i=0; while :; do i=$((i+1)); head -c 65536 /dev/urandom > /root/churn$((i % 20)); done',
  ])
  t.equal(cut.status, 137, 'the power was cut')
  const sum = /^([0-9a-f]{32}) {2}\/etc\/synced$/m.exec(cut.stdout)?.[1]
  t.ok(sum, 'the synced file was written before the cut')
  const after = run(t, args, `${STATUS} && md5sum /etc/synced`)
  t.equal(statusFrom(after.stdout).mode, 'flash', 'the next boot mounts the flash')
  t.match(after.stdout, `${sum}  /etc/synced`, 'the synced file is intact')
})

await t.test(
  'a large reset: a power cut inside it, then the next boot finishes it although it outlasts [boot] timeout',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    fs.writeFileSync(flash, Buffer.alloc(32 << 20, 0xff))
    const args = ['--flash', flash]
    const prepare = run(
      t,
      args,
      'cd /root && for d in $(seq 1 50); do mkdir d$d && (cd d$d && seq 1 1000 | xargs touch); done; mkdir -p /etc/keepme && echo kept > /etc/keepme/file && sync && ovroot reset --yes --keep /etc/keepme',
    )
    t.equal(prepare.status, 0, 'fifty thousand files, and a reset scheduled')
    const cut = boot([
      ...args,
      '--cut-on',
      'ovroot: applying factory reset*',
      '--cut-after',
      '1',
      '--run',
      'echo booted',
    ])
    t.equal(cut.status, 137, 'the power was cut')
    const console = consoleLog()
    t.match(console, /ovroot: applying factory reset/, 'the reset had begun')
    t.notMatch(console, /ovroot: applied/, 'and had not finished: the cut landed inside it')
    const timeout = 8
    const after = run(
      t,
      [...args, '--append', `ovroot.boot.timeout=${timeout}`],
      `${STATUS} && ls /root | wc -l && cat /etc/keepme/file`,
    )
    const status = statusFrom(after.stdout) as ReturnType<typeof statusFrom> & { bootSeconds: number }
    t.equal(status.mode, 'flash', 'the shim did not kill the working agent')
    t.ok(
      status.bootSeconds > timeout,
      `the boot took ${status.bootSeconds} s, longer than the ${timeout} s timeout: progress kept the timer back`,
    )
    t.same(status.reset?.kept, ['/etc/keepme'])
    t.same(status.pending, [], 'nothing is pending any more')
    t.match(after.stdout, /^0$/m, 'every file the reset was to remove is gone')
    t.match(after.stdout, /^kept$/m, 'the kept file is there')
  },
)

await t.test('first boot on a large erased NOR with a small timeout: flash mode, nothing erased again', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  fs.writeFileSync(flash, Buffer.alloc(64 << 20, 0xff))
  const result = run(t, ['--flash', flash, '--append', 'ovroot.boot.timeout=8'], STATUS)
  const status = statusFrom(result.stdout)
  t.equal(status.mode, 'flash')
  t.equal(status.formatted, true)
})

await t.test('corrupt flash (random bytes): boots on RAM, says why, leaves the flash untouched', async (t) =>
  corruptFlash(t),
)

await t.test('flash device missing: boots on RAM with the reason', async (t) => {
  const result = run(t, ['--no-flash'], STATUS)
  const status = statusFrom(result.stdout)
  t.equal(status.mode, 'degraded')
  t.match(
    status.reason,
    /no flash found \(mtd: no MTD partition named "rootfs_data".*ubi: no UBI device attached.*block: no block device configured/,
  )
})

/** A NOR flash the user filled up: /etc/precious, then /root/fill* until the flash refused. */
function fullFlash(t: Test): string {
  const flash = `${workspace(t)}/nor.flash`
  const fill = run(
    t,
    ['--flash', flash],
    'echo precious > /etc/precious && sync && i=0; while head -c 65536 /dev/urandom > /root/fill$i 2>/dev/null; do i=$((i+1)); done; sync',
  )
  t.equal(fill.status, 0)
  return flash
}

const FULL_CHECK = `${STATUS} && grep ' /overlay ' /proc/mounts && cat /etc/precious && touch /overlay/probe; ls /root | grep -c fill`

await t.test(
  "full flash: degraded, flash read-only, the user's files visible; ovroot reset --reboot restores the factory state",
  async (t) => {
    const flash = fullFlash(t)
    const degraded = boot(['--flash', flash, '--run', `${FULL_CHECK}; ovroot reset --yes --reboot`])
    const status = statusFrom(degraded.stdout)
    t.equal(status.mode, 'degraded')
    t.match(status.reason, /is full: its files are shown read-only under a RAM upper; 'ovroot reset'/)
    t.match(degraded.stdout, /^mtd0 \/overlay jffs2 ro[, ]/m, 'the flash is mounted read-only')
    t.match(degraded.stdout, /^precious$/m, "the user's files are visible")
    t.match(degraded.stdout, /Read-only file system/, "nothing can write to the flash behind the overlay's back")
    t.match(
      degraded.stdout,
      /factory reset scheduled for the next boot/,
      'the reset the banner advises can be scheduled',
    )
    const after = run(t, ['--flash', flash], `${STATUS} && ls /etc/precious 2>&1; ls /root | grep -c fill`)
    t.equal(statusFrom(after.stdout).mode, 'flash', 'the reset needed no free space and the flash is usable again')
    t.match(after.stdout, /\/etc\/precious: No such file or directory/, 'factory state')
    t.match(after.stdout, /^0$/m)
  },
)

await t.test('full flash: ovroot reset PATH drops just those files at the next boot', async (t) => {
  const flash = fullFlash(t)
  const degraded = run(t, ['--flash', flash], `${STATUS} && ovroot reset --yes /root`)
  t.equal(statusFrom(degraded.stdout).mode, 'degraded')
  t.match(degraded.stdout, /reset of \/root scheduled for the next boot/)
  const after = run(t, ['--flash', flash], `${STATUS} && cat /etc/precious && ls /root | grep -c fill`)
  t.equal(statusFrom(after.stdout).mode, 'flash')
  t.match(after.stdout, /^precious$/m, 'everything else stays')
  t.match(after.stdout, /^0$/m, 'the files that filled the flash are gone')
})

await t.test(
  "full flash without ovroot's state directory (formatted by an older ovroot or by fstools): the user's files visible",
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const fill = run(
      t,
      ['--flash', flash],
      'rm -rf /overlay/.ovroot && echo precious > /etc/precious && sync && i=0; while head -c 65536 /dev/urandom > /root/fill$i 2>/dev/null; do i=$((i+1)); done; sync',
    )
    t.equal(fill.status, 0)
    const degraded = run(t, ['--flash', flash], FULL_CHECK)
    const status = statusFrom(degraded.stdout)
    t.equal(status.mode, 'degraded')
    t.match(status.reason, /is full: its files are shown read-only under a RAM upper/)
    t.match(degraded.stdout, /^precious$/m, "the user's files are visible")
  },
)

await t.test(
  'a scheduled change that fails at boot: degraded with the reason, the flash untouched, --cancel works there',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const args = ['--flash', flash]
    run(t, args, 'echo mine > /etc/mine && echo not-json > /overlay/.ovroot/pending && sync')
    const failed = run(
      t,
      args,
      `${STATUS} && ovroot status | grep pending; grep ' /overlay ' /proc/mounts; ovroot reset --cancel`,
    )
    const status = statusFrom(failed.stdout)
    t.equal(status.mode, 'degraded', "not the shim's failsafe")
    t.match(
      status.reason,
      /change scheduled for the flash failed: .*unreadable pending-change marker.*'ovroot reset --cancel' drops the change/,
    )
    t.match(failed.stdout, /^mtd0 \/overlay jffs2 ro[, ]/m, 'the flash is left read-only')
    t.match(failed.stdout, /^pending: +an unreadable pending change/m, 'status shows what failed')
    t.match(failed.stdout, /cancelled: an unreadable pending change/)
    const after = run(t, args, `${STATUS} && cat /etc/mine`)
    t.equal(statusFrom(after.stdout).mode, 'flash')
    t.match(after.stdout, /^mine$/m, "the user's files are intact")
  },
)

await t.test('a flash that fails every read: degraded, naming the device', async (t) => {
  const result = run(t, ['--media', 'ext4', '--flash-errors'], STATUS)
  const status = statusFrom(result.stdout)
  t.equal(status.mode, 'degraded', "not the shim's failsafe")
  t.match(status.reason, /block driver: read \/dev\/vdb: input\/output error/)
})

await t.test(
  'a NOR erase block torn by a power cut during an erase: JFFS2 recovers it, the device stays on flash',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    run(t, ['--flash', flash], 'echo mine > /etc/mine && sync')
    const image = fs.readFileSync(flash)
    const block = 64 * 1024
    let torn = -1
    for (let offset = image.length - block; offset > 0; offset -= block) {
      if (image.subarray(offset, offset + block).every((byte) => byte === 0xff)) {
        torn = offset
        break
      }
    }
    t.ok(torn > 0, 'an erased block to tear')
    for (let i = 0; i < 4096; i++) image[torn + i] = (i * 2654435761) >>> 24
    fs.writeFileSync(flash, image)
    const after = run(t, ['--flash', flash], `${STATUS} && cat /etc/mine`)
    t.equal(statusFrom(after.stdout).mode, 'flash')
    t.match(after.stdout, /^mine$/m)
  },
)

await t.test("the agent fails: the shim's failsafe boots the device", async (t) => {
  const result = run(t, ['--no-flash', '--append', 'ovroot.flash.bogus=1'], STATUS)
  const status = statusFrom(result.stdout)
  t.equal(status.mode, 'failsafe')
  t.match(status.reason, /ovroot boot failed with exit status 3/)
})

await t.test('[boot] run_dir elsewhere: the failsafe records itself where ovroot status reads', async (t) => {
  const append = 'ovroot.flash.bogus=1 ovroot.boot.run_dir=/run/elsewhere'
  const result = run(t, ['--no-flash', '--append', append], STATUS)
  const status = statusFrom(result.stdout)
  t.equal(status.mode, 'failsafe')
  t.match(status.reason, /ovroot boot failed with exit status 3/)
})

for (const media of ['nand', 'ext4', 'f2fs']) {
  await t.test(`${media}: first boot, persistence, reset with a keep list`, async (t) => lifecycle(t, media))
}

await t.test('RAM-only configuration: boots, forgets at reboot, reset has nothing to do', async (t) => {
  const first = run(t, ['--media', 'ram'], `${STATUS} && echo x > /etc/volatile && ovroot reset --yes`)
  const status = statusFrom(first.stdout)
  t.equal(status.mode, 'ram')
  t.notOk(status.reason)
  t.match(first.stdout, /nothing on flash to reset/)
  const second = run(t, ['--media', 'ram'], 'test -e /etc/volatile && echo still-there || echo gone')
  t.match(second.stdout, /^gone$/m)
})

await t.test('block flash found by PARTUUID= (MBR partition table) and by LABEL=', async (t) => {
  const image = `${workspace(t)}/disk.img`
  fs.writeFileSync(image, '')
  fs.truncateSync(image, 64 << 20)
  const mbr = Buffer.alloc(512)
  mbr.writeUInt32LE(0xcafef00d, 440)
  mbr[446 + 4] = 0x83
  mbr.writeUInt32LE(2048, 446 + 8)
  mbr.writeUInt32LE((64 << 20) / 512 - 2048, 446 + 12)
  mbr.writeUInt16LE(0xaa55, 510)
  const fd = fs.openSync(image, 'r+')
  fs.writeSync(fd, mbr, 0, 512, 0)
  fs.closeSync(fd)
  const first = run(
    t,
    ['--media', 'ext4', '--flash', image, '--append', 'ovroot.flash.device=PARTUUID=cafef00d-01'],
    `${STATUS} && echo on-partition > /etc/p`,
  )
  const status = statusFrom(first.stdout) as ReturnType<typeof statusFrom> & { medium?: { device: string } }
  t.equal(status.mode, 'flash')
  t.equal(status.medium?.device, '/dev/vdb1', 'PARTUUID names the partition')
  const second = run(
    t,
    ['--media', 'ext4', '--flash', image, '--append', 'ovroot.flash.device=LABEL=rootfs_data'],
    `${STATUS} && cat /etc/p`,
  )
  t.equal(
    (statusFrom(second.stdout) as typeof status).medium?.device,
    '/dev/vdb1',
    'LABEL finds the label the first boot gave it',
  )
  t.match(second.stdout, /^on-partition$/m)
})

await t.test('ovroot.reset=1 on the kernel command line resets at boot, keep list applied', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  run(t, ['--flash', flash], 'echo x > /etc/x && mkdir -p /etc/dropbear && echo k > /etc/dropbear/k && sync')
  const after = run(
    t,
    ['--flash', flash, '--append', 'ovroot.reset=1'],
    `${STATUS} && ls /etc/x 2>&1; cat /etc/dropbear/k`,
  )
  t.same(statusFrom(after.stdout).reset?.kept, ['/etc/dropbear'])
  t.match(after.stdout, /\/etc\/x: No such file or directory/)
  t.match(after.stdout, /^k$/m)
})

await t.test('an agent that really hangs: the shim kills it with what it started and boots the failsafe', async (t) => {
  const result = run(
    t,
    ['--no-flash', '--append', 'OVROOT=/usr/lib/ovroot-lab/hung-agent ovroot.boot.timeout=2'],
    `${STATUS}; ps | grep -c '[s]leep 86399'`,
  )
  const status = statusFrom(result.stdout)
  t.equal(status.mode, 'failsafe')
  t.match(status.reason, /made no progress for 2 s/)
  t.match(result.stdout, /^0$/m, 'the tool the agent started died with it')
})

await t.test('an init that does not exist: the shim falls back to /sbin/init', async (t) => {
  const result = run(t, ['--no-flash', '--append', 'ovroot.boot.init=/nonexistent'], STATUS)
  t.equal(result.status, 0, 'the device came up and ran the command')
  t.match(consoleLog(), /cannot execute \/nonexistent as init: \/nonexistent does not exist/)
})

for (const kind of Object.keys(UNLOADABLE_INITS)) {
  await t.test(
    `an init that exists and is executable but cannot run (${kind}): the shim falls back to /sbin/init`,
    async (t) => unloadableInit(t, kind),
  )
}

await t.test(
  'no init can run at all (the user broke /sbin/init in the upper): PID 1 lives on and gives the console a shell',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const broken = run(
      t,
      ['--flash', flash],
      'rm /sbin/init && cp /usr/lib/ovroot-lab/unloadable-init/truncated /sbin/init && sync',
    )
    t.equal(broken.status, 0, '/sbin/init replaced by a truncated binary on the flash')
    const session = new ConsoleSession(['--flash', flash])
    t.teardown(() => session.kill())
    let at = await session.waitFor(/cannot execute \/sbin\/init as init: \/sbin\/init: it is truncated/)
    at = await session.waitFor(/no init to execute: starting a shell on the console/, at)
    at = await session.waitFor(/# /, at)
    session.type('echo "alive $((6 * 7)) as $$"\r')
    await session.waitFor(/^alive 42 as \d+$/m, at)
    t.pass('the shell answers; the kernel did not panic')
    session.type('poweroff -f\r')
    t.equal(await session.exited, 0, 'and powers off')
  },
)

await t.test('live reset: --dry-run and --cancel change nothing, --reboot carries it out now', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  const args = ['--flash', flash]
  const first = run(
    t,
    args,
    'echo x > /etc/x && echo y > /etc/y && ovroot reset --dry-run --keep /etc/y && ovroot reset --yes && ovroot reset --cancel && ovroot status | grep pending',
  )
  t.equal(first.status, 0)
  t.match(first.stdout, /^discard A \/etc\/x$/m, '--dry-run lists what goes')
  t.match(first.stdout, /^keep {4}A \/etc\/y$/m, 'and what stays')
  t.match(first.stdout, /^pending: +nothing$/m, '--cancel withdraws the scheduled reset')
  const rebooting = boot([...args, '--run', 'ovroot reset --yes --keep /etc/y --reboot'])
  t.match(rebooting.stdout, /factory reset scheduled/)
  const after = run(t, args, `${STATUS} && ls /etc/x 2>&1; cat /etc/y`)
  t.same(statusFrom(after.stdout).reset?.kept, ['/etc/y'], 'the reset ran at the reboot --reboot asked for')
  t.match(after.stdout, /\/etc\/x: No such file or directory/)
  t.match(after.stdout, /^y$/m)
})

await t.test('backup, factory reset, restore: ovroot diff after equals ovroot diff before', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  const args = ['--flash', flash]
  const before = run(
    t,
    args,
    `${USER_CHANGES} && setfattr -n user.note -v kept /etc/hello && ${DIFF} && ovroot backup -o /tmp/b.ovb && cp /tmp/b.ovb /root/b.ovb && sync`,
  )
  t.equal(before.status, 0, before.stderr)
  const expected = changesFrom(before.stdout)
  t.same(expected, EXPECTED_DIFF, 'the changes, before the backup')
  const reset = run(t, args, 'ovroot reset --yes --keep /root/b.ovb')
  t.equal(reset.status, 0)
  const restored = run(t, args, `${DIFF} && ovroot restore /root/b.ovb --yes`)
  t.same(
    changesFrom(restored.stdout)
      .filter((change) => change.change !== 'metadata')
      .map((change) => change.path),
    ['/etc/dropbear', '/etc/dropbear/key', '/root/b.ovb'],
    'after the reset only the keep list (the image keeps /etc/dropbear) and the kept backup differ from the firmware',
  )
  t.match(restored.stdout, /restore of \/root\/b\.ovb .* scheduled for the next boot/)
  const after = run(t, args, `${STATUS} && ${DIFF} && getfattr -n user.note /etc/hello`)
  t.same(statusFrom(after.stdout).pending, [], 'the restore was applied')
  t.same(changesFrom(after.stdout), expected, 'ovroot diff after the restore equals ovroot diff before the backup')
  t.match(after.stdout, /user\.note="kept"/, 'xattrs came back')
})

await t.test(
  'power cuts during the restoring boot: the next boot shows the restored upper whole, never a mix',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const args = ['--flash', flash]
    const rearm =
      'ovroot backup -o /tmp/b.ovb && echo v2 > /etc/version && mkdir /root/other && ovroot restore /tmp/b.ovb --yes'
    const prepare = run(
      t,
      args,
      `mkdir -p /root/many && cd /root/many && seq 1 3000 | xargs touch && echo v1 > /etc/version && ${rearm}`,
    )
    t.equal(prepare.status, 0, 'a restore of 3000 files scheduled over a changed upper')
    for (const delay of [0, 0.5, 1.5]) {
      const cut = boot([
        ...args,
        '--cut-on',
        'ovroot: applying restore of /tmp/b.ovb*',
        '--cut-after',
        String(delay),
        '--run',
        'echo booted',
      ])
      if (delay === 0) {
        t.equal(cut.status, 137, 'the power was cut')
        t.notMatch(consoleLog(), /ovroot: applied/, 'inside the restore')
      }
      const after = run(
        t,
        args,
        `${STATUS} && cat /etc/version && ls /root/many | wc -l && ls -d /root/other 2>&1; ${rearm}`,
      )
      t.same(statusFrom(after.stdout).pending, [], `cut ${delay} s in: nothing pending after the next boot`)
      t.match(after.stdout, /^v1$/m, `cut ${delay} s in: the restored version`)
      t.match(after.stdout, /^3000$/m, `cut ${delay} s in: every restored file`)
      t.match(
        after.stdout,
        /\/root\/other: No such file or directory/,
        `cut ${delay} s in: nothing of the replaced upper`,
      )
    }
  },
)

await t.test('an OpenWrt sysupgrade archive restores its files onto the upper', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  const args = ['--flash', flash]
  run(
    t,
    args,
    'echo "option ipaddr \'10.1.1.1\'" >> /etc/config/network && tar -czf /root/sysupgrade.tgz -C / etc/config/network && ovroot reset --yes --keep /root/sysupgrade.tgz',
  )
  const scheduled = run(t, args, 'grep -c 10.1.1.1 /etc/config/network; ovroot restore /root/sysupgrade.tgz --yes')
  t.match(scheduled.stdout, /^0$/m, 'the reset brought the factory file back')
  t.match(scheduled.stdout, /sysupgrade archive/)
  const after = run(t, args, 'grep -c 10.1.1.1 /etc/config/network && ls /root/sysupgrade.tgz')
  t.match(after.stdout, /^1$/m, "the archive's file is back")
  t.match(after.stdout, /^\/root\/sysupgrade\.tgz$/m, 'what the upper had is still there')
})

await t.test(
  'a sysupgrade archive merged at boot on ext4 into an immutable directory and an append-only one: merged, the flags back',
  async (t) => {
    const args = ['--media', 'ext4', '--flash', `${workspace(t)}/ext4.flash`]
    const files = ['etc/locked/new', 'etc/frozen', 'root/log/messages', 'root/log/added']
    const scheduled = run(
      t,
      args,
      [
        'mkdir -p /etc/locked /root/log /tmp/archive/etc/locked /tmp/archive/root/log',
        'echo kept > /etc/locked/kept && echo old frozen > /etc/frozen && echo old log > /root/log/messages',
        'chattr +i /etc/locked /etc/frozen && chattr +a /root/log',
        'echo new > /tmp/archive/etc/locked/new && echo new frozen > /tmp/archive/etc/frozen',
        'echo new log > /tmp/archive/root/log/messages && echo added > /tmp/archive/root/log/added',
        `tar -czf /tmp/sysupgrade.tgz -C /tmp/archive ${files.join(' ')}`,
        'ovroot restore /tmp/sysupgrade.tgz --yes',
      ].join(' && '),
    )
    t.equal(scheduled.status, 0, `the merge is scheduled: ${scheduled.stdout.slice(-1000)}`)
    t.match(scheduled.stdout, /sysupgrade archive/)
    // Through the overlay, as the user set them (Linux 5.15 and later keep them in the upper's overlay.protattr xattr).
    const after = run(
      t,
      args,
      `${STATUS}; cat /etc/locked/new /etc/locked/kept /etc/frozen /root/log/messages /root/log/added; lsattr -d /etc/locked /etc/frozen /root/log /root/log/added`,
    )
    const status = statusFrom(after.stdout)
    t.equal(status.mode, 'flash', 'the merge applied at boot, the root on the flash')
    t.same(status.pending, [], 'nothing left pending')
    t.match(after.stdout, /^new\nkept\nnew frozen\nnew log\nadded$/m, "the archive's files merged, the rest kept")
    const flags = (path: string): string => new RegExp(`^(\\S+) /${path}$`, 'm').exec(after.stdout)?.[1] ?? ''
    t.match(flags('etc/locked'), /i/, 'the directory is immutable again')
    t.match(flags('etc/frozen'), /i/, "the replaced file keeps the user's flag")
    t.match(flags('root/log'), /a/, 'the log directory is append-only again')
    t.match(flags('root/log/added'), /^[^ia]+$/, 'a new file has no such flag')
  },
)

const SYNC = ['--append', 'ovroot.sync.enabled=yes ovroot.sync.quiet=2']
/** Wait for the daemon: it says watching once its first sync is done. */
const WATCHING = 'until ovroot status --json | grep -q \'"watcher":"watching"\'; do sleep 0.5; done'

await t.test('sync: what ovroot sync persisted survives a power cut, what it did not is gone', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  // A daemon that would not sync on its own during the test.
  const args = [
    '--flash',
    flash,
    '--append',
    'ovroot.sync.enabled=yes ovroot.sync.quiet=600 ovroot.sync.max_delay=3600',
  ]
  const cut = boot([
    ...args,
    '--cut-on',
    'both-written',
    '--cut-after',
    '0',
    '--run',
    `${WATCHING}; ${STATUS} && echo synced > /etc/a && ovroot sync && echo unsynced > /etc/b && sync && echo both-written && sleep 600`,
  ])
  t.equal(cut.status, 137, 'the power was cut')
  const status = statusFrom(cut.stdout) as ReturnType<typeof statusFrom> & { sync?: { mirror: string } }
  t.equal(status.mode, 'flash')
  t.same(status.sync, { mirror: '/overlay/upper' }, 'the root is a synced RAM upper')
  const after = run(t, args, 'cat /etc/a; cat /etc/b 2>&1')
  t.match(after.stdout, /^synced$/m, 'the synced file is there')
  t.match(
    after.stdout,
    /can't open '\/etc\/b': No such file or directory/,
    'the unsynced one is not: the previous state',
  )
})

await t.test(
  'sync --watch: a change reaches the flash without any command; an idle minute writes nothing to the flash',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const args = ['--flash', flash, ...SYNC]
    // vdb is the flash; field 7 of its stat is sectors written.
    const written = "awk '{print $7}' /sys/block/vdb/stat"
    // The cut is armed on a line of its own, printed after the line asserted below: that one is out whole.
    const watched = boot([
      ...args,
      '--cut-on',
      'cut-now',
      '--cut-after',
      '0',
      '--run',
      `${WATCHING}; echo watched > /etc/w; until [ -e /overlay/upper/etc/w ]; do sleep 0.5; done; echo persisted; echo cut-now; sleep 600`,
    ])
    t.equal(watched.status, 137)
    t.match(watched.stdout, /^persisted$/m, 'the daemon wrote the change to the flash copy by itself')
    // sync first: what boot wrote may sit in the page cache for 30 s before it reaches the device.
    const after = run(
      t,
      args,
      `cat /etc/w && ${WATCHING}; sync; sleep 3; ${written}; sleep 60; ${written}; ovroot status`,
    )
    t.match(after.stdout, /^watched$/m, 'and it survived the power cut')
    const counts = after.stdout.split('\n').filter((line) => /^\d+$/.test(line))
    t.equal(counts.length, 2, 'two readings of the write counter')
    t.equal(counts[0], counts[1], 'not one sector written in a minute of idling')
    t.match(after.stdout, /^unsynced: +nothing$/m, 'status: nothing waits in RAM')
  },
)

await t.test('sync: a reboot through the normal shutdown path persists the last changes', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  const args = ['--flash', flash, ...SYNC]
  // The command waits: init's shutdown must run, not the lab's own power-off.
  boot([...args, '--run', 'echo at-shutdown > /etc/s && reboot && sleep 600'])
  const after = run(t, args, 'cat /etc/s')
  t.match(after.stdout, /^at-shutdown$/m)
})

// JFFS2 and UBIFS report no holes (SEEK_DATA sees one extent), so the boot's RAM fill
// finds them itself: an all-zero page is left a hole. Without that, a 4 MiB sparse file
// would take 4 MiB of the device's RAM at every boot.
for (const media of ['nor', 'nand']) {
  await t.test(
    `${media} sync: sparse and all-zero files come back into RAM as holes, every byte the same`,
    async (t) => {
      const args = ['--media', media, '--flash', `${workspace(t)}/${media}.flash`, ...SYNC]
      const sums = 'md5sum /root/sparse /root/zeros /root/data'
      const made = run(
        t,
        args,
        `${WATCHING}; truncate -s 4M /root/sparse && printf tail >> /root/sparse && ` +
          'dd if=/dev/zero of=/root/zeros bs=64k count=16 2>/dev/null && ' +
          `dd if=/dev/urandom of=/root/data bs=4k count=3 2>/dev/null && ovroot sync && ${sums}`,
      )
      const before = made.stdout.match(/^[0-9a-f]{32} {2}\/root\/\w+$/gm)
      t.equal(before?.length, 3, 'three files written and synced')
      // The RAM upper is the overlay's upperdir: its blocks are what the fill allocated.
      const upper = "sed -n 's/^overlay \\/ overlay .*upperdir=\\([^,]*\\).*/\\1/p' /proc/mounts"
      const after = run(
        t,
        args,
        `${WATCHING}; ${sums}; u=$(${upper}); for f in sparse zeros data; do echo "blocks $f $(stat -c '%b %B' $u/root/$f)"; done`,
      )
      t.same(after.stdout.match(/^[0-9a-f]{32} {2}\/root\/\w+$/gm), before, 'every byte came back')
      const allocated = (name: string): number => {
        const [, blocks, unit] = new RegExp(`^blocks ${name} (\\d+) (\\d+)$`, 'm').exec(after.stdout) ?? []
        return Number(blocks) * Number(unit)
      }
      t.ok(allocated('sparse') <= 8192, `the 4 MiB sparse file holds ${allocated('sparse')} bytes of RAM`)
      t.ok(allocated('zeros') <= 4096, `the 1 MiB of zeros holds ${allocated('zeros')} bytes of RAM`)
      t.equal(allocated('data'), 3 * 4096, 'the file of data is allocated whole')
    },
  )
}

await t.test('sync: power cuts during a large sync leave the old state or the new one, never a mix', async (t) => {
  const flash = `${workspace(t)}/nor.flash`
  const args = ['--flash', flash, ...SYNC]
  const prepared = run(t, args, 'echo v1 > /etc/version && ovroot sync')
  t.equal(prepared.status, 0)
  const change =
    'mkdir -p /root/many && cd /root/many && seq 1 3000 | xargs touch && echo v2 > /etc/version && echo syncing-now && ovroot sync && sleep 600'
  for (const delay of [0.5, 3, 8]) {
    const cut = boot([...args, '--cut-on', 'syncing-now', '--cut-after', String(delay), '--run', change])
    t.equal(cut.status, 137, `cut ${delay} s into the sync`)
    if (delay === 0.5) t.notMatch(consoleLog(), /ovroot: synced/, 'inside the sync')
    const after = run(
      t,
      args,
      'cat /etc/version; ls /root/many 2>/dev/null | wc -l; rm -rf /root/many; echo v1 > /etc/version; ovroot sync',
    )
    const version = /^(v\d)$/m.exec(after.stdout)?.[1]
    const files = /^(\d+)$/m.exec(after.stdout)?.[1]
    t.ok(
      (version === 'v1' && files === '0') || (version === 'v2' && files === '3000'),
      `cut ${delay} s in: ${version} with ${files} files, a whole state`,
    )
  }
})

await t.test(
  'sync: a power cut while a committed sync moves 3,000 changed files into place: the next boot finishes it',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    // The daemon must not sync a half-written state on its own: only the explicit syncs here.
    const args = [
      '--flash',
      flash,
      '--append',
      'ovroot.sync.enabled=yes ovroot.sync.quiet=3600 ovroot.sync.max_delay=3600',
    ]
    const prepared = run(
      t,
      args,
      'mkdir /root/many && for i in $(seq 1 3000); do echo v1 > /root/many/$i; done && ovroot sync',
    )
    t.equal(prepared.status, 0)
    // A watcher in the device prints once the first staged file has left the staging: the marker was durable
    // (it is written and fsynced before anything moves) and the moves have begun. The cut follows at once.
    const watcher =
      '(while [ ! -e /overlay/.ovroot/pending ] || ls /overlay/.ovroot/staged-*/0 >/dev/null 2>&1; do sleep 0.02; done; echo moving-now) &'
    const change = `for i in $(seq 1 3000); do echo v2 > /root/many/$i; done && ${watcher} ovroot sync && echo sync-returned && sleep 600`
    const cut = boot([...args, '--cut-on', 'moving-now', '--cut-after', '0', '--run', change])
    t.equal(cut.status, 137, 'cut while the committed sync was being applied')
    t.notMatch(consoleLog(), /sync-returned/, 'the sync had not finished')
    const after = run(t, args, `${STATUS} && cat /root/many/* | sort | uniq -c`)
    t.match(
      consoleLog(),
      /ovroot: applied the end of an interrupted sync \(3000 entries\)/,
      'the next boot finished it',
    )
    t.match(after.stdout, /^\s*3000 v2$/m, 'every file of the committed sync')
    t.equal(statusFrom(after.stdout).mode, 'flash')
  },
)

/** The md5 sums `md5sum FILE...` printed, by file. */
function sums(output: string): Map<string, string> {
  return new Map([...output.matchAll(/^([0-9a-f]{32}) {2}(\S+)$/gm)].map((found) => [found[2] ?? '', found[1] ?? '']))
}

await t.test(
  'sync: a flash copy larger than the RAM upper boots degraded with every byte shown, and nothing partial is synced',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const first = run(
      t,
      ['--flash', flash],
      'head -c 2621440 /dev/urandom > /root/big && echo small > /etc/small && sync && md5sum /root/big /etc/small',
    )
    const before = sums(first.stdout)
    t.equal(before.size, 2, 'a 2.5 MiB file and a small one on the flash')
    const check = `${STATUS}; md5sum /root/big /etc/small; ls -l /root/big; echo "ram mounts $(grep -c ' /run/ovroot/ram ' /proc/mounts)"; ovroot sync; echo "sync exit $?"`

    const tight = run(t, ['--flash', flash, '--append', 'ovroot.sync.enabled=yes ovroot.flash.ram_size=1m'], check)
    const status = statusFrom(tight.stdout) as ReturnType<typeof statusFrom> & { sync?: unknown }
    t.equal(status.mode, 'degraded', 'not flash mode over a partial copy')
    t.match(
      status.reason,
      /the flash copy \/overlay\/upper could not be loaded into the RAM upper \(tmpfs, size 1m\): .*no space/i,
    )
    t.notOk(status.sync, 'the root is not a synced RAM upper')
    t.same(sums(tight.stdout), before, 'every byte of every file is shown')
    t.match(tight.stdout, /^ram mounts 0$/m, 'the half-filled tmpfs was unmounted')
    t.match(tight.stdout, /this device does not run on a synced RAM upper/, 'ovroot sync refuses')
    t.match(tight.stdout, /^sync exit 4$/m)
    t.match(consoleLog(), /DEGRADED BOOT: the flash copy/, 'the console says so loudly')

    const roomy = run(t, ['--flash', flash, '--append', 'ovroot.sync.enabled=yes ovroot.flash.ram_size=16m'], check)
    t.equal(statusFrom(roomy.stdout).mode, 'flash', 'with room, the next boot runs on the synced RAM upper')
    t.same(sums(roomy.stdout), before, 'and the flash still holds every byte')
  },
)

await t.test(
  "a userxattr overlay whose RAM fill fails boots degraded with the user's files shown (no metacopy=on, which the kernel refuses with userxattr)",
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const userxattr = 'ovroot.overlay.options=userxattr'
    const first = run(
      t,
      ['--flash', flash, '--append', userxattr],
      'head -c 2621440 /dev/urandom > /root/big && echo small > /etc/small && sync && md5sum /root/big /etc/small',
    )
    const before = sums(first.stdout)
    t.equal(before.size, 2, 'a 2.5 MiB file and a small one on the flash')
    const tight = run(
      t,
      ['--flash', flash, '--append', `${userxattr} ovroot.sync.enabled=yes ovroot.flash.ram_size=1m`],
      `${STATUS}; md5sum /root/big /etc/small`,
    )
    const status = statusFrom(tight.stdout)
    t.equal(status.mode, 'degraded')
    t.match(status.reason, /could not be loaded into the RAM upper/)
    t.notMatch(status.reason, /only the firmware is shown/, 'the flash copy is shown, not the firmware alone')
    t.same(sums(tight.stdout), before, 'every byte of every file is shown')
  },
)

await t.test(
  'sync: an xattr the RAM filesystem refuses (user.* on tmpfs before Linux 6.6) boots degraded, the file and its xattr shown',
  async (t) => {
    const flash = `${workspace(t)}/ext4.flash`
    const args = ['--media', 'ext4', '--flash', flash]
    const first = run(
      t,
      args,
      'echo tagged > /etc/tagged && setfattr -n user.origin -v lab /etc/tagged && sync && cd /etc && getfattr -n user.origin --only-values tagged; echo',
    )
    t.match(first.stdout, /^lab$/m, 'ext4 holds the user xattr')
    const synced = run(
      t,
      [...args, '--append', 'ovroot.sync.enabled=yes'],
      `${STATUS}; cd /etc && cat tagged && getfattr -n user.origin --only-values tagged; echo`,
    )
    const status = statusFrom(synced.stdout)
    t.equal(status.mode, 'degraded')
    t.match(status.reason, /could not be loaded into the RAM upper .*user\.origin/)
    t.match(synced.stdout, /^tagged\nlab$/m, 'the file and its xattr are shown')
  },
)

await t.test(
  'sync: a read error under one file of the flash copy boots degraded, every other file shown, and the next boot has every byte',
  async (t) => {
    const flash = `${workspace(t)}/ext4.flash`
    const args = ['--media', 'ext4', '--flash', flash]
    const first = run(
      t,
      args,
      'head -c 1048576 /dev/urandom > /root/bad && echo good > /etc/good && sync && md5sum /root/bad /etc/good',
    )
    const before = sums(first.stdout)
    t.equal(before.size, 2)
    // The filesystem block holding the middle of /root/bad, as a 512-byte sector of the image.
    const blockSize = Number(
      /^Block size:\s+(\d+)$/m.exec(
        execFileSync('dumpe2fs', ['-h', flash], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }),
      )?.[1],
    )
    const block = Number(
      execFileSync('debugfs', ['-R', 'bmap /upper/root/bad 512', flash], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim(),
    )
    t.ok(blockSize > 0 && block > 0, `the file's block ${block} (${blockSize} bytes)`)
    const check = `${STATUS}; cat /etc/good; echo "ram mounts $(grep -c ' /run/ovroot/ram ' /proc/mounts)"; ovroot sync; echo "sync exit $?"`
    const failing = run(
      t,
      [...args, '--flash-error-sectors', String((block * blockSize) / 512), '--append', 'ovroot.sync.enabled=yes'],
      check,
    )
    const status = statusFrom(failing.stdout) as ReturnType<typeof statusFrom> & { sync?: unknown }
    t.equal(status.mode, 'degraded', "degraded, not flash mode over a partial copy, not the shim's failsafe")
    t.match(
      status.reason,
      /could not be loaded into the RAM upper .*read \/overlay\/upper\/root\/bad: input\/output error.*the flash failed a read/,
    )
    t.notOk(status.sync, 'the root is not a synced RAM upper')
    t.match(failing.stdout, /^good\nram mounts 0$/m, 'the other file is shown; the half-filled tmpfs was unmounted')
    t.match(failing.stdout, /^sync exit 4$/m, 'nothing is synced')
    const after = run(t, [...args, '--append', 'ovroot.sync.enabled=yes'], `${STATUS}; md5sum /root/bad /etc/good`)
    t.equal(
      statusFrom(after.stdout).mode,
      'flash',
      'with a flash that reads, the next boot runs on the synced RAM upper',
    )
    t.same(sums(after.stdout), before, 'every byte of both files')
  },
)

await t.test(
  "an overlay the kernel refuses (an option it rejects) boots degraded with the user's files shown, and no RAM copy left mounted",
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const first = run(t, ['--flash', flash], 'echo mine > /etc/mine && sync')
    t.equal(first.status, 0)
    const refused = run(
      t,
      ['--flash', flash, '--append', 'ovroot.sync.enabled=yes ovroot.overlay.options=verity=on'],
      `${STATUS}; cat /etc/mine; grep -c ' /run/ovroot/ram ' /proc/mounts`,
    )
    const status = statusFrom(refused.stdout)
    t.equal(status.mode, 'degraded', "degraded, not the shim's failsafe")
    t.match(
      status.reason,
      /the overlay did not mount \(.*verity=on.*\): .*; the flash upper \/overlay\/upper is shown read-only under a RAM upper/,
    )
    t.match(refused.stdout, /^mine\n0$/m, "the user's file is shown; the RAM copy's tmpfs was unmounted")
    const after = run(t, ['--flash', flash], `${STATUS}; cat /etc/mine`)
    t.equal(statusFrom(after.stdout).mode, 'flash', 'without the option the next boot is on flash')
    t.match(after.stdout, /^mine$/m)
  },
)

await t.test(
  'sync: filling the RAM upper with a large file under a short [boot] timeout: progress keeps the shim from killing the boot',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    fs.writeFileSync(flash, Buffer.alloc(48 << 20, 0xff))
    const first = run(
      t,
      ['--flash', flash],
      'head -c 33554432 /dev/urandom > /root/large && sync && md5sum /root/large',
    )
    const before = sums(first.stdout)
    t.equal(before.size, 1)
    const filled = run(
      t,
      ['--flash', flash, '--append', 'ovroot.sync.enabled=yes ovroot.flash.ram_size=64m ovroot.boot.timeout=4'],
      `${STATUS}; md5sum /root/large`,
    )
    const status = statusFrom(filled.stdout) as ReturnType<typeof statusFrom> & { sync?: unknown }
    t.equal(status.mode, 'flash', 'the shim let the working agent finish')
    t.ok(status.sync, 'on the synced RAM upper')
    t.same(sums(filled.stdout), before, 'the 32 MiB file whole')
  },
)

await t.test(
  'a JFFS2 mount reading a slow NOR for several times the [boot] timeout, inside one mount(2), is not killed',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    fs.writeFileSync(flash, Buffer.alloc(16 << 20, 0xff))
    const first = run(t, ['--flash', flash], 'head -c 6291456 /dev/urandom > /root/large && sync && md5sum /root/large')
    const before = sums(first.stdout)
    t.equal(before.size, 1)
    // At 0.2 MB/s the mount's scan of the NOR's 6 MiB of data outlasts the timeout several times whatever the
    // emulation's speed (at 0.5 MB/s a quiet host booted in 10.5 s, under 3 timeouts), inside mount(2): the agent
    // waits, using almost no CPU.
    const timeout = 4
    const slow = run(
      t,
      ['--flash', flash, '--slow-flash', '0.2', '--append', `ovroot.boot.timeout=${timeout}`],
      `${STATUS}; md5sum /root/large`,
    )
    const status = statusFrom(slow.stdout) as ReturnType<typeof statusFrom> & { bootSeconds: number }
    t.equal(status.mode, 'flash', 'the shim let the mounting agent finish')
    t.ok(status.bootSeconds > 3 * timeout, `the boot took ${status.bootSeconds} s, several times the timeout`)
    t.same(sums(slow.stdout), before, 'the 6 MiB file whole')
  },
)

await t.test(
  'first boot of an 8 GiB ext4 flash on a slow card under a 4 s [boot] timeout: mkfs -q discarding it in silence is not killed',
  async (t) => {
    const flash = `${workspace(t)}/ext4.flash`
    // The format marker, so that the first boot formats without reading 8 GiB first; the rest is a hole.
    fs.writeFileSync(flash, Buffer.from([0xde, 0xad, 0xc0, 0xde]))
    fs.truncateSync(flash, 8 * 2 ** 30)
    // At 400 MB/s mkfs's discard of the whole card takes about 21 s, in 64 MiB requests, and prints nothing.
    const args = ['--media', 'ext4', '--flash', flash, '--slow-flash', '400']
    const timeout = 4
    // Field 14 of the block device's stat: sectors discarded.
    const first = run(
      t,
      [...args, '--append', `ovroot.boot.timeout=${timeout}`],
      `${STATUS}; echo "discarded $(awk '{print $14}' /sys/block/vdb/stat)"; head -c 300000 /dev/urandom > /root/data && echo mine > /etc/mine && sync && md5sum /root/data /etc/mine`,
    )
    const status = statusFrom(first.stdout) as ReturnType<typeof statusFrom> & { bootSeconds: number }
    t.equal(status.mode, 'flash', 'the shim did not kill the formatting agent')
    t.equal(status.formatted, true, 'the flash was formatted')
    t.equal(status.medium?.filesystem, 'ext4')
    const discarded = Number(/^discarded (\d+)$/m.exec(first.stdout)?.[1])
    t.ok(discarded >= (8 * 2 ** 30) / 512, `mkfs discarded the whole device (${discarded} sectors)`)
    t.ok(status.bootSeconds > 3 * timeout, `the boot took ${status.bootSeconds} s, several times the timeout`)
    const before = sums(first.stdout)
    t.equal(before.size, 2)
    const after = run(t, args, `${STATUS}; md5sum /root/data /etc/mine`)
    const afterStatus = statusFrom(after.stdout)
    t.equal(afterStatus.mode, 'flash', 'the next boot is on the flash')
    t.notOk(afterStatus.formatted, 'and does not format it again')
    t.same(sums(after.stdout), before, "the user's files, every byte")
  },
)

await t.test(
  "index=on refusing an upper whose origin changed (ESTALE) boots degraded with the user's files shown; the boot after, without index=on, is on flash",
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const index = ['--flash', flash, '--append', 'ovroot.overlay.options=index=on']
    // index=on records the lower root's file handle on the upper root (trusted.overlay.origin). A firmware
    // whose root is another inode no longer matches it; so does the handle of the lower's /etc (copied up, so
    // the upper's etc carries it), set on the upper root here: the kernel reads the root's origin only when mounting.
    const origin = (dir: string): string =>
      `getfattr -e hex -n trusted.overlay.origin ${dir} | sed -n 's/^trusted.overlay.origin=//p'`
    const first = run(
      t,
      index,
      `${STATUS}; head -c 300000 /dev/urandom > /root/data && echo mine > /etc/mine && sync && md5sum /root/data /etc/mine && echo "root origin $(${origin('/overlay/upper')})" && setfattr -n trusted.overlay.origin -v "$(${origin('/overlay/upper/etc')})" /overlay/upper && sync`,
    )
    t.equal(first.status, 0)
    t.equal(statusFrom(first.stdout).mode, 'flash', 'index=on mounts on this flash')
    t.match(first.stdout, /^root origin 0x[0-9a-f]+$/m, "the overlay recorded the lower root's handle")
    const before = sums(first.stdout)
    t.equal(before.size, 2)

    const refused = run(t, index, `${STATUS}; md5sum /root/data /etc/mine; echo more > /etc/more && cat /etc/more`)
    const status = statusFrom(refused.stdout)
    t.equal(status.mode, 'degraded', "degraded, not the shim's failsafe")
    t.match(
      status.reason,
      /the overlay did not mount \(.*index=on.*\): .*ESTALE.*; the flash upper \/overlay\/upper is shown read-only under a RAM upper/,
    )
    t.same(sums(refused.stdout), before, "the user's files, every byte")
    t.match(refused.stdout, /^more$/m, 'the root is writable (a RAM upper)')
    t.match(consoleLog(), /DEGRADED BOOT: the overlay did not mount/)

    const after = run(t, ['--flash', flash], `${STATUS}; md5sum /root/data /etc/mine; ls /etc/more`)
    t.equal(statusFrom(after.stdout).mode, 'flash', 'without index=on the next boot is on flash')
    t.same(sums(after.stdout), before, "the user's files, every byte")
    t.match(after.stdout, /No such file/, 'what the degraded boot wrote went with its RAM upper')
  },
)

await t.test(
  'sync: a name that is not UTF-8 travels whole: loaded into the RAM upper at boot, synced back, there at the boot after',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    // caf\351 is "café" in Latin-1: a name is bytes, and these are not UTF-8.
    const name = `"$(printf '/root/caf\\351')"`
    const show = `md5sum /etc/mine ${name} | sed 's/caf.*/cafe/'; [ -f ${name} ] && echo "raw name present"`
    const first = run(
      t,
      ['--flash', flash],
      `head -c 300000 /dev/urandom > ${name} && echo mine > /etc/mine && sync && ${show}`,
    )
    const before = sums(first.stdout)
    t.equal(before.size, 2, 'the Latin-1 name and a plain file on the flash')

    const sync = ['--flash', flash, '--append', 'ovroot.sync.enabled=yes']
    const synced = run(t, sync, `${STATUS}; ${show}; echo again >> ${name} && ovroot sync && ${show}`)
    const status = statusFrom(synced.stdout) as ReturnType<typeof statusFrom> & { sync?: unknown }
    t.equal(status.mode, 'flash', 'the whole flash copy was loaded into RAM')
    t.ok(status.sync, 'on the synced RAM upper')
    t.match(synced.stdout, /^raw name present$/m, 'under its own name')
    const lines = [...synced.stdout.matchAll(/^([0-9a-f]{32}) {2}\/root\/cafe$/gm)].map((found) => found[1])
    t.equal(lines[0], before.get('/root/cafe'), 'every byte loaded')
    t.not(lines[1], lines[0], 'then changed in RAM and synced')

    const after = run(t, sync, `${STATUS}; ${show}`)
    t.equal(statusFrom(after.stdout).mode, 'flash')
    t.equal(sums(after.stdout).get('/root/cafe'), lines[1], 'the synced bytes are what the next boot loads')
    t.match(after.stdout, /^raw name present$/m)
  },
)

await t.test(
  'ovroot boot run again on the running device (by hand, a service restart) is refused: no pivot, the reset stays scheduled',
  async (t) => {
    const flash = `${workspace(t)}/nor.flash`
    const again = run(
      t,
      ['--flash', flash],
      `echo mine > /etc/mine && ovroot reset --yes >/dev/null && m=$(md5sum < /proc/mounts); ovroot boot; echo "boot status $?"; [ "$(md5sum < /proc/mounts)" = "$m" ] && echo "mounts unchanged"; cat /etc/mine; ${STATUS}`,
    )
    t.match(
      again.stdout,
      /^boot status 4\nmounts unchanged\nmine$/m,
      'refused with the environment status; no mount changed',
    )
    t.match(consoleLog(), /ovroot: ovroot boot runs once per power-on/, 'in one line saying why')
    const status = statusFrom(again.stdout)
    t.equal(status.mode, 'flash', 'the boot record is the real boot’s')
    t.match(status.pending.join(' '), /factory reset at next boot/, 'the reset is still for the next boot')
  },
)
