/** What /proc/mounts says about mounted overlays; mounting an image to read it. */
import * as fs from 'node:fs'
import * as os from 'node:os'
import { readTextFileIfExists, statPath } from './fs.js'
import { unmount } from './libc.js'
import { runTool } from './run.js'

/** /proc/mounts escapes space, tab, newline and backslash as octal. */
const unescape = (field: string): string =>
  field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))

export interface OverlayLayers {
  /** Upper and work directories: written by the kernel while mounted. */
  written: string[]
  lowers: string[]
}

/** The layer directories of every mounted overlay, as they were named when it was mounted. */
export function mountedOverlayLayers(): OverlayLayers {
  const layers: OverlayLayers = { written: [], lowers: [] }
  for (const line of (readTextFileIfExists('/proc/mounts') ?? '').split('\n')) {
    const [, , type, options] = line.split(' ')
    if (type !== 'overlay' || options === undefined) continue
    for (const option of options.split(',')) {
      const [key, value = ''] = option.split(/=(.*)/)
      if (key === 'upperdir' || key === 'workdir') layers.written.push(unescape(value))
      // Data-only lowers (Linux 6.5+) follow a '::'.
      if (key === 'lowerdir') layers.lowers.push(...value.split(':').filter(Boolean).map(unescape))
    }
  }
  return layers
}

/**
 * The block device (`/dev/NAME`) holding the filesystem of `path`, from its
 * st_dev and sysfs; undefined when it is not on one (tmpfs, overlay).
 */
export function blockDeviceOf(path: string): string | undefined {
  const dev = statPath(path)?.dev
  if (dev === undefined) return undefined
  // glibc's gnu_dev_major/minor.
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn)
  const uevent = readTextFileIfExists(`/sys/dev/block/${major}:${minor}/uevent`)
  const name = uevent && /^DEVNAME=(.+)$/m.exec(uevent)?.[1]
  return name ? `/dev/${name}` : undefined
}

/**
 * A squashfs image file mounted read-only on a new private directory
 * (mkdtemp: a name nobody can plant beforehand), through mount(8)'s loop
 * support; `release` unmounts it and removes the directory.
 */
export async function mountImage(image: string): Promise<{ root: string; release(): void }> {
  const root = fs.mkdtempSync(`${os.tmpdir()}/ovroot-image-`)
  try {
    await runTool('mount', ['-t', 'squashfs', '-o', 'ro,loop', image, root])
  } catch (error) {
    fs.rmdirSync(root)
    throw error
  }
  return {
    root,
    release() {
      unmount(root)
      fs.rmdirSync(root)
    },
  }
}
