/**
 * Every configuration key, its type, default and meaning. etc/ovroot.conf is
 * the commented copy users read; test/config.test.ts keeps the two in step.
 */
import { globToRegExp } from '../glob.js'
import { bytesOf } from '../names.js'

export const MEDIA_DRIVERS = ['mtd', 'ubi', 'block', 'ram'] as const
export type MediaDriverName = (typeof MEDIA_DRIVERS)[number]

export interface Config {
  overlay: {
    /** Read-only lower layers, top first. */
    lower: string[]
    /** Where the flash filesystem is mounted; the upper is `<dir>/upper`. */
    dir: string
    /** Extra overlay mount options. */
    options: string[]
  }
  flash: {
    drivers: MediaDriverName[]
    name: string
    device: string
    filesystem: 'auto' | 'ext4' | 'f2fs'
    reformat_corrupt: boolean
    ram_size: string
  }
  boot: {
    init: string
    timeout: number
    run_dir: string
  }
  reset: {
    keep: string[]
    keep_lists: string[]
  }
  sync: {
    enabled: boolean
    quiet: number
    max_delay: number
    /** Bytes a day automatic syncs may write to flash; 0: no limit. */
    budget: number
    exclude: string[]
  }
  upgrade: {
    /** Whose version a file both the user and a new firmware changed keeps. */
    conflicts: 'user' | 'firmware'
  }
}

export interface KeySpec<T> {
  /** Human description of what is expected, used in error messages. */
  expected: string
  parse(raw: string): T | undefined
}

const words = (raw: string): string[] => raw.split(/[\s,]+/).filter(Boolean)

const absolutePath: KeySpec<string> = {
  expected: 'an absolute path',
  parse: (raw) => (raw.startsWith('/') && !raw.includes('\0') ? raw.replace(/(.)\/+$/, '$1') : undefined),
}

const absolutePaths: KeySpec<string[]> = {
  expected: 'absolute paths separated by spaces',
  parse: (raw) => {
    const paths = words(raw)
    return paths.every((path) => path.startsWith('/')) ? paths : undefined
  },
}

const layers: KeySpec<string[]> = {
  expected: 'absolute paths separated by spaces, at least one',
  parse: (raw) => {
    const paths = absolutePaths.parse(raw)
    return paths?.length ? paths : undefined
  },
}

const absoluteGlobs: KeySpec<string[]> = {
  expected: 'absolute paths or globs separated by spaces',
  parse: (raw) => {
    const globs = absolutePaths.parse(raw)
    try {
      globs?.forEach((glob) => globToRegExp(bytesOf(glob)))
      return globs
    } catch {
      return undefined
    }
  },
}

const oneOf = <T extends string>(...choices: T[]): KeySpec<T> => ({
  expected: `one of ${choices.join(', ')}`,
  parse: (raw) => choices.find((choice) => choice === raw),
})

export const yesNo: KeySpec<boolean> = {
  expected: 'yes or no',
  parse: (raw) =>
    ['yes', 'true', 'on', '1'].includes(raw) ? true : ['no', 'false', 'off', '0'].includes(raw) ? false : undefined,
}

const seconds: KeySpec<number> = {
  expected: 'a whole number of seconds from 1 to 3600',
  parse: (raw) => (/^\d+$/.test(raw) && Number(raw) >= 1 && Number(raw) <= 3600 ? Number(raw) : undefined),
}

const UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }

const byteCount: KeySpec<number> = {
  expected: 'a number of bytes, with k, m or g (0: no limit)',
  parse: (raw) => {
    const match = /^(\d+)([kmg]?)$/i.exec(raw)
    return match ? Number(match[1]) * (UNITS[(match[2] ?? '').toLowerCase()] ?? 1) : undefined
  },
}

