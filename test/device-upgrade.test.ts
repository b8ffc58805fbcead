/**
 * Firmware upgrades over a kept flash (issue 18) on the lab's device: the
 * firmware the lab built (A) and a later one made from it (B,
 * helpers/firmware.ts), booted in turn over the same NOR flash with
 * `qemu/vm boot --firmware`. One boot of A makes a change of every row of the
 * issue's table and asks `ovroot upgrade-check` about B; one boot of B checks
 * each row byte for byte and the reports; power cuts land inside the
 * reconcile; the device goes back from B to A. Every boot has `index=on`
 * configured: an upper whose origin records no longer match the firmware
 * would not mount (ESTALE), so each boot on the flash proves they were cleared.
 */
import t, { type Test } from 'tap'
import { createHash } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import { firmwareWith, labFirmware, type FirmwareChange } from './helpers/firmware.js'
import { boot, changesFrom, consoleLog, run, statusFrom, workspace, type DeviceStatus } from './helpers/lab.js'
import { DIFF, STATUS } from './helpers/scenarios.js'

const ARCH = process.arch === 'arm64' ? 'arm64' : 'x86_64'
const INDEX = ['--append', 'ovroot.overlay.options=index=on']

/** A file of the lab's image as firmware A ships it (qemu/image/rootfs). */
const inA = (device: string): string =>
  fs.readFileSync(new URL(`../qemu/image/rootfs${device}`, import.meta.url), 'utf8')

const USER_LINE = "option ipaddr '10.0.0.1'"
const SYSTEM_B = `${inA('/etc/config/system')}\toption zonename 'Etc/UTC'\n`

/** What B ships that A did not: each row of the table has a file here. */
const B_FILES: Record<string, { content: string; mode?: number }> = {
  '/usr/lib/libfoo.so.1': { content: 'libfoo 2.0: a stand-in for a shared library the firmware updates\n' },
  '/etc/config/dhcp': { content: `${inA('/etc/config/dhcp')}\toption dhcpv6 'server'\n` },
  '/etc/config/firewall': { content: `${inA('/etc/config/firewall')}\toption masq '1'\n` },
  '/usr/bin/tool': { content: '#!/bin/sh\necho "tool 2.0"\n', mode: 0o755 },
  '/etc/config/network': {
    content: `${inA('/etc/config/network')}\nconfig interface 'wan'\n\toption device 'eth1'\n\toption proto 'dhcp'\n`,
  },
  '/etc/uci-defaults/10-lab-hostname': { content: "uci set system.@system[0].hostname='ovroot-b'\n" },
  '/etc/uci-defaults/30-lab-ntp': { content: "uci set system.ntp.enabled='1'\n" },
  '/etc/banner': { content: '  ovroot demo device, firmware B\n' },
  '/etc/hotplug.d/iface/10-lab-led': { content: '#!/bin/sh\necho "$ACTION" > /tmp/led\n', mode: 0o755 },
  '/etc/config/system': { content: SYSTEM_B },
}
const B_CHANGES: FirmwareChange[] = [
  ...Object.entries(B_FILES).map(([path, file]) => ({ write: path, ...file })),
  { remove: '/usr/lib/libbar.so.1' },
]

/** The user's changes on A, one or more per row of the table. */
const USER_CHANGES = [
  // nothing done to /usr/lib/libfoo.so.1
  ': >> /etc/config/dhcp', // opened for writing, not changed: a copy-up equal to A's
  'touch /etc/config/firewall',
  'chmod 700 /usr/bin/tool',
  'chmod 600 /usr/lib/libbar.so.1',
  `echo "${USER_LINE}" >> /etc/config/network`,
  'mv /etc/uci-defaults /etc/uci-defaults.mine', // redirect_dir off: mv copies, A's path gets a whiteout
  'rm /etc/banner',
  'rm -r /etc/hotplug.d',
  `echo ${Buffer.from(SYSTEM_B).toString('base64')} | base64 -d > /etc/config/system`, // what B ships
  'chmod 600 /etc/config/wireless', // B leaves it alone
  'echo hello > /etc/hello', // the user's own
  'sync',
].join(' && ')

/** The paths each boot reports on, as `row MODE MD5|dir:NAMES|absent PATH`. */
const ROW_PATHS = [
  '/usr/lib/libfoo.so.1',
  '/etc/config/dhcp',
  '/etc/config/firewall',
  '/usr/bin/tool',
  '/usr/lib/libbar.so.1',
  '/etc/config/network',
  '/etc/uci-defaults',
  '/etc/uci-defaults.mine',
  '/etc/uci-defaults.mine/10-lab-hostname',
  '/etc/uci-defaults.mine/20-lab-timezone',
  '/etc/banner',
  '/etc/hotplug.d',
  '/etc/config/system',
  '/etc/config/wireless',
  '/etc/hello',
]
const SHOW_ROWS = `for f in ${ROW_PATHS.join(' ')}; do if [ -d "$f" ]; then echo "row $(stat -c %a "$f") dir:$(ls -A "$f" | tr '\\n' ,) $f"; elif [ -e "$f" ]; then echo "row $(stat -c %a "$f") $(md5sum < "$f" | cut -d' ' -f1) $f"; else echo "row absent $f"; fi; done`

