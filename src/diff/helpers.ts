/**
 * Helper threads for `ovroot diff`. A thread needs tens of milliseconds to
 * boot and load its code, as long as the command line takes to parse, so the
 * command line starts the helpers first (prestartHelpers) and the walk claims
 * them when it has work.
 */
import { availableParallelism } from 'node:os'
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads'

const MAX_HELPERS = 3

/** With `--threads auto`: one helper per core beyond this one's. */
export function helpersForCores(): number {
  return Math.min(availableParallelism() - 1, MAX_HELPERS)
}

export class HelperThread {
  readonly port: MessagePort
  private readonly worker: Worker
  private loaded = false
  private stopping = false
  private failure: string | undefined
  private onFailure: ((message: string) => void) | undefined

  constructor() {
    const { port1, port2 } = new MessageChannel()
    // The build puts the helper beside the chunk this code is bundled into.
    this.worker = new Worker(new URL('./diff-helper.js', import.meta.url), { workerData: { port: port2 }, transferList: [port2] })
    // A helper keeps the process alive until it has loaded its code: ending the
    // process while a thread is inside dlopen of the libc binding aborts Node.
    // After that, idle or finished helpers never hold the process (the walk
    // waits on the port instead).
    this.worker.once('message', () => {
      this.loaded = true
      this.worker.unref()
      if (this.stopping) void this.worker.terminate()
    })
    this.worker.on('error', (error) => this.fail(`diff helper thread failed: ${error.message}`))
    this.worker.on('exit', (code) => {
      if (code !== 0) this.fail(`diff helper thread exited with status ${code}`)
    })
    this.port = port1
  }

  watch(onFailure: (message: string) => void): void {
    this.onFailure = onFailure
    if (this.failure) onFailure(this.failure)
  }

  /** Stop it now, or as soon as it has loaded (see the constructor). */
  stop(): void {
    this.onFailure = undefined
    this.stopping = true
    this.port.close()
    if (this.loaded) void this.worker.terminate()
  }

  private fail(message: string): void {
    this.failure ??= message
    this.onFailure?.(message)
  }
}

const idle: HelperThread[] = []

export function prestartHelpers(count: number): void {
  while (idle.length < count) idle.push(new HelperThread())
}

/** `count` helpers, those already started first; started ones beyond `count` are stopped. */
export function claimHelpers(count: number): HelperThread[] {
  const claimed = idle.splice(0, count)
  while (claimed.length < count) claimed.push(new HelperThread())
  for (const unused of idle.splice(0)) unused.stop()
  return claimed
}
