/**
 * Scenarios every architecture of the lab runs (test/device.test.ts on the
 * lab's own architecture, test/device-arm64.test.ts on arm64): archArgs
 * picks the device's CPU.
 */
import type { Test } from 'tap'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import { changesFrom, run, statusFrom, workspace } from './lab.js'

export const STATUS = 'ovroot status --json'
export const DIFF = 'ovroot diff --json'

/** A user's changes of every kind, and what diff must say about them. */
export const USER_CHANGES = [
  'echo hello > /etc/hello',
  "echo \"option ipaddr '10.0.0.1'\" >> /etc/config/network",
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
  t.same(thirdStatus.reset?.kept.sort(), ['/etc/dropbear', '/etc/hello'], 'keep list: --keep and /lib/upgrade/keep.d/base-files')
  t.same(changesFrom(third.stdout), [
    { path: '/etc/dropbear', change: 'added' },
    { path: '/etc/dropbear/key', change: 'added' },
    { path: '/etc/hello', change: 'added' },
  ], 'after the reset only the kept paths differ from the factory image')
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
  t.equal(createHash('sha256').update(fs.readFileSync(flash)).digest('hex'), before, 'not one byte of the flash changed')
}
