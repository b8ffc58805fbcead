/**
 * Files some process maps shared and writable. On tmpfs (a RAM upper) a write
 * through such a mapping moves neither mtime nor ctime once the page has
 * faulted in writable, and raises no inotify event: nothing but the mappings
 * says that the file may have changed. Every process's /proc/PID/maps names
 * each mapping's device (major:minor, hex) and inode number. A file mapped
 * through an overlay shows the overlay's device (Linux 6.8+; older kernels the
 * upper's) and the upper file's own inode number (overlayfs keeps an upper
 * inode's number: the upper is layer 0, with or without xino).
 */
import * as fs from 'node:fs'
import { fromNodeError } from '../errors.js'
import { majorOf, minorOf } from './entries.js'
import { readTextFileIfExists } from './fs.js'

/** perms `?w?s`, then offset, device and a nonzero inode. */
const SHARED_WRITABLE = /^\S+ .w.s \S+ ([0-9a-f]+):([0-9a-f]+) ([1-9]\d*)/gm

/**
 * Inode numbers of the files that some process maps shared and writable, on
 * the upper's filesystem or on any overlay (one over this upper among them).
 * Another overlay's inode of the same number costs a compare, nothing more.
 */
export function sharedWritableInodes(upper: string): Set<bigint> {
  const devices = new Set([deviceOf(upper), ...overlayDevices()])
  const inodes = new Set<bigint>()
  for (const pid of processIds()) {
    // A process that exits meanwhile, or a kernel thread, has nothing to say.
    const maps = readQuietly(`/proc/${pid}/maps`)
    for (const [, major = '', minor = '', inode = ''] of maps.matchAll(SHARED_WRITABLE))
      if (devices.has(`${parseInt(major, 16)}:${parseInt(minor, 16)}`)) inodes.add(BigInt(inode))
  }
  return inodes
}

/** Without /proc mounted nothing can be known: no mapping is found (and a sync compares what it otherwise would). */
function processIds(): string[] {
  try {
    return fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))
  } catch {
    return []
  }
}

function deviceOf(path: string): string {
  try {
    const dev = Number(fs.statSync(path, { bigint: true }).dev)
    return `${majorOf(dev)}:${minorOf(dev)}`
  } catch (error) {
    throw fromNodeError(error, 'stat', path)
  }
}

/** Each mounted overlay's device, from mountinfo's third field and its filesystem type after the ` - `. */
function overlayDevices(): string[] {
  return (readTextFileIfExists('/proc/self/mountinfo') ?? '')
    .split('\n')
    .filter((line) => line.split(' - ')[1]?.startsWith('overlay '))
    .map((line) => line.split(' ')[2] ?? '')
}

function readQuietly(file: string): string {
  try {
    return fs.readFileSync(file, 'latin1')
  } catch {
    return ''
  }
}
