import { usageError } from './errors.js'

/**
 * Shell-style globs: * and ? stay within one component, ** crosses them, [..] is a class.
 * A class no regular expression can hold (`[z-a]`) is a usage error naming the pattern.
 */
export function globToRegExp(pattern: string): RegExp {
  let source = ''
  for (let i = 0; i < pattern.length; i++) {
    const char = pattern[i] ?? ''
    if (char === '*' && pattern[i + 1] === '*') {
      source += '.*'
      i++
    } else if (char === '*') source += '[^/]*'
    else if (char === '?') source += '[^/]'
    else if (char === '[') {
      const end = pattern.indexOf(']', i + 2)
      if (end < 0) source += '\\['
      else {
        source += `[${pattern
          .slice(i + 1, end)
          .replace(/^!/, '^')
          .replace(/\\/g, '\\\\')}]`
        i = end
      }
    } else source += char.replace(/[.+^${}()|\\]/g, '\\$&')
  }
  try {
    // dotAll: a name may hold a newline, and ** must cross it.
    return new RegExp(`^${source}$`, 's')
  } catch (error) {
    throw usageError(`${pattern}: not a valid glob (${(error as Error).message.replace(/^.*: /, '')})`)
  }
}
