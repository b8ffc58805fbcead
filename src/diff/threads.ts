/**
 * Walks a plan's tasks on this thread and on helper threads, and prints their
 * output in task order: exactly what one thread walking depth first prints.
 *
 * Every walker claims the next task from a shared counter. Output of the task
 * being printed goes straight out; output of a later task waits in memory
 * until its turn. Two rules bound that memory whatever the size of the upper:
 * no task is claimed more than WINDOW tasks past the one being printed, and a
 * walker whose task is not yet due stops once it holds PAUSE_BYTES of output
 * until it is. The walker of the task being printed never waits, so the walk
 * always progresses.
 *
 * With `auto`, this thread walks, and helpers (one per further core) join
 * when the walk is projected to last long enough to repay starting them: a
 * thread takes tens of milliseconds to boot and hundreds more of CPU to
 * compile its code, which a short walk never wins back. With a count of 1
 * this thread walks alone; with a larger count, that many helpers walk from
 * the start and this thread only prints.
 */
import { receiveMessageOnPort } from 'node:worker_threads'
import { ExitCode, OvrootError, type ExitStatus } from '../errors.js'
import type { Change, PendingDir } from '../overlay/diff.js'
import type { EntryWire } from '../overlay/stack.js'
import type { CheckedDiffRequest, OpenDiff } from './open.js'
import { splitTasks, type Plan } from './plan.js'
import { helpersForCores, HelperThread } from './helpers.js'
import type { BufferedOutput, ChangeCounter, ChangeCounts, DiffFormat } from './report.js'

/** Slots of the shared control array. */
export const NEXT_TASK = 0
export const PRINTING_TASK = 1
/** Bumped by a helper after each message, for this thread to sleep on. */
export const MESSAGES_SENT = 2
export const WINDOW = 16
export const PAUSE_BYTES = 256 * 1024
/**
 * Auto mode measures this thread's pace between these two points of the
 * walk, then starts helpers if at that pace the rest would last
 * HELPERS_REPAY_MS. A helper repays its start once about a second of walking
 * is left (measured on two cores); the pace this early is still about half
 * the steady one, because the code is not compiled yet, hence two seconds.
 */
const PACE_FROM_MS = 50
const PACE_TO_MS = 100
const HELPERS_REPAY_MS = 2000
/** How many changes this thread walks between looks at the helpers' messages. */
const CHANGES_BETWEEN_LOOKS = 256

/** What a helper needs to rebuild the same diff, and the tasks to claim from. */
export interface HelperWork {
  request: CheckedDiffRequest
  format: DiffFormat
  colour: boolean
  control: SharedArrayBuffer
  tasks: TaskForThreads[]
}

export interface TaskForThreads {
  path: string
  merged: EntryWire
  lower: EntryWire | undefined
}

export function encodeTask(dir: PendingDir, { merged, lower }: OpenDiff): TaskForThreads {
  return { path: dir.path, merged: merged.toWire(dir.merged), lower: dir.lower && lower.toWire(dir.lower) }
}

export function decodeTask(task: TaskForThreads, { merged, lower }: OpenDiff): PendingDir {
  return { path: task.path, merged: merged.fromWire(task.merged), lower: task.lower && lower.fromWire(task.lower) }
}

export type HelperMessage =
  | { kind: 'piece'; task: number; text: string }
  | { kind: 'done'; task: number; text: string; counts: ChangeCounts }
  | { kind: 'failed'; code: string; exitStatus: ExitStatus; message: string }

/** `auto`, or how many threads walk: 1 is this thread alone, more are helpers while this thread prints. */
export type ThreadChoice = 'auto' | number

export interface WalkSetup {
  opened: OpenDiff
  request: CheckedDiffRequest
  format: DiffFormat
  colour: boolean
  /** Renders a change, counting it. */
  print: (change: Change) => string
  counter: ChangeCounter
  output: BufferedOutput
  threads: ThreadChoice
}

/** Output of a task that is not being printed yet. */
interface WaitingOutput {
  pieces: string[]
  done: boolean
}

