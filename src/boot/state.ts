/**
 * What boot decided, written under /run for `ovroot status` (and by the
 * shim's failsafe in the same shape). The flash's own state lives in
 * <flash>/.ovroot/ and is always replaced atomically.
 */
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
  /** A backup was restored. */
  restored?: { source: string; entries: number }
  /** Seconds from the shim's start to the end of `ovroot boot`. */
  bootSeconds?: number
  /** Peak resident memory of `ovroot boot`, in KiB. */
  peakMemoryKiB?: number
  bootedAt: string
}

export const STATUS_FILE = 'status.json'
export const FLASH_STATE_DIR = '.ovroot'

/** The boot record from RUN_DIR/status.json, or undefined when boot wrote none. */
export function parseBootState(text: string | undefined, file: string, fail: (message: string) => Error): BootState | undefined {
  if (text === undefined) return undefined
  try {
    const state = JSON.parse(text) as BootState
    if (typeof state.mode === 'string') return state
  } catch {
    // reported below
  }
  throw fail(`${file}: unreadable boot record; expected the JSON ovroot boot writes`)
}