const md5 = (content: string): string => createHash('md5').update(content).digest('hex')
const file = (mode: string, content: string, path: string): string => `row ${mode} ${md5(content)} ${path}`
const absent = (path: string): string => `row absent ${path}`
const b = (path: string): string => B_FILES[path]?.content ?? ''
const networkOfUser = `${inA('/etc/config/network')}${USER_LINE}\n`
/** The user's copy of A's directory, under its new name, on any firmware. */
const RENAMED = [
  'row 755 dir:10-lab-hostname,20-lab-timezone, /etc/uci-defaults.mine',
  file('644', inA('/etc/uci-defaults/10-lab-hostname'), '/etc/uci-defaults.mine/10-lab-hostname'),
  file('644', inA('/etc/uci-defaults/20-lab-timezone'), '/etc/uci-defaults.mine/20-lab-timezone'),
]

/** Each row as the device must show it on B. */
const ON_B = [
  file('644', b('/usr/lib/libfoo.so.1'), '/usr/lib/libfoo.so.1'), // untouched: B's
  file('644', b('/etc/config/dhcp'), '/etc/config/dhcp'), // stale copy-ups: dropped, B's
  file('644', b('/etc/config/firewall'), '/etc/config/firewall'),
  file('700', b('/usr/bin/tool'), '/usr/bin/tool'), // B's data, the user's mode on top
  absent('/usr/lib/libbar.so.1'), // gone with B
  file('644', networkOfUser, '/etc/config/network'), // conflict: the user's kept by default
  absent('/etc/uci-defaults'), // hidden: kept, reported
  ...RENAMED,
  absent('/etc/banner'), // hidden
  absent('/etc/hotplug.d'), // hidden
  file('644', SYSTEM_B, '/etc/config/system'), // converged: the copy dropped
  file('600', inA('/etc/config/wireless'), '/etc/config/wireless'), // the user's change, B did not touch it
  file('644', 'hello\n', '/etc/hello'), // the user's own
]

/** Each row back on A after B: B's records are now the old side. */
const BACK_ON_A = [
  file('644', inA('/usr/lib/libfoo.so.1'), '/usr/lib/libfoo.so.1'),
  file('644', inA('/etc/config/dhcp'), '/etc/config/dhcp'),
  file('644', inA('/etc/config/firewall'), '/etc/config/firewall'),
  file('700', inA('/usr/bin/tool'), '/usr/bin/tool'),
  file('644', inA('/usr/lib/libbar.so.1'), '/usr/lib/libbar.so.1'),
  file('644', networkOfUser, '/etc/config/network'),
  absent('/etc/uci-defaults'),
  ...RENAMED,
  absent('/etc/banner'),
  absent('/etc/hotplug.d'),
  file('644', inA('/etc/config/system'), '/etc/config/system'),
  file('600', inA('/etc/config/wireless'), '/etc/config/wireless'),
  file('644', 'hello\n', '/etc/hello'),
]

/** What `ovroot diff` must list on B: the user's changes only, none of the dropped copies. */
const DIFF_ON_B = [
  { path: '/etc/banner', change: 'deleted' },
  { path: '/etc/config/network', change: 'modified' },
  { path: '/etc/config/wireless', change: 'metadata' },
  { path: '/etc/hello', change: 'added' },
  { path: '/etc/hotplug.d', change: 'deleted' },
  { path: '/etc/uci-defaults', change: 'deleted' },
  { path: '/etc/uci-defaults.mine', change: 'added' },
  { path: '/etc/uci-defaults.mine/10-lab-hostname', change: 'added' },
  { path: '/etc/uci-defaults.mine/20-lab-timezone', change: 'added' },
  { path: '/usr/bin/tool', change: 'metadata' },
]

interface UpgradeReport {
  from: string
  to: string
  counts: Record<string, number>
  conflicts: string[]
}

type StatusWithUpgrade = DeviceStatus & { upgrade?: UpgradeReport }

const rows = (output: string): string[] => output.split('\n').filter((line) => line.startsWith('row '))

/** A firmware's identity as the device records it: its manifest's header digest. */
function identityOf(image: string): string {
  const header = execFileSync('unsquashfs', ['-cat', image, 'usr/lib/ovroot/firmware.manifest'], {
    maxBuffer: 1 << 26,
  })
    .toString('latin1')
    .split('\n', 1)[0]
  const digest = /^ovroot-manifest 1 ([0-9a-f]{64})$/.exec(header ?? '')?.[1]
  if (!digest) throw new Error(`${image} ships no firmware manifest`)
  return `manifest:${digest}`
}

/** The lines the reconcile prints on the console: when it starts, when it has committed, when it is done. */
const RECONCILING = 'ovroot: firmware changed'
const APPLYING = 'ovroot: applying upgrade'
const RECONCILED = 'ovroot: applied upgrade'

