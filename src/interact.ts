/** What a command asks the user, and the reboot a user asks for (--reboot). */
import { createInterface } from 'node:readline/promises'
import { ExitCode, OvrootError } from './errors.js'
import { runTool } from './sys/run.js'

export async function confirm(what: string): Promise<void> {
  if (!process.stdin.isTTY)
    throw new OvrootError('EABORTED', ExitCode.aborted, 'not confirmed: input is not a terminal; pass --yes to confirm')
  const prompt = createInterface({ input: process.stdin, output: process.stderr })
  const answer = await prompt.question(`${what}\nContinue? [y/N] `)
  prompt.close()
  if (!/^y(es)?$/i.test(answer.trim())) throw new OvrootError('EABORTED', ExitCode.aborted, 'cancelled: not confirmed')
}

export async function rebootNow(): Promise<void> {
  process.stdout.write('ovroot: rebooting\n')
  await runTool('reboot', [])
}
