/**
 * Progress reports to the boot shim. The shim's timer measures time without
 * progress, so a first-boot format or a reset of a large upper may take as
 * long as it needs while a hung agent is still caught. Outside boot nobody
 * listens and reporting costs nothing.
 */
import { writeFileSync } from 'node:fs'

/** At most this often: the shim polls ten times a second, a write per entry would wear nothing but cost time. */
const INTERVAL_MS = 200

let file: string | undefined
let beats = 0
let last = 0

export function reportProgressTo(path: string): void {
  file = path
}

export function reportProgress(): void {
  if (file === undefined) return
  const now = Date.now()
  if (now - last < INTERVAL_MS) return
  last = now
  beats++
  try {
    writeFileSync(file, `${beats}\n`)
  } catch {
    // /run is a tmpfs the shim mounted; if it cannot be written, the timer is all that is lost.
  }
}