const OVERLAY_OPTIONS =
  /^(redirect_dir=(on|off|follow|nofollow)|metacopy=(on|off)|index=(on|off)|xino=(on|off|auto)|nfs_export=(on|off)|uuid=(on|off|null|auto)|verity=(on|off|require)|userxattr|volatile)$/

const overlayOptions: KeySpec<string[]> = {
  expected: 'overlay mount options such as redirect_dir=on,metacopy=on,index=on,userxattr',
  parse: (raw) => {
    const options = words(raw)
    return options.every((option) => OVERLAY_OPTIONS.test(option)) ? options : undefined
  },
}

const drivers: KeySpec<MediaDriverName[]> = {
  expected: `a list of media drivers from ${MEDIA_DRIVERS.join(', ')}`,
  parse: (raw) => {
    const list = words(raw)
    return list.length > 0 &&
      list.every((name) => (MEDIA_DRIVERS as readonly string[]).includes(name)) &&
      new Set(list).size === list.length
      ? (list as MediaDriverName[])
      : undefined
  },
}

const flashName: KeySpec<string> = {
  expected: 'a partition or volume name of letters, digits, _ and -',
  parse: (raw) => (/^[A-Za-z0-9_-]{1,63}$/.test(raw) ? raw : undefined),
}

const blockDevice: KeySpec<string> = {
  expected: 'empty, a /dev path, LABEL=name or PARTUUID=id',
  parse: (raw) => (raw === '' || /^\/dev\/\S+$/.test(raw) || /^(LABEL|PARTUUID)=\S+$/.test(raw) ? raw : undefined),
}

const tmpfsSize: KeySpec<string> = {
  expected: 'a tmpfs size such as 16m, 1g or 50%',
  parse: (raw) => (/^\d+[kmg%]?$/i.test(raw) ? raw.toLowerCase() : undefined),
}

export const SCHEMA: { [S in keyof Config]: { [K in keyof Config[S]]: KeySpec<Config[S][K]> } } = {
  overlay: { lower: layers, dir: absolutePath, options: overlayOptions },
  flash: {
    drivers,
    name: flashName,
    device: blockDevice,
    filesystem: oneOf('auto', 'ext4', 'f2fs'),
    reformat_corrupt: yesNo,
    ram_size: tmpfsSize,
  },
  boot: { init: absolutePath, timeout: seconds, run_dir: absolutePath },
  reset: { keep: absoluteGlobs, keep_lists: absolutePaths },
  sync: { enabled: yesNo, quiet: seconds, max_delay: seconds, budget: byteCount, exclude: absoluteGlobs },
  upgrade: { conflicts: oneOf('user', 'firmware') },
}

/**
 * What [overlay] options mean for a firmware upgrade, one warning per option
 * whose result over a new lower the reconcile cannot make defined. index,
 * metacopy and redirect_dir bind the upper to the old lower, but the
 * reconcile clears origins and the index and re-makes stubs and renames for
 * the new one; nfs_export's file handles name inodes of the old lower.
 */
export function upgradeWarnings(options: readonly string[]): string[] {
  return options.includes('nfs_export=on')
    ? [
        '[overlay] options nfs_export=on: file handles given out name the old firmware’s inodes; after a firmware upgrade NFS clients must remount',
      ]
    : []
}

export function defaultConfig(): Config {
  return {
    overlay: { lower: ['/rom'], dir: '/overlay', options: [] },
    flash: {
      drivers: ['mtd', 'ubi', 'block', 'ram'],
      name: 'rootfs_data',
      device: '',
      filesystem: 'auto',
      reformat_corrupt: false,
      ram_size: '50%',
    },
    boot: { init: '/sbin/init', timeout: 60, run_dir: '/run/ovroot' },
    reset: { keep: [], keep_lists: ['/etc/sysupgrade.conf', '/lib/upgrade/keep.d'] },
    sync: { enabled: false, quiet: 30, max_delay: 300, budget: 0, exclude: [] },
    upgrade: { conflicts: 'user' },
  }
}