export class ThreadedWalk {
  private readonly control = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT))
  private readonly helpers: HelperThread[] = []
  private readonly waiting = new Map<number, WaitingOutput>()
  private tasks: Plan['tasks'] = []
  private after = ''
  private printing = 0
  private walkingHere: boolean
  private started = 0
  private failure: OvrootError | undefined
  private walkedHere = 0
  private paceMark: { at: number; walked: number } | undefined
  private wake: (() => void) | undefined

  /** Explicit helpers start at once, so that they boot while the plan is made. */
  constructor(private readonly setup: WalkSetup) {
    this.walkingHere = setup.threads === 'auto' || setup.threads === 1
    if (typeof setup.threads === 'number' && setup.threads > 1) this.startHelpers(setup.threads)
  }

  async run(makePlan: () => Plan): Promise<void> {
    this.started = performance.now()
    try {
      const plan = makePlan()
      this.tasks = plan.tasks
      this.after = plan.after
      this.assign(this.helpers)
      this.setup.output.push(this.tasks[0]?.before ?? '')
      while (this.printing < this.tasks.length) {
        this.receiveWaiting()
        if (this.failure) throw this.failure
        if (this.printing >= this.tasks.length) break
        const index = this.walkingHere ? this.claim() : undefined
        if (index === undefined) {
          await new Promise<void>((resolve) => (this.wake = resolve))
          continue
        }
        if (index >= this.tasks.length) this.walkingHere = false
        else this.walkHere(index)
      }
      this.setup.output.push(this.after)
    } finally {
      this.close()
    }
  }

  /** For OVROOT_DEBUG: how the work was shared. */
  describe(): string {
    const ms = (performance.now() - this.started).toFixed(0)
    return `diff walked ${this.tasks.length} tasks in ${ms} ms: ${this.walkedHere} on the main thread, ${this.tasks.length - this.walkedHere} on ${this.helpers.length} helper threads`
  }

  /** The next task, unless it lies beyond the window (then wait for printing to move). */
  private claim(): number | undefined {
    if (Atomics.load(this.control, NEXT_TASK) >= this.printing + WINDOW) return undefined
    return Atomics.add(this.control, NEXT_TASK, 1)
  }

  private walkHere(index: number): void {
    const task = this.tasks[index]
    if (!task) return
    const { print, output } = this.setup
    const held: string[] = []
    let heldBytes = 0
    let due = index === this.printing
    let sinceLook = 0
    this.setup.opened.diff.walk(task.dir, (change) => {
      const text = print(change)
      if (due) output.push(text)
      else {
        held.push(text)
        heldBytes += text.length
      }
      if (due || ++sinceLook < CHANGES_BETWEEN_LOOKS) return
      sinceLook = 0
      this.receiveWaiting()
      if (this.failure) throw this.failure
      if (this.printing !== index && heldBytes >= PAUSE_BYTES) this.sleepUntilDue(index)
      if (this.printing === index) {
        for (const text of held.splice(0)) output.push(text)
        due = true
      }
    })
    this.walkedHere++
    if (due || this.printing === index) {
      for (const text of held) output.push(text)
      this.finishPrinting(index)
    } else {
      this.waiting.set(index, { pieces: held, done: true })
    }
    this.startHelpersIfLong()
  }

  private startHelpersIfLong(): void {
    if (this.setup.threads !== 'auto' || this.helpers.length > 0) return
    const now = performance.now()
    if (now - this.started < PACE_FROM_MS) return
    this.paceMark ??= { at: now, walked: this.walkedHere }
    if (now - this.paceMark.at < PACE_TO_MS - PACE_FROM_MS) return
    const msPerTask = (now - this.paceMark.at) / Math.max(this.walkedHere - this.paceMark.walked, 1)
    const unclaimed = this.tasks.length - Atomics.load(this.control, NEXT_TASK)
    if (unclaimed < 1 || msPerTask * unclaimed < HELPERS_REPAY_MS) return
    this.splitUnclaimed()
    const count = Math.min(helpersForCores(), this.tasks.length - this.printing)
    if (count > 0) this.assign(this.startHelpers(count))
  }

  /**
   * Tasks sized for one thread are too coarse to share: a helper with a task
   * that is not due soon would pause. Only this thread has walked so far, so
   * every task from the one being printed on is unclaimed, and the first one's
   * `before` is already out.
   */
  private splitUnclaimed(): void {
    const rest = { tasks: this.tasks.slice(this.printing), after: this.after }
    const [first] = rest.tasks
    if (first) rest.tasks[0] = { before: '', dir: first.dir }
    const split = splitTasks(this.setup.opened.diff, rest, this.setup.print)
    this.tasks = [...this.tasks.slice(0, this.printing), ...split.tasks]
    this.after = split.after
    this.setup.output.push(this.tasks[this.printing]?.before ?? '')
  }

  /** Block (this thread holds a later task's output) until the helpers have printed up to it. */
  private sleepUntilDue(index: number): void {
    while (this.printing < index) {
      const seen = Atomics.load(this.control, MESSAGES_SENT)
      this.receiveWaiting()
      if (this.failure) throw this.failure
      if (this.printing >= index) return
      Atomics.wait(this.control, MESSAGES_SENT, seen, 100)
    }
  }

  /** The task being printed is complete: print on through the tasks that are, then what has come of the next. */
  private finishPrinting(index: number): void {
    this.waiting.delete(index)
    this.printing = index + 1
    while (this.printing < this.tasks.length) {
      this.setup.output.push(this.tasks[this.printing]?.before ?? '')
      const waiting = this.waiting.get(this.printing)
      if (!waiting) break
      for (const piece of waiting.pieces) this.setup.output.push(piece)
      waiting.pieces = []
      if (!waiting.done) break
      this.waiting.delete(this.printing)
      this.printing++
    }
    Atomics.store(this.control, PRINTING_TASK, this.printing)
    Atomics.notify(this.control, PRINTING_TASK)
  }

  private receive(message: HelperMessage): void {
    if (message.kind === 'failed') {
      this.failure ??= new OvrootError(message.code, message.exitStatus, message.message)
    } else {
      if (message.kind === 'done') this.setup.counter.merge(message.counts)
      if (message.task === this.printing) {
        this.setup.output.push(message.text)
        if (message.kind === 'done') this.finishPrinting(message.task)
      } else {
        const waiting = this.waiting.get(message.task) ?? { pieces: [], done: false }
        waiting.pieces.push(message.text)
        waiting.done = message.kind === 'done'
        this.waiting.set(message.task, waiting)
      }
    }
    this.wake?.()
  }

  /** Messages that arrived while this thread was busy: events are not delivered meanwhile. */
  private receiveWaiting(): void {
    for (const { port } of this.helpers) {
      for (let message = receiveMessageOnPort(port); message; message = receiveMessageOnPort(port)) this.receive(message.message as HelperMessage)
    }
  }

  private fail(message: string): void {
    this.failure ??= new OvrootError('EINTERNAL', ExitCode.internal, message)
    this.wake?.()
  }

  private startHelpers(count: number): HelperThread[] {
    const started = Array.from({ length: count }, () => new HelperThread())
    for (const helper of started) {
      helper.port.on('message', (message: HelperMessage) => this.receive(message))
      helper.watch((message) => this.fail(message))
      this.helpers.push(helper)
    }
    return started
  }

  private assign(helpers: HelperThread[]): void {
    if (helpers.length === 0) return
    const { request, format, colour } = this.setup
    const work: HelperWork = { request, format, colour, control: this.control.buffer as SharedArrayBuffer, tasks: this.tasks.map((task) => encodeTask(task.dir, this.setup.opened)) }
    for (const { port } of helpers) port.postMessage(work)
  }

  /** Helpers finish on their own once no task is left; after a failure they are stopped. */
  private close(): void {
    for (const helper of this.helpers) {
      if (this.failure) helper.stop()
      else helper.port.close()
    }
  }
}
