/**
 * What boot decided, written to [boot] run_dir/status.json for `ovroot status`
 * and the commands that change a device (and by the shim's failsafe in the
 * same shape). What is kept on the flash is in state/flash.ts.
 */
import { ExitCode, OvrootError } from '../errors.js'
import { readTextFileIfExists, writeFileAtomic } from '../sys/fs.js'
import { statusPath } from './run.js'

export type BootMode = 'flash' | 'ram' | 'degraded' | 'failsafe' | 'readonly'

export interface BootState {
  mode: BootMode
  /** Why the device is not on flash (absent in flash mode). */
  reason?: string
  medium?: { driver: string; description: string; device: string; filesystem: string }
  overlay?: { lowers: string[]; upper: string; work: string; options: string }
  /** First boot: the flash was formatted. */
  formatted?: boolean
  /** A factory reset was carried out, keeping these paths. */
  reset?: { kept: string[] }
  /** The upper is in RAM and persisted by `ovroot sync` to this copy on the flash. */
  sync?: { mirror: string }
  /** The firmware changed at this boot and the upper was reconciled with it (upgrade/boot.ts `UpgradeSummary`). */
  upgrade?: {
    from: string
    to: string
    counts: Record<string, number>
    conflicts: string[]
    /** Absent in records of earlier versions. */
    firmwareWon?: string[]
    hidden: string[]
    unknown: string[]
    /** Damaged records the reconcile worked around (absent in records of earlier versions). */
    problems?: string[]
  }
  /** The firmware changed and the upper's reconcile failed: the boot is degraded (upgrade/boot.ts `UpgradeFailure`). */
  upgradeFailed?: { from: string; to: string; committed: boolean; cause: string; advice: string }
  /** A backup was restored. */
  restored?: { source: string; entries: number }
  /** Seconds from the shim's start to the end of `ovroot boot`. */
  bootSeconds?: number
  /** Peak resident memory of `ovroot boot`, in KiB. */
  peakMemoryKiB?: number
  bootedAt: string
}

export function writeBootState(runDir: string, state: BootState): void {
  writeFileAtomic(statusPath(runDir), `${JSON.stringify(state, null, 2)}\n`)
}

/**
 * The boot record of this boot. None is an error whose message goes on with
 * `absent` (what its absence means to the caller); an unreadable one is ESTATUS.
 */
export function readBootState(runDir: string, absent: string): BootState {
  const file = statusPath(runDir)
  const text = readTextFileIfExists(file)
  if (text === undefined) throw new OvrootError('ENOSTATUS', ExitCode.environment, `${file}: no boot record${absent}`)
  try {
    const state: unknown = JSON.parse(text)
    if (isBootState(state)) return state
  } catch {
    // reported below
  }
  throw new OvrootError(
    'ESTATUS',
    ExitCode.data,
    `${file}: unreadable boot record; expected the JSON ovroot boot writes`,
  )
}

const MODES: readonly string[] = ['flash', 'ram', 'degraded', 'failsafe', 'readonly'] satisfies BootMode[]

type Json = Record<string, unknown>
const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value)
const isStrings = (value: unknown): boolean => Array.isArray(value) && value.every((item) => typeof item === 'string')
/** An optional member: absent, or what `check` accepts. */
const optional = (record: Json, key: string, check: (value: unknown) => boolean): boolean =>
  record[key] === undefined || check(record[key])

/**
 * The shape status and the live commands read (a record another version wrote, or a damaged one, would
 * otherwise fail deep inside them, or show a status without its mode).
 */
function isBootState(value: unknown): value is BootState {
  if (!isObject(value) || typeof value.mode !== 'string' || !MODES.includes(value.mode)) return false
  const overlay = (item: unknown): boolean => isObject(item) && isStrings(item.lowers) && typeof item.upper === 'string'
  const upgrade = (item: unknown): boolean =>
    isObject(item) &&
    isObject(item.counts) &&
    ['conflicts', 'hidden', 'unknown'].every((key) => isStrings(item[key])) &&
    ['firmwareWon', 'problems'].every((key) => optional(item, key, isStrings))
  return (
    optional(value, 'reason', (item) => typeof item === 'string') &&
    optional(value, 'medium', (item) => isObject(item) && typeof item.driver === 'string') &&
    optional(value, 'overlay', overlay) &&
    optional(value, 'reset', (item) => isObject(item) && isStrings(item.kept)) &&
    optional(value, 'sync', (item) => isObject(item) && typeof item.mirror === 'string') &&
    optional(value, 'upgrade', upgrade) &&
    optional(value, 'upgradeFailed', isObject) &&
    optional(value, 'restored', isObject) &&
    optional(value, 'bootSeconds', (item) => typeof item === 'number')
  )
}

/** The flash is mounted at [overlay] dir (read-only unless the mode is flash). */
export function flashMounted(state: BootState): boolean {
  return state.medium !== undefined && state.medium.driver !== 'ram'
}
