/**
 * Everything ovroot keeps in the run directory, [boot] run_dir (RAM: gone at
 * the next boot, and writing it costs the flash nothing):
 *
 *   status.json   the boot record (state/boot-record.ts)
 *   progress      what boot is doing, for the shim (sys/progress.ts)
 *   ram/          the RAM upper and work directory of a RAM, degraded or synced boot
 *   fallback/, firmware-only/
 *                 the RAM upper of a boot whose overlay the kernel refused (boot/agent.ts)
 *   staging.lock/ held by the one command staging a change (sync, reset, restore, --cancel), with its pid (pending/lock.ts)
 *   sync.json     what status shows about syncing (sync/stats.ts)
 */
export const statusPath = (runDir: string): string => `${runDir}/status.json`
export const progressPath = (runDir: string): string => `${runDir}/progress`
export const ramDir = (runDir: string, purpose: 'ram' | 'fallback' | 'firmware-only' = 'ram'): string =>
  `${runDir}/${purpose}`
export const stagingLockPath = (runDir: string): string => `${runDir}/staging.lock`
export const syncStatsPath = (runDir: string): string => `${runDir}/sync.json`
