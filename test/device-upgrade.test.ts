/**
 * Firmware upgrades over a kept flash (issue 18) on the lab's device: the
 * firmware the lab built (A) and a later one made from it (B,
 * helpers/firmware.ts), booted in turn over the same flash with `qemu/vm
 * boot --firmware`. One boot of A makes a change of every row of the issue's
 * table and asks `ovroot upgrade-check` about B; one boot of B checks each row
 * byte for byte and the reports; power cuts land inside the reconcile; the
 * device goes back from B to A. Every boot has `index=on` configured: the
 * overlay then records the firmware's root on the upper, and an upper whose
 * origin records no longer match the firmware would not mount (ESTALE), so
 * each boot on the flash after a firmware change proves they were cleared.
 * The flash is ext4: deleting a firmware directory needs RENAME_EXCHANGE of
 * the upper filesystem, which JFFS2 refuses (EINVAL) without OpenWrt's patches.
 */
import t, { type Test } from 'tap'
import { createHash } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import { firmwareWith, labFirmware, type FirmwareChange } from './helpers/firmware.js'
import { boot, changesFrom, consoleLog, run, statusFrom, workspace, type DeviceStatus } from './helpers/lab.js'
import { DIFF, STATUS } from './helpers/scenarios.js'

const ARCH = process.arch === 'arm64' ? 'arm64' : 'x86_64'
const INDEX = ['--media', 'ext4', '--append', 'ovroot.overlay.options=index=on']

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
  '/etc/openwrt_release': { content: inA('/etc/openwrt_release').replace("REVISION='A'", "REVISION='B'") },
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

/** What the boot's report (.ovroot/upgrade/report.json) and `upgrade-check --json` say. */
interface UpgradeReport {
  from: string
  to: string
  counts: Record<string, number>
  entries: { path: string; class: string }[]
}

/** What `ovroot upgrade-check --json` says: the report the boot will write, and each entry's class. */
type CheckReport = UpgradeReport & { same: boolean; classes: Record<string, string[]> }

/** The class of each entry of the upper the user's changes on A leave, against B. */
const CLASSES = {
  own: [
    '/etc/hello',
    '/etc/uci-defaults.mine',
    '/etc/uci-defaults.mine/10-lab-hostname',
    '/etc/uci-defaults.mine/20-lab-timezone',
  ],
  kept: ['/etc/config/wireless'],
  converged: ['/etc/config/system'],
  stale: ['/etc/config/dhcp', '/etc/config/firewall', '/usr/bin/tool'],
  gone: ['/usr/lib/libbar.so.1'],
  conflict: ['/etc/config/network'],
  hidden: ['/etc/banner', '/etc/hotplug.d', '/etc/uci-defaults'],
  unknown: [],
}

/** What `ovroot status --json` says of an upgrade at this boot. */
interface UpgradeSummary {
  from: string
  to: string
  counts: Record<string, number>
  conflicts: string[]
  hidden: string[]
  unknown: string[]
}

/** The entries the report on B names: the conflict and the hidden changes, in path order. */
const NAMED_ON_B = [
  { path: '/etc/banner', class: 'hidden' },
  { path: '/etc/config/network', class: 'conflict' },
  { path: '/etc/hotplug.d', class: 'hidden' },
  { path: '/etc/uci-defaults', class: 'hidden' },
]

type StatusWithUpgrade = DeviceStatus & { upgrade?: UpgradeSummary }

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

/** The lines the reconcile prints on the console (src/upgrade/boot.ts): when it starts, when it is done. */
const RECONCILING = /^ovroot: firmware changed \(.*\): reconciling the upper$/m
const RECONCILED = /^ovroot: reconciled: /m
/** What the boot after a cut prints when it finds the reconcile committed but not applied (boot/agent.ts). */
const FINISHING = /^ovroot: applying /m

