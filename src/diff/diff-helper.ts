/**
 * A helper thread of `ovroot diff`. It loads its code and binds libc as soon
 * as it starts, then waits for its work: the diff to rebuild and the tasks to
 * claim from the shared counter. Each task's output goes to the main thread
 * in pieces (threads.ts has the rules that bound memory).
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads'
import { ExitCode, OvrootError } from '../errors.js'
import { loadLibc } from '../sys/libc.js'
import { hostTreeReader } from '../sys/fs.js'
import { openDiff, type OpenDiff } from './open.js'
import { ChangeCounter, loadRenderer, OUTPUT_CHUNK, type Renderer } from './report.js'
import { decodeTask, MESSAGES_SENT, NEXT_TASK, PAUSE_BYTES, PRINTING_TASK, WINDOW, type HelperMessage, type HelperWork, type TaskForThreads } from './threads.js'

const { port } = workerData as { port: MessagePort }
loadLibc()
parentPort?.postMessage('loaded')

port.once('message', (work: HelperWork) => {
  const control = new Int32Array(work.control)
  const send = (message: HelperMessage): void => {
    port.postMessage(message)
    Atomics.add(control, MESSAGES_SENT, 1)
    Atomics.notify(control, MESSAGES_SENT)
  }
  loadRenderer(work.format, work.colour, hostTreeReader)
    .then((render) => new HelperWalk(openDiff(work.request), render, control, send).walkClaimedTasks(work.tasks))
    .catch((error: unknown) => {
      const failure = error instanceof OvrootError ? error : new OvrootError('EINTERNAL', ExitCode.internal, `diff helper: ${error instanceof Error ? error.message : String(error)}`)
      send({ kind: 'failed', code: failure.code, exitStatus: failure.exitStatus, message: failure.message })
    })
    .finally(() => port.close())
})

class HelperWalk {
  constructor(
    private readonly opened: OpenDiff,
    private readonly render: Renderer,
    private readonly control: Int32Array,
    private readonly send: (message: HelperMessage) => void,
  ) {}

  walkClaimedTasks(tasks: TaskForThreads[]): void {
    for (;;) {
      this.waitUntil(() => {
        const next = Atomics.load(this.control, NEXT_TASK)
        return next >= tasks.length || next < Atomics.load(this.control, PRINTING_TASK) + WINDOW
      })
      const index = Atomics.add(this.control, NEXT_TASK, 1)
      const task = tasks[index]
      if (!task) return
      this.walkTask(index, task)
    }
  }

  private walkTask(index: number, task: TaskForThreads): void {
    const counter = new ChangeCounter()
    let piece: string[] = []
    let size = 0
    let sent = 0
    this.opened.diff.walk(decodeTask(task, this.opened), (change) => {
      counter.add(change)
      const text = this.render(change)
      if (text === '') return
      piece.push(text)
      size += text.length
      if (size < OUTPUT_CHUNK) return
      this.send({ kind: 'piece', task: index, text: piece.join('') })
      sent += size
      piece = []
      size = 0
      if (sent >= PAUSE_BYTES) this.waitUntil(() => Atomics.load(this.control, PRINTING_TASK) >= index)
    })
    this.send({ kind: 'done', task: index, text: piece.join(''), counts: counter.counts })
  }

  /** Sleep on the printed-task slot, which the main thread bumps and notifies. */
  private waitUntil(ready: () => boolean): void {
    for (;;) {
      const seen = Atomics.load(this.control, PRINTING_TASK)
      if (ready()) return
      Atomics.wait(this.control, PRINTING_TASK, seen, 100)
    }
  }
}