function upgradeOf(t: Test, output: string): UpgradeReport | undefined {
  const status = statusFrom(output) as StatusWithUpgrade
  t.equal(status.mode, 'flash', 'on the flash, index=on configured')
  return status.upgrade
}

await t.test(
  'firmware A to B over a kept flash: every row of the table, the reports, upgrade-check, power cuts inside the reconcile, back to A',
  async (t) => {
    const a = labFirmware(ARCH)
    const bImage = firmwareWith(ARCH, B_CHANGES)
    const dir = workspace(t)
    const flash = `${dir}/nor.flash`
    const onA = ['--flash', flash, ...INDEX]
    const onB = ['--firmware', bImage, ...onA]

    // A: the user's changes, then what upgrade-check says B's boot would do (B attached as /dev/vdc).
    const first = run(
      t,
      [...onA, '--attach', bImage],
      `${USER_CHANGES} && ${STATUS} && ovroot upgrade-check /dev/vdc --json; echo "check exit $?"; sync`,
    )
    t.equal(first.status, 0, "A: the user's changes are made")
    t.equal(statusFrom(first.stdout).mode, 'flash')
    const check = JSON.parse(
      first.stdout.split('\n').find((line) => line.startsWith('{"from"')) ?? 'null',
    ) as UpgradeReport | null
    t.match(first.stdout, /^check exit 5$/m, 'upgrade-check exits with the status that means conflicts')
    t.ok(check, 'upgrade-check --json printed its report')
    const beforeB = `${dir}/before-b.flash`
    fs.copyFileSync(flash, beforeB)

    // B: each row byte for byte, the status report, diff, diff --conflicts.
    const onBoot = run(
      t,
      onB,
      `${STATUS} && ${SHOW_ROWS} && ${DIFF} && ovroot status && ovroot diff --conflicts --patch`,
    )
    t.equal(onBoot.status, 0)
    t.same(rows(onBoot.stdout), ON_B, "B: each row of the table, byte for byte (content's md5 and mode)")
    const upgrade = upgradeOf(t, onBoot.stdout)
    t.equal(upgrade?.from, identityOf(a), 'status: from A')
    t.equal(upgrade?.to, identityOf(bImage), 'status: to B')
    t.same(upgrade?.conflicts, ['/etc/config/network'], 'status names the conflict')
    t.same(upgrade, check, 'upgrade-check on A predicted exactly what the boot on B did')
    t.same(changesFrom(onBoot.stdout), DIFF_ON_B, 'ovroot diff on B: only what the user changed')
    t.match(onBoot.stdout, /^upgrade: .*→/m, 'ovroot status says the firmware changed at this boot')
    t.match(onBoot.stdout, /\/etc\/config\/network/, 'diff --conflicts names the conflict')
    t.match(onBoot.stdout, /^-.*option proto 'dhcp'|^\+.*option proto 'dhcp'/m, "--patch shows the firmware's side")
    t.match(onBoot.stdout, new RegExp(`^[-+].*${USER_LINE}`, 'm'), "and the user's")
    const reconciledDiff = changesFrom(onBoot.stdout)

    // Power cuts inside the reconcile: before its pending change is committed, and while it is applied.
    for (const line of [RECONCILING, APPLYING]) {
      const cutFlash = `${dir}/cut.flash`
      fs.copyFileSync(beforeB, cutFlash)
      const cutArgs = ['--firmware', bImage, '--flash', cutFlash, ...INDEX]
      const cut = boot([...cutArgs, '--cut-on', line, '--cut-after', '0', '--run', 'echo booted'])
      t.equal(cut.status, 137, `cut on "${line}": the power was cut`)
      t.match(consoleLog(), line, `cut on "${line}": the reconcile had reached it`)
      t.notMatch(consoleLog(), RECONCILED, `cut on "${line}": and had not finished`)
      const after = run(t, cutArgs, `${STATUS} && ${SHOW_ROWS} && ${DIFF}`)
      t.equal(statusFrom(after.stdout).mode, 'flash')
      t.same(rows(after.stdout), ON_B, `cut on "${line}": the next boot shows every row reconciled`)
      t.same(changesFrom(after.stdout), reconciledDiff, `cut on "${line}": the same diff`)
    }

    // Back to A over the flash B reconciled.
    const back = run(t, onA, `${STATUS} && ${SHOW_ROWS} && ${DIFF}`)
    t.same(rows(back.stdout), BACK_ON_A, 'back on A: each row, byte for byte')
    const backUpgrade = upgradeOf(t, back.stdout)
    t.equal(backUpgrade?.from, identityOf(bImage), 'status: from B')
    t.equal(backUpgrade?.to, identityOf(a), 'status: to A')
    t.same(backUpgrade?.conflicts, ['/etc/config/network'], "the user's network against A's is a conflict again")

    // And a boot with no firmware change reconciles nothing.
    const again = run(t, onA, `${STATUS} && ${SHOW_ROWS}`)
    t.same(rows(again.stdout), BACK_ON_A, 'the next boot on A: the same rows')
    t.notOk((statusFrom(again.stdout) as StatusWithUpgrade).upgrade, 'no upgrade at a boot on the same firmware')
  },
)
