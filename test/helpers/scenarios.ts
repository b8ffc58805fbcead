/**
 * Scenarios every architecture of the lab runs (test/device.test.ts on the
 * lab's own architecture, test/device-arm64.test.ts on arm64): archArgs
 * picks the device's CPU.
 */
import type { Test } from 'tap'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import { ConsoleSession } from './console.js'
import { changesFrom, consoleLog, run, statusFrom, workspace } from './lab.js'

export const STATUS = 'ovroot status --json'
export const DIFF = 'ovroot diff --json'

/** A user's changes of every kind, and what diff must say about them. */
export const USER_CHANGES = [
  'echo hello > /etc/hello',
  'echo "option ipaddr \'10.0.0.1\'" >> /etc/config/network',
  'chmod 600 /etc/config/wireless',
  'rm /etc/banner',
  'mkdir -p /etc/dropbear && echo host-key > /etc/dropbear/key',
  'echo secret > /root/.hidden && mkdir /root/.cache && echo x > /root/.cache/state',
  'sync',
].join(' && ')
export const EXPECTED_DIFF = [
  { path: '/etc/banner', change: 'deleted' },
  { path: '/etc/config/network', change: 'modified' },
  { path: '/etc/config/wireless', change: 'metadata' },
  { path: '/etc/dropbear', change: 'added' },
  { path: '/etc/dropbear/key', change: 'added' },
  { path: '/etc/hello', change: 'added' },
  { path: '/root/.cache', change: 'added' },
  { path: '/root/.cache/state', change: 'added' },
  { path: '/root/.hidden', change: 'added' },
]

/** A medium's life: first boot, persistence, reset with a keep list. */
export function lifecycle(t: Test, media: string, archArgs: string[] = []): void {
  const flash = `${workspace(t)}/${media}.flash`
  const args = [...archArgs, '--media', media, '--flash', flash]

  const first = run(t, args, `${STATUS} && ${USER_CHANGES}`)
  t.equal(first.status, 0, 'first boot runs the command')
  const firstStatus = statusFrom(first.stdout)
  t.equal(firstStatus.mode, 'flash', 'mode flash')
  t.equal(firstStatus.formatted, true, 'the erased flash was formatted')

  const second = run(t, args, `${STATUS} && ${DIFF} && cat /etc/hello && ovroot reset --yes --keep /etc/hello`)
  t.equal(second.status, 0)
  t.notOk(statusFrom(second.stdout).formatted, 'not formatted again')
  t.match(second.stdout, /^hello$/m, 'files persist across a reboot')
  t.same(changesFrom(second.stdout), EXPECTED_DIFF, 'ovroot diff inside the device lists exactly the changes made')

  const third = run(t, args, `${STATUS} && ${DIFF} && ls -a /root`)
  t.equal(third.status, 0)
  const thirdStatus = statusFrom(third.stdout)
  t.same(
    thirdStatus.reset?.kept.sort(),
    ['/etc/dropbear', '/etc/hello'],
    'keep list: --keep and /lib/upgrade/keep.d/base-files',
  )
  t.same(
    changesFrom(third.stdout),
    [
      { path: '/etc/dropbear', change: 'added' },
      { path: '/etc/dropbear/key', change: 'added' },
      { path: '/etc/hello', change: 'added' },
    ],
    'after the reset only the kept paths differ from the factory image',
  )
  t.notMatch(third.stdout, /\.hidden|\.cache/, 'hidden files and directories are gone')
}

/** Random bytes where the flash should be: the device boots on RAM, says why, and leaves the flash alone. */
export function corruptFlash(t: Test, archArgs: string[] = []): void {
  const flash = `${workspace(t)}/nor.flash`
  fs.writeFileSync(flash, Buffer.from(Array.from({ length: 8 << 20 }, (_, i) => (i * 2654435761) >>> 24)))
  const before = createHash('sha256').update(fs.readFileSync(flash)).digest('hex')
  const result = run(t, [...archArgs, '--flash', flash], `${STATUS} && ovroot status`)
  const status = statusFrom(result.stdout)
  t.equal(status.mode, 'degraded')
  t.match(status.reason, /holds data that is not jffs2 .*left untouched/)
  t.match(result.stdout, /DEGRADED: RAM upper instead of flash/, 'ovroot status says so in words')
  t.equal(
    createHash('sha256').update(fs.readFileSync(flash)).digest('hex'),
    before,
    'not one byte of the flash changed',
  )
}

/**
 * The demo console driven through a real pty as a person would: one shell
 * with job control that answers, and a way out (`poweroff -f`, or QEMU's
 * Ctrl-A X). Shell arithmetic in each command makes the awaited answer text
 * the echo of the typed line cannot contain.
 */
