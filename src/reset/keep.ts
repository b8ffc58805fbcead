/**
 * The keep list of a factory reset: [reset] keep, OpenWrt's list files
 * (/etc/sysupgrade.conf, /lib/upgrade/keep.d/*: one path or glob a line, #
 * comments) and --keep. Existing OpenWrt setups work unchanged.
 */
import type { Config } from '../config/schema.js'
import { globToRegExp } from '../glob.js'
import { bytesOf, type BytePath } from '../names.js'

/** Read access to the merged view, live (/) or reconstructed offline at boot. */
export interface ViewReader {
  /** Paths and names are bytes (names.ts `BytePath`); a keep list's content is text. */
  readFile(path: BytePath): string | undefined
  /** Names in a directory, or undefined when it is not one. */
  list(path: BytePath): BytePath[] | undefined
}

export function parseKeepList(text: string): string[] {
  return (
    text
      .split('\n')
      // As sysupgrade reads them: a comment starts a word, and a # inside a name is part of it.
      .map((line) => line.replace(/(^|\s)#.*/, '').trim())
      .filter((line) => line.startsWith('/'))
  )
}

export function collectKeepPatterns(config: Config, extra: readonly string[], view: ViewReader): string[] {
  const patterns = [...config.reset.keep, ...extra]
  for (const listText of config.reset.keep_lists) {
    const listPath = bytesOf(listText)
    const names = view.list(listPath)
    const files = names ? names.sort().map((name) => `${listPath}/${name}`) : [listPath]
    for (const file of files) patterns.push(...parseKeepList(view.readFile(file) ?? ''))
  }
  // Checked before any reset is committed: a pattern that cannot be matched would stop it at every run.
  return [...new KeepList([...new Set(patterns.map(normalisePattern))]).patterns]
}

/** `/etc//dropbear/` names what `/etc/dropbear` does (an upper's paths have single slashes). */
function normalisePattern(pattern: string): string {
  const single = pattern.replace(/\/{2,}/g, '/')
  return single.length > 1 ? single.replace(/\/$/, '') : single
}

export class KeepList {
  private readonly matchers: RegExp[]
  constructor(readonly patterns: readonly string[]) {
    // Patterns are text, an upper's names bytes: a pattern matches the bytes of its UTF-8 (`?` one byte).
    this.matchers = patterns.map((pattern) => globToRegExp(bytesOf(pattern)))
  }

  /** The path itself (bytes, names.ts `BytePath`) is named by the list (its whole subtree is then kept). */
  keeps(path: BytePath): boolean {
    return this.matchers.some((matcher) => matcher.test(path))
  }
}