/** The JSON report on the line that starts with PREFIX and a brace. */
const reportFrom = <Report = UpgradeReport>(output: string, prefix: string): Report | undefined => {
  const line = output.split('\n').find((candidate) => candidate.startsWith(`${prefix} {`))
  try {
    return line === undefined ? undefined : (JSON.parse(line.slice(prefix.length + 1)) as Report)
  } catch {
    return undefined // not JSON: the assertions on the report say what is missing
  }
}

function upgradeOf(t: Test, output: string): UpgradeSummary | undefined {
  const status = statusFrom(output) as StatusWithUpgrade
  t.equal(status.mode, 'flash', 'on the flash, index=on configured')
  return status.upgrade
}

/** Delays after the reconcile's first line at which the sweep cuts the power, until a cut lands after its end. */
/**
 * Where the power is cut: at the reconcile's first line (before its commit), at its apply's line
 * (after the commit), each at once, and a little after the first. A whole console line, or (ending
 * in *) one that begins so. A cut lands when the reconcile had not printed its last line.
 */
const CUTS: [line: string, delay: number][] = [
  ['ovroot: firmware changed (*', 0],
  ['ovroot: applying the reconcile', 0],
  ['ovroot: firmware changed (*', 0.3],
]

await t.test(
  'firmware A to B over a kept flash: every row of the table, the reports, upgrade-check, power cuts inside the reconcile, back to A',
  async (t) => {
    const a = labFirmware(ARCH)
    const bImage = firmwareWith(ARCH, B_CHANGES)
    const dir = workspace(t)
    const flash = `${dir}/ext4.flash`
    const onA = ['--flash', flash, ...INDEX]
    const onB = ['--firmware', bImage, ...onA]
    const REPORT = `echo "report $(tr -d '\\n' < /overlay/.ovroot/upgrade/report.json)"`

    // A: the user's changes, then what upgrade-check says B's boot would do (B attached as /dev/vdc).
    const first = run(
      t,
      [...onA, '--attach', bImage],
      `${USER_CHANGES} && echo "changes made" && ${STATUS} && ovroot upgrade-check /dev/vdc --json > /tmp/check.json; echo "check exit $?"; echo "check $(cat /tmp/check.json)"; sync`,
    )
    t.match(first.stdout, /^changes made$/m, "A: the user's changes are made")
    t.equal(statusFrom(first.stdout).mode, 'flash', 'A: on the flash')
    t.match(first.stdout, /^check exit 8$/m, 'upgrade-check exits with the status that means conflicts')
    const check = reportFrom<CheckReport>(first.stdout, 'check')
    t.ok(check, 'upgrade-check --json printed its report')
    const beforeB = `${dir}/before-b.flash`
    fs.copyFileSync(flash, beforeB)

    // B: each row byte for byte, the status report, diff, diff --conflicts.
    const onBoot = run(
      t,
      onB,
      `${STATUS} && ${SHOW_ROWS} && ${DIFF} && ${REPORT} && ovroot status && ovroot diff --conflicts && ovroot diff --conflicts --patch`,
    )
    t.equal(onBoot.status, 0, 'B: every command ran')
    t.match(consoleLog(), RECONCILING, 'the boot on B reconciled the upper')
    t.same(rows(onBoot.stdout), ON_B, "B: each row of the table, byte for byte (content's md5 and mode)")
    const upgrade = upgradeOf(t, onBoot.stdout)
    t.same(
      upgrade && { from: upgrade.from, to: upgrade.to, conflicts: upgrade.conflicts, hidden: upgrade.hidden },
      {
        from: 'ovroot-lab 1.0 A',
        to: 'ovroot-lab 1.0 B',
        conflicts: ['/etc/config/network'],
        hidden: ['/etc/banner', '/etc/hotplug.d', '/etc/uci-defaults'],
      },
      'status: firmware A to B, the conflict and the hidden changes named',
    )
    const report = reportFrom(onBoot.stdout, 'report')
    t.ok(report, "the boot's report is on the flash")
    t.equal(report?.from, identityOf(a), "the boot's report: from A's identity")
    t.equal(report?.to, identityOf(bImage), 'to B')
    t.same(
      report?.counts,
      Object.fromEntries(Object.entries(CLASSES).map(([name, paths]) => [name, paths.length])),
      "the report counts each row's class",
    )
    t.same(upgrade?.counts, report?.counts, 'status counts them as the report does')
    t.same(
      report?.entries.map(({ path, class: what }) => ({ path, class: what })),
      NAMED_ON_B,
      'the report names the conflict and the hidden changes',
    )
    const { same, classes, ...predicted } = check ?? {}
    t.equal(same, false, 'upgrade-check: B is another firmware')
    t.same(classes, CLASSES, 'upgrade-check: the class of each entry of the upper')
    t.same(predicted, report, 'upgrade-check on A predicted exactly what the boot on B did (its report, whole)')
    t.same(changesFrom(onBoot.stdout), DIFF_ON_B, 'ovroot diff on B: only what the user changed')
    t.match(
      onBoot.stdout,
      /^upgrade: +firmware ovroot-lab 1\.0 A -> ovroot-lab 1\.0 B at this boot: /m,
      'ovroot status says so in words',
    )
    t.match(onBoot.stdout, /^conflicts: +\/etc\/config\/network /m, 'and names the conflict')
    t.match(
      onBoot.stdout,
      /^conflict {2}\/etc\/config\/network: base saved; user’s kept; firmware’s in the lower$/m,
      "diff --conflicts: A's bytes saved by upgrade-check, the user's copy kept, B's in the firmware",
    )
    t.match(
      onBoot.stdout,
      /^\+\+\+ user\/etc\/config\/network\n(.*\n)*\+option ipaddr '10\.0\.0\.1'$/m,
      '--patch: base to user',
    )
    t.match(
      onBoot.stdout,
      /^\+\+\+ firmware\/etc\/config\/network\n(.*\n)*\+\toption proto 'dhcp'$/m,
      'base to firmware',
    )

    // Power cuts inside the reconcile (CUTS): each that lands before its last line is followed by a boot
    // that must show every row reconciled, whether it finds the change committed or not.
    const landed: string[] = []
    for (const [line, delay] of CUTS) {
      const at = `"${line}" +${delay} s`
      const cutFlash = `${dir}/cut.flash`
      fs.copyFileSync(beforeB, cutFlash)
      const cutArgs = ['--firmware', bImage, '--flash', cutFlash, ...INDEX]
      const cut = boot([...cutArgs, '--cut-on', line, '--cut-after', String(delay), '--run', 'echo booted'])
      if (cut.status !== 137 || RECONCILED.test(consoleLog())) continue
      t.match(consoleLog(), RECONCILING, `cut at ${at}: the reconcile had begun`)
      const after = run(t, cutArgs, `${STATUS} && ${SHOW_ROWS} && ${DIFF}`)
      const resumed = FINISHING.test(consoleLog()) ? 'committed' : RECONCILING.test(consoleLog()) ? 'redone' : 'neither'
      landed.push(`${at}: ${resumed}`)
      t.not(resumed, 'neither', `cut at ${at}: the next boot finished the committed change or reconciled again`)
      t.equal(statusFrom(after.stdout).mode, 'flash', `cut at ${at}: the next boot is on the flash`)
      t.same(rows(after.stdout), ON_B, `cut at ${at} (${resumed}): the next boot shows every row reconciled`)
      t.same(changesFrom(after.stdout), DIFF_ON_B, `cut at ${at}: the same diff`)
    }
    t.ok(landed.length >= 2, `cuts landed inside the reconcile: ${landed.join(', ')}`)

    // Back to A over the flash B reconciled.
    const back = run(t, onA, `${STATUS} && ${SHOW_ROWS} && ${DIFF}`)
    t.same(rows(back.stdout), BACK_ON_A, 'back on A: each row, byte for byte')
    const backUpgrade = upgradeOf(t, back.stdout)
    t.same(
      backUpgrade && { from: backUpgrade.from, to: backUpgrade.to, conflicts: backUpgrade.conflicts },
      { from: 'ovroot-lab 1.0 B', to: 'ovroot-lab 1.0 A', conflicts: ['/etc/config/network'] },
      "status: B to A; the user's network against A's is a conflict again",
    )

    // And a boot with no firmware change reconciles nothing.
    const again = run(t, onA, `${STATUS} && ${SHOW_ROWS}`)
    t.same(rows(again.stdout), BACK_ON_A, 'the next boot on A: the same rows')
    t.notOk((statusFrom(again.stdout) as StatusWithUpgrade).upgrade, 'no upgrade at a boot on the same firmware')
    t.notMatch(consoleLog(), RECONCILING, 'and prints no reconcile')
  },
)