export async function interactiveConsole(
  t: Test,
  archArgs: string[],
  leave: 'poweroff' | 'escape',
  readmeDemo = false,
): Promise<void> {
  const session = new ConsoleSession([...archArgs, '--flash', `${workspace(t)}/nor.flash`])
  t.teardown(() => session.kill())
  let at = await session.waitFor(/:\/# /)
  session.type('ovroot status\r')
  at = await session.waitFor(/^mode: +flash: changes persist$/m, at)
  t.pass('ovroot status answers: flash mode')

  session.type('echo hi > /etc/hi; ovroot diff; echo "diff $((40 + 2))"\r')
  const diffEnd = await session.waitFor(/^diff 42$/m, at)
  t.match(session.transcript.slice(at, diffEnd), /^A \/etc\/hi$/m, 'ovroot diff lists the new file')
  at = diffEnd

  // Ctrl-C only once the shell has handed the terminal to the job: the job
  // itself prints, and ash's child takes the terminal before it runs anything
  // (a builtin echo before the job printed too early: a Ctrl-C then reached
  // the shell, not sleep, and the console hung). The next line only at the
  // next prompt: a Ctrl-C flushes what was typed ahead.
  session.type(`sh -c 'echo "sleeping $((2 * 3))"; exec sleep 100000'\r`)
  at = await session.waitFor(/^sleeping 6$/m, at)
  session.type('\x03')
  at = await session.waitFor(/:\/# /, at)
  session.type('echo "interrupted $((1 + 1))"; tty\r')
  at = await session.waitFor(/^interrupted 2\n\/dev\/tty\w+$/m, at)
  t.pass('Ctrl-C interrupts the foreground job: the shell owns the console as its controlling tty')

  session.type(`echo "shells $(ps -o ppid,args | awk '$1 == 1 && $2 == "/bin/sh" && $3 == "-l"' | wc -l)"\r`)
  at = await session.waitFor(/^shells \d+$/m, at)
  t.match(
    session.transcript,
    /^shells 1$/m,
    "exactly one login shell runs on the console (children of init; the count's own subshell is not one)",
  )
  t.equal(
    session.transcript.split("Enter 'help' for a list").length - 1,
    1,
    'the shell started once: init never respawned it',
  )

  if (readmeDemo) at = await backupResetRestore(t, session, at)
  session.type(leave === 'poweroff' ? 'poweroff -f\r' : '\x01x')
  t.equal(await session.exited, 0, leave === 'poweroff' ? 'poweroff -f ends the session' : 'Ctrl-A X ends the session')
}

/**
 * The README's demo as typed there: a backup on the flash beside the upper (a reset keeps it), a factory
 * reset, the restore; each `--reboot` reboots the device and the console comes back.
 */
async function backupResetRestore(t: Test, session: ConsoleSession, from: number): Promise<number> {
  session.type('ovroot backup /overlay/b.ovb && ovroot reset --reboot --yes\r')
  let at = await session.waitFor(/^ovroot: applied factory reset/m, from)
  at = await session.waitFor(/:\/# /, at)
  session.type('cat /etc/hi; ovroot restore /overlay/b.ovb --reboot --yes\r')
  const restoring = await session.waitFor(/^ovroot: restore of \/overlay\/b\.ovb .*scheduled for the next boot$/m, at)
  t.match(session.transcript.slice(at, restoring), /can't open '\/etc\/hi'/, 'the reset took /etc/hi away')
  at = await session.waitFor(/^ovroot: applied restore of \/overlay\/b\.ovb/m, restoring)
  at = await session.waitFor(/:\/# /, at)
  session.type('echo "restored $(cat /etc/hi)"\r')
  at = await session.waitFor(/^restored hi$/m, at)
  t.pass('backup, reset --reboot, restore --reboot: the device rebooted twice and /etc/hi is back')
  return at
}

/** The lab's inits that exist and are executable but cannot run (qemu/lab/build.ts), and why the shim says so. */
export const UNLOADABLE_INITS: Record<string, RegExp> = {
  'missing-interpreter': /its interpreter \/usr\/bin\/lua does not exist/,
  'other-machine': /it is an ELF for another machine/,
  'missing-loader': /its program interpreter \/lib\/ld-missing\.so\.1 cannot be loaded/,
  truncated: /it is truncated/,
}

/** An unrunnable configured init: the shim names why and falls back to /sbin/init, which runs the device. */
export function unloadableInit(t: Test, kind: string, archArgs: string[] = []): void {
  const init = `/usr/lib/ovroot-lab/unloadable-init/${kind}`
  const result = run(t, [...archArgs, '--no-flash', '--append', `ovroot.boot.init=${init}`], STATUS)
  t.equal(result.status, 0, 'the device came up through /sbin/init and ran the command')
  t.match(consoleLog(), `ovroot-init: cannot execute ${init} as init: `, 'the shim says which init it passed over')
  t.match(consoleLog(), UNLOADABLE_INITS[kind] ?? /never/, 'and why')
}
