/** Helper threads for `ovroot diff`: starting, watching and stopping them. */
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
    // A helper's garbage is short-lived per-entry objects: a smaller young generation keeps its footprint down.
    const resourceLimits = { maxYoungGenerationSizeMb: 8 }
    this.worker = new Worker(new URL('./diff-helper.js', import.meta.url), { workerData: { port: port2 }, transferList: [port2], resourceLimits })
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
