/** `ovroot.*` arguments of the kernel command line: config overrides and a forced reset. */
export interface KernelArguments {
  overrides: [string, string][]
  reset: boolean
}

export function parseKernelArguments(cmdline: string): KernelArguments {
  const result: KernelArguments = { overrides: [], reset: false }
  for (const word of cmdline.trim().split(/\s+/)) {
    if (!word.startsWith('ovroot.')) continue
    const [key = '', value = ''] = word.slice('ovroot.'.length).split(/=(.*)/)
    if (key === 'reset') result.reset = value === '1' || value === 'yes'
    else result.overrides.push([key, value.replace(/,/g, ' ')])
  }
  return result
}