await t.test(
  'a reconcile that fails at boot (the flash full while it is staged): a degraded boot that says so, nothing changed, B done at a later boot',
  async (t) => {
    const bImage = firmwareWith(ARCH, B_CHANGES)
    const dir = workspace(t)
    const flash = `${dir}/ext4.flash`
    const onA = ['--flash', flash, '--media', 'ext4']
    const FIRMWARE = `echo "record $(cat /overlay/.ovroot/firmware)"; echo "state $(ls /overlay/.ovroot | tr '\\n' ' ')"`
    // A: a change the reconcile must stage B's data for, then every block of the flash taken (root's reserve too).
    const first = run(
      t,
      onA,
      `chmod 700 /usr/bin/tool && sync && (dd if=/dev/zero of=/fill bs=64k 2>/dev/null; sync; echo "flash filled") && ${FIRMWARE}`,
    )
    t.match(first.stdout, /^flash filled$/m, 'A: the flash is full')
    const recordA = /^record (.*)$/m.exec(first.stdout)?.[1]

    const onB = run(t, ['--firmware', bImage, ...onA], `${STATUS} && ovroot status && cat /usr/bin/tool && ${FIRMWARE}`)
    const status = statusFrom(onB.stdout) as DeviceStatus & {
      upgradeFailed?: { from: string; to: string; committed: boolean; cause: string; advice: string }
    }
    t.equal(status.mode, 'degraded', 'B: the device boots, degraded')
    t.match(
      status.reason,
      /^the upper could not be reconciled with the new firmware \(ovroot-lab 1\.0 A -> ovroot-lab 1\.0 B\): .*no space left/i,
      'the reason names the upgrade and its cause, not a generic failed change',
    )
    t.match(status.upgradeFailed, {
      from: 'ovroot-lab 1.0 A',
      to: 'ovroot-lab 1.0 B',
      committed: false,
      cause: /no space left/i,
      advice: /nothing on the flash changed/,
    })
    t.match(onB.stdout, /^upgrade: {4}FAILED: firmware ovroot-lab 1\.0 A -> ovroot-lab 1\.0 B: /m, 'status in words')
    t.match(onB.stdout, /^what to do: nothing on the flash changed/m)
    t.match(onB.stdout, /^echo "tool 2\.0"$/m, "the firmware only: B's tool, not A's copy")
    t.equal(/^record (.*)$/m.exec(onB.stdout)?.[1], recordA, 'the flash still records A')
    t.notMatch(/^state (.*)$/m.exec(onB.stdout)?.[1] ?? '', /staged|pending/, 'nothing staged or committed left')

    // Room made as the advice says (a reset of the file that filled the flash works on a degraded boot), B reconciles at its next boot.
    const reset = run(t, ['--firmware', bImage, ...onA], 'ovroot reset --yes /fill; echo "reset exit $?"')
    t.match(reset.stdout, /^reset exit 0$/m, 'the reset of /fill is scheduled')
    const later = run(t, ['--firmware', bImage, ...onA], `${STATUS} && ls -l /usr/bin/tool && ls /fill; true`)
    t.equal(statusFrom(later.stdout).mode, 'flash', 'with room, B boots on the flash')
    t.match(later.stdout, /^-rwx------ .*\/usr\/bin\/tool$/m, "reconciled: B's tool with the user's mode")
    t.notMatch(later.stdout, /^\/fill$/m, 'the reset dropped what filled the flash')
  },
)
