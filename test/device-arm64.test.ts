/**
 * The arm64 device: the same demo image built for arm64 from the registries
 * (Debian's arm64 kernel, busybox and C library, the official Node binary for
 * arm64, koffi's arm64 build) and booted under qemu-system-aarch64 -M virt
 * (TCG). It runs the scenarios that exercise the architecture-dependent
 * parts: statx decoding (diff), mknodat (whiteouts), pivot_root (boot), the
 * console (ttyAMA0), and the shim's reading of ELF headers.
 */
import t from 'tap'
import { corruptFlash, interactiveConsole, lifecycle, unloadableInit } from './helpers/scenarios.js'

const ARM64 = ['--arch', 'arm64']

await t.test(
  'arm64, NOR flash (JFFS2 on MTD): first boot, persistence with an exact ovroot diff, reset with a keep list',
  async (t) => lifecycle(t, 'nor', ARM64),
)

await t.test('arm64, corrupt flash (random bytes): boots on RAM, says why, leaves the flash untouched', async (t) =>
  corruptFlash(t, ARM64),
)

await t.test('arm64, the demo console on a pty: one shell with job control that answers; Ctrl-A X leaves', async (t) =>
  interactiveConsole(t, ARM64, 'escape'),
)

for (const kind of ['other-machine', 'missing-loader', 'truncated']) {
  await t.test(`arm64, an init that cannot run (${kind}): the shim falls back to /sbin/init`, async (t) =>
    unloadableInit(t, kind, ARM64),
  )
}
