/**
 * The demo console as a person meets it: `qemu/vm boot` without --run, on a
 * real pseudo-terminal (util-linux `script`, which every Debian system has),
 * typed into and read back. Expectations wait on what the device prints, never
 * on how fast emulation is.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { VM } from './lab.js'

/** Long enough for a TCG boot on a loaded 2-core machine; only a dead device waits this long. */
const PATIENCE_MS = 600_000
/** CSI sequences (ovroot's colours on a terminal, the shell's cursor-position queries) and the firmware's terminal resets. */
// eslint-disable-next-line no-control-regex -- the escape character is what this matches
const ESCAPE_SEQUENCE = /\x1b(\[[0-9;?]*[A-Za-z]|c)/g

export class ConsoleSession {
  private readonly child: ChildProcess
  private output = ''
  private waiters: (() => void)[] = []
  readonly exited: Promise<number>

  constructor(args: string[]) {
    const command = ['env', '-u', 'NODE_OPTIONS', VM, 'boot', '--timeout', '900', ...args].map(quote).join(' ')
    this.child = spawn('script', ['--quiet', '--flush', '--return', '--command', command, '/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    const collect = (chunk: string): void => {
      this.output += chunk
      for (const wake of this.waiters.splice(0)) wake()
    }
    // Decoded as streams: a character whose bytes arrive in two reads is one character, not two U+FFFD.
    this.child.stdout?.setEncoding('utf8').on('data', collect)
    this.child.stderr?.setEncoding('utf8').on('data', collect)
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code ?? -1)))
  }

  /** Everything the console printed so far, as a person reads it: no carriage returns, colours or cursor queries. */
  get transcript(): string {
    return this.output.replace(/\r/g, '').replace(ESCAPE_SEQUENCE, '')
  }

  /** Waits until the console, from offset `from`, matches `pattern`; returns the offset after the match. */
  async waitFor(pattern: RegExp, from = 0): Promise<number> {
    const deadline = Date.now() + PATIENCE_MS
    for (;;) {
      const match = new RegExp(pattern.source, pattern.flags.replace('g', '') + 'g')
      match.lastIndex = from
      const found = match.exec(this.transcript)
      if (found) return found.index + found[0].length
      if (this.child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`the console never showed ${String(pattern)}; it ended with:\n${this.transcript.slice(-3000)}`)
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1000)
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  /** Types a line as a person would, Enter included. */
  type(text: string): void {
    this.child.stdin?.write(text)
  }

  kill(): void {
    this.child.kill('SIGKILL')
  }
}

function quote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`
}
