/**
 * A later firmware for the lab's device, made from the firmware the lab built
 * (A): A unsquashed into a scratch directory, a list of changes applied, its
 * manifest written again and the tree squashed with the lab's own options
 * (qemu/lab/squashfs.ts). Built once per A and change list: the result is kept
 * beside A, named by both.
 */
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import { squashFirmware } from '../../qemu/lab/squashfs.js'
import { VM } from './lab.js'

const PROJECT = fileURLToPath(new URL('../..', import.meta.url))

/** One change firmware B makes to A; paths are absolute in the device. */
export type FirmwareChange =
  | { write: string; content: string | Buffer; mode?: number }
  | { remove: string }
  | { mkdir: string; mode?: number }
  | { symlink: string; target: string }

/** The lab's firmware for ARCH (built if missing or stale, as qemu/vm boot would). */
export function labFirmware(arch: string): string {
  execFileSync('env', ['-u', 'NODE_OPTIONS', VM, 'build', '--arch', arch], { stdio: ['ignore', 'ignore', 'inherit'] })
  return path.join(PROJECT, 'qemu', 'build', arch, 'rootfs.squashfs')
}

/** Firmware B: the lab's firmware for ARCH with CHANGES applied in order. */
export function firmwareWith(arch: string, changes: FirmwareChange[]): string {
  const a = labFirmware(arch)
  const key = createHash('sha256')
    .update(fs.readFileSync(path.join(path.dirname(a), 'inputs.sha256')))
    .update(JSON.stringify(changes))
    .digest('hex')
    .slice(0, 16)
  const b = path.join(path.dirname(a), 'firmware', `${key}.squashfs`)
  if (fs.existsSync(b)) return b
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'ovroot-firmware-'))
  try {
    const root = path.join(scratch, 'root')
    execFileSync('unsquashfs', ['-quiet', '-no-progress', '-dest', root, a], { stdio: ['ignore', 'ignore', 'pipe'] })
    for (const change of changes) apply(root, change)
    const image = path.join(scratch, 'firmware.squashfs')
    squashFirmware(path.join(PROJECT, 'dist'), root, image)
    fs.mkdirSync(path.dirname(b), { recursive: true })
    // Whole or absent: a test run killed mid-build leaves no half image under the final name.
    fs.copyFileSync(image, `${b}.part`)
    fs.renameSync(`${b}.part`, b)
    return b
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true })
  }
}

function apply(root: string, change: FirmwareChange): void {
  const at = (device: string): string => path.join(root, device)
  if ('write' in change) {
    fs.mkdirSync(path.dirname(at(change.write)), { recursive: true })
    fs.writeFileSync(at(change.write), change.content)
    if (change.mode !== undefined) fs.chmodSync(at(change.write), change.mode)
  } else if ('remove' in change) {
    if (!fs.existsSync(at(change.remove))) throw new Error(`firmware: ${change.remove} is not in the firmware`)
    fs.rmSync(at(change.remove), { recursive: true })
  } else if ('mkdir' in change) {
    fs.mkdirSync(at(change.mkdir), { recursive: true })
    if (change.mode !== undefined) fs.chmodSync(at(change.mkdir), change.mode)
  } else {
    fs.rmSync(at(change.symlink), { force: true })
    fs.symlinkSync(change.target, at(change.symlink))
  }
}
