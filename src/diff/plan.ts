/**
 * Splits a diff into tasks that threads can walk independently: the top of
 * the tree is compared here, breadth first, until enough directories are
 * pending. Each task is one pending directory's subtree together with the
 * output that comes before it in path order, so printing the tasks in order
 * prints exactly what one depth-first walk prints.
 */
import type { Change, DiffVisitor, OverlayDiff, PendingDir } from '../overlay/diff.js'

export interface Task {
  /** Output of the entries that come before this subtree and after the previous one. */
  readonly before: string
  readonly dir: PendingDir
}

export interface Plan {
  readonly tasks: Task[]
  /** Output after the last task. */
  readonly after: string
}

type Item = string | PendingDir

/**
 * Expands every pending directory, level by level, until at least `target`
 * are pending or none is left. Whole levels, because a directory's size is
 * unknown until it is walked: tasks from one level tend to be alike, and
 * alike tasks share out evenly between threads.
 */
export function planTasks(diff: OverlayDiff, target: number, print: (change: Change) => string): Plan {
  let items = visit((visitor) => diff.start(visitor), print)
  while (items.some(isDir) && items.filter(isDir).length < target) {
    items = items.flatMap((item) => (isDir(item) ? visit((visitor) => diff.expand(item, visitor), print) : [item]))
  }
  return fold(items)
}

/**
 * The same output as `plan`, with every task's directory expanded one level:
 * finer tasks, for when more threads join. The first task's `before` must
 * not have been printed yet.
 */
export function splitTasks(diff: OverlayDiff, plan: Plan, print: (change: Change) => string): Plan {
  const items = plan.tasks.flatMap((task): Item[] => [task.before, ...visit((visitor) => diff.expand(task.dir, visitor), print)])
  const split = fold(items)
  return { tasks: split.tasks, after: split.after + plan.after }
}

function visit(walk: (visitor: DiffVisitor) => void, print: (change: Change) => string): Item[] {
  const items: Item[] = []
  walk({ change: (change) => items.push(print(change)), descend: (dir) => items.push(dir) })
  return items
}

function isDir(item: Item): item is PendingDir {
  return typeof item !== 'string'
}

function fold(items: Item[]): Plan {
  const tasks: Task[] = []
  let before = ''
  for (const item of items) {
    if (isDir(item)) {
      tasks.push({ before, dir: item })
      before = ''
    } else {
      before += item
    }
  }
  return { tasks, after: before }
}
