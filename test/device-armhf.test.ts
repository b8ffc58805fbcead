/**
 * The 32-bit device: the demo image built for armhf (ARMv7, hard float) from
 * the registries (Debian's armmp kernel, busybox and C library, Node's last
 * official armv7l build on npm, koffi's arm build) and booted under
 * qemu-system-arm -M virt (TCG). Where 64-bit devices pass 64-bit values in
 * one register, here statx's 64-bit sizes and signed times, syscall(2)'s
 * numbers and koffi's calls all cross a 32-bit ABI: the scenarios are those
 * that read them (diff, boot, reset, the degraded boot).
 *
 * npm test runs the ext4 scenario, the one that needs all 64 bits of statx's
 * sizes and signed times; OVROOT_LAB_ARMHF=1 adds the others (README "The device lab").
 */
import t from 'tap'
import { corruptFlash, DIFF, lifecycle, STATUS } from './helpers/scenarios.js'
import { changesFrom, run, statusFrom, workspace } from './helpers/lab.js'

const ARMHF = ['--arch', 'armhf']

await t.test(
  'armhf, ext4 flash: a file from 1960 and a 5 GiB sparse file persist; ovroot diff reports them exactly',
  async (t) => {
    // JFFS2 keeps 32-bit unsigned times and sizes: neither file fits it, so this is a block flash.
    const args = [...ARMHF, '--media', 'ext4', '--flash', `${workspace(t)}/ext4.flash`]
    const first = run(
      t,
      args,
      "touch -d '1960-06-01 12:00:00' /etc/old && truncate -s 5G /root/big && echo tail >> /root/big && sync",
    )
    t.equal(first.status, 0, 'the device made both files')
    const second = run(t, args, `${STATUS} && stat -c 'mtime %Y size %s %n' /etc/old /root/big && ${DIFF}`)
    t.equal(second.status, 0)
    t.equal(statusFrom(second.stdout).mode, 'flash')
    t.match(second.stdout, /^mtime -302443200 size 0 \/etc\/old$/m, 'the time before 1970 persisted')
    t.match(second.stdout, /^mtime \d+ size 5368709125 \/root\/big$/m, 'and the size above 4 GiB')
    t.same(
      changesFrom(second.stdout),
      [
        { path: '/etc/old', change: 'added' },
        { path: '/root/big', change: 'added' },
      ],
      'ovroot diff lists exactly the two files',
    )
    t.match(
      second.stdout,
      /^\{"path":"\/root\/big","change":"added","type":"file","mode":"0644","uid":0,"gid":0,"size":5368709125\}$/m,
      'with the size statx gave, all 64 bits of it',
    )
  },
)

// The NOR lifecycle and the corrupt flash on armhf (about 13 more minutes under TCG) run with OVROOT_LAB_ARMHF=1.
if (process.env.OVROOT_LAB_ARMHF === '1') {
  await t.test(
    'armhf, NOR flash (JFFS2 on MTD): first boot, persistence with an exact ovroot diff, reset with a keep list',
    async (t) => lifecycle(t, 'nor', ARMHF),
  )

  await t.test('armhf, corrupt flash (random bytes): boots on RAM, says why, leaves the flash untouched', async (t) =>
    corruptFlash(t, ARMHF),
  )
}
