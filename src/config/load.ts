/**
 * Reads an INI configuration over the defaults and validates every key: an
 * unknown section or key, or a bad value, is an error naming the file, the
 * section, the key and what was expected.
 */
import { parse } from 'ini'
import { configError } from '../errors.js'
import { parseKernelArguments, type KernelArguments } from '../state/cmdline.js'
import { readTextFile, readTextFileIfExists } from '../sys/fs.js'
import { defaultConfig, SCHEMA, yesNo, type Config } from './schema.js'

export const DEVICE_CONFIG = '/etc/ovroot.conf'

/**
 * `explicit` (from --config) must exist; the device's own file may be absent,
 * which means "all defaults".
 */
export function loadConfig(explicit?: string): Config {
  const file = explicit ?? DEVICE_CONFIG
  const text = explicit ? readTextFile(explicit) : readTextFileIfExists(DEVICE_CONFIG)
  const config = text === undefined ? defaultConfig() : parseConfig(text, file)
  // ovroot.SECTION.KEY=VALUE on the kernel command line holds for every command, not only boot.
  // Boot refuses a bad one (and the shim says so); here it is passed over, so that status can still tell.
  for (const [key, value] of parseKernelArguments(readTextFileIfExists('/proc/cmdline') ?? '').overrides) {
    try {
      applyOverride(config, 'kernel command line', key, value)
    } catch {
      // reported by boot
    }
  }
  return config
}

export function parseConfig(withMark: string, file: string): Config {
  // A byte order mark (Windows editors write one) would make the first section a key outside any section.
  const text = withMark.replace(/^\uFEFF/, '')
  refuseWhatIniHides(text, file)
  const config = defaultConfig()
  const document: Record<string, unknown> = parse(text)
  for (const [sectionName, section] of Object.entries(document)) {
    if (!isSectionName(sectionName)) {
      if (typeof section !== 'object' || section === null)
        throw configError(
          `${file}: ${sectionName}: a key outside any section; expected it under one of ${sectionNames().join(', ')}`,
        )
      throw configError(`${file}: [${sectionName}]: unknown section; expected one of ${sectionNames().join(', ')}`)
    }
    for (const [key, raw] of Object.entries(section as Record<string, unknown>))
      setKey(config, file, sectionName, key, raw)
  }
  return config
}

/**
 * The ini parser keeps the last of two equal keys and cuts a value at any `;`
 * or `#`: `keep = /a` then `keep = /b`, or `keep = /root/notes#1 /etc/x`, would
 * silently keep less than the file says. A comment after a space is a comment;
 * one inside a word, or a key given twice in a section, is refused.
 */
function refuseWhatIniHides(text: string, file: string): void {
  let section = ''
  const seen = new Set<string>()
  for (const line of text.split(/\r?\n/)) {
    const header = /^\s*\[(.*)\]\s*$/.exec(line)
    if (header) section = header[1] ?? ''
    const assignment = /^\s*([^;#[\s=][^=]*?)\s*=\s*(.*)$/.exec(line)
    if (header || !assignment) continue
    const [, key = '', value = ''] = assignment
    const where = `${file}: ${section ? `[${section}] ` : ''}${key}`
    if (seen.has(`${section}\0${key}`)) throw configError(`${where}: given twice; expected once`)
    seen.add(`${section}\0${key}`)
    if (!/^["']/.test(value) && /[^\s\\][;#]/.test(value))
      throw configError(
        `${where} = ${value}: expected no ; or # inside a word (they start a comment: escape them as \\; or \\#)`,
      )
  }
}

/**
 * Whether the kernel command line forces a factory reset: ovroot.reset, bare or with yes or no in the words the
 * configuration takes; anything else (an empty value too) is refused as a bad override is (a reset button must not be silently ignored).
 */
export function forcedReset(kernel: KernelArguments): boolean {
  if (kernel.reset === undefined) return false
  // An empty value (`ovroot.reset=`) is most likely a bootloader template left unfilled: refused, never a reset.
  const value = kernel.reset === true ? true : yesNo.parse(kernel.reset)
  if (value === undefined)
    throw configError(`kernel command line: ovroot.reset=${kernel.reset}: expected ${yesNo.expected}`)
  return value
}

/** Apply `section.key=value` (kernel command line `ovroot.section.key=value`). */
export function applyOverride(config: Config, origin: string, dottedKey: string, value: string): void {
  const [sectionName, key, ...rest] = dottedKey.split('.')
  if (!sectionName || !key || rest.length > 0 || !isSectionName(sectionName)) {
    throw configError(`${origin}: ${dottedKey}: unknown setting; expected section.key such as flash.device`)
  }
  setKey(config, origin, sectionName, key, value)
}

function setKey(config: Config, file: string, sectionName: keyof Config, key: string, raw: unknown): void {
  const specs: Record<string, { expected: string; parse(raw: string): unknown }> = SCHEMA[sectionName]
  const spec = specs[key]
  if (!spec)
    throw configError(`${file}: [${sectionName}] ${key}: unknown key; expected one of ${Object.keys(specs).join(', ')}`)
  // The ini parser gives true/false unquoted, and a number from a single-quoted '30': the text the user wrote.
  const text =
    typeof raw === 'boolean' || typeof raw === 'number' ? String(raw) : typeof raw === 'string' ? raw.trim() : undefined
  const value = text === undefined ? undefined : spec.parse(text)
  if (value === undefined)
    throw configError(`${file}: [${sectionName}] ${key} = ${describe(raw)}: expected ${spec.expected}`)
  ;(config[sectionName] as Record<string, unknown>)[key] = value
}

function describe(raw: unknown): string {
  return typeof raw === 'string' || typeof raw === 'boolean' ? String(raw) : JSON.stringify(raw)
}

function sectionNames(): string[] {
  return Object.keys(SCHEMA).map((name) => `[${name}]`)
}

function isSectionName(name: string): name is keyof Config {
  return Object.hasOwn(SCHEMA, name)
}
