/**
 * `ovroot diff --conflicts [--patch]`: the conflicts of the last upgrade,
 * each with its three sides: base (the old firmware's: bytes `upgrade-check`
 * saved, else only its digest), user (the upper's copy, or the copy saved
 * when the firmware's version won) and firmware (the running lower's).
 */
import * as nodePath from 'node:path'
import { loadConfig } from '../config/load.js'
import { unifiedDiff, TEXT_LIMIT } from '../diff/patch.js'
import { ExitCode, type ExitStatus } from '../errors.js'
import { bytePathBuffer, bytesOf, type BytePath } from '../names.js'
import { flashLayout, upgradeDir, upperPath, type FlashLayout } from '../state/flash.js'
import { hostTreeReader, readAt, statPath } from '../sys/fs.js'
import { readUpgradeReport, savedPath, type ReportedEntry } from './record.js'

export interface ConflictsOptions {
  configFile: string | undefined
  lower: string | undefined
  upper: string | undefined
  patch: boolean
  json: boolean
}

export function runConflicts(options: ConflictsOptions): ExitStatus {
  const config = loadConfig(options.configFile)
  const lower = bytesOf((options.lower ?? config.overlay.lower[0] ?? '/rom').replace(/\/+$/, ''))
  const layout: FlashLayout = options.upper
    ? { root: nodePath.dirname(options.upper), upperName: nodePath.basename(options.upper) }
    : flashLayout(config)
  const report = readUpgradeReport(layout)
  const conflicts = report?.entries.filter((entry) => entry.class === 'conflict') ?? []
  const out: (string | Buffer)[] = []
  if (!report) out.push(`no upgrade recorded on ${layout.root}\n`)
  for (const entry of conflicts) {
    const sides = sidesOf(layout, lower, entry)
    if (options.json) out.push(`${JSON.stringify({ ...entry, user: sides.user, firmware: sides.firmware })}\n`)
    else if (options.patch) out.push(patchOf(entry, sides))
    else out.push(`${lineOf(entry, sides)}\n`)
  }
  // A patch is bytes (a file's lines as they are): text goes out as its UTF-8.
  process.stdout.write(Buffer.concat(out.map((part) => (typeof part === 'string' ? Buffer.from(part) : part))))
  return ExitCode.ok
}

interface Sides {
  base: BytePath | undefined
  user: BytePath | undefined
  firmware: BytePath | undefined
}

/** A side there is something to show of: a file (its data) or a symlink (its target). */
const fileAt = (path: BytePath): BytePath | undefined => {
  const type = statPath(bytePathBuffer(path))?.type
  return type === 'file' || type === 'symlink' ? path : undefined
}

function sidesOf(layout: FlashLayout, lower: BytePath, entry: ReportedEntry): Sides {
  return {
    base: entry.savedBase ? fileAt(savedPath(layout, 'base', entry.bytes)) : undefined,
    user: fileAt(
      entry.savedUser
        ? `${bytesOf(upgradeDir(layout))}/${entry.savedUser}`
        : `${bytesOf(upperPath(layout))}/${entry.bytes}`,
    ),
    firmware: fileAt(`${lower}/${entry.bytes}`),
  }
}

function lineOf(entry: ReportedEntry, sides: Sides): string {
  const base = sides.base ? 'base saved' : entry.base ? `base sha256 ${entry.base.slice(0, 12)} (not saved)` : 'no base'
  const user = entry.savedUser
    ? 'user’s saved (the firmware’s won)'
    : entry.firmwareWon
      ? 'the firmware’s mode and owner won (a directory: what is below it stays)'
      : 'user’s kept'
  const firmware = sides.firmware ? 'firmware’s in the lower' : 'firmware removed it'
  return `conflict  ${entry.path}: ${base}; ${user}; ${firmware}${entry.reason ? `; ${entry.reason}` : ''}`
}

/** A file's data; a symlink's target, as a line (a link is never followed). */
function contentOf(path: BytePath | undefined): Buffer {
  if (!path) return Buffer.alloc(0)
  if (statPath(bytePathBuffer(path))?.type === 'symlink')
    return Buffer.from(`${hostTreeReader.readLink(path)}\n`, 'latin1')
  return readAt(bytePathBuffer(path), 0, TEXT_LIMIT + 1)
}

/** Three-way when the base is saved (base→user, base→firmware), else two-way (firmware→user). */
function patchOf(entry: ReportedEntry, sides: Sides): Buffer {
  const name = entry.path.slice(1)
  const label = (side: string, path: BytePath | undefined): string => (path ? `${side}/${name}` : '/dev/null')
  const pairs: [string, BytePath | undefined, string, BytePath | undefined][] = sides.base
    ? [
        ['base', sides.base, 'user', sides.user],
        ['base', sides.base, 'firmware', sides.firmware],
      ]
    : [['firmware', sides.firmware, 'user', sides.user]]
  const parts: Buffer[] = [
    Buffer.from(
      `conflict ${entry.path}${sides.base ? '' : ` (no base saved; old firmware sha256 ${entry.base ?? 'unknown'})`}\n`,
    ),
  ]
  for (const [fromSide, from, toSide, to] of pairs)
    parts.push(
      Buffer.from(`diff ${fromSide} ${toSide}\n`),
      unifiedDiff(label(fromSide, from), label(toSide, to), contentOf(from), contentOf(to)),
    )
  return Buffer.concat(parts)
}
