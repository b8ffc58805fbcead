/** `ovroot.*` arguments of the kernel command line: config overrides and a forced reset. */
export interface KernelArguments {
  overrides: [string, string][]
  /** The value of the last ovroot.reset (config/load.ts `forcedReset` reads it); true when given bare, '' for `ovroot.reset=`. */
  reset?: string | true
}

export function parseKernelArguments(cmdline: string): KernelArguments {
  const result: KernelArguments = { overrides: [] }
  for (const word of cmdline.trim().split(/\s+/)) {
    if (!word.startsWith('ovroot.')) continue
    const [key = '', value] = word.slice('ovroot.'.length).split(/=(.*)/)
    if (key === 'reset') result.reset = value ?? true
    else result.overrides.push([key, (value ?? '').replace(/,/g, ' ')])
  }
  return result
}
