/**
 * inotify on every directory of a tree (fs.watch): one watch per directory, whose events already name
 * its files' changes, and a directory that appears later watched when its parent's event names it.
 * Events are bare hints, with no work per event beyond that: the caller rescans. chokidar, measured on a
 * 22,000-entry upper, re-read and stat'ed the directory of every event and held 100+ MiB doing so;
 * this holds a handle per directory (README, Performance).
 */
import * as fs from 'node:fs'
import { bytePathBuffer, byteString, type BytePath } from '../names.js'

export interface TreeWatch {
  close(): void
}

/** Watch `root`'s directories; `changed` on every event, `failed` once if a watch cannot be made (ENOSPC: the inotify limit). */
export function watchTree(root: string, changed: () => void, failed: (error: Error) => void): TreeWatch {
  /** Each watched directory's handle and inode: a path can come to name another directory (`mv conf.new conf`). */
  const watches = new Map<BytePath, { watch: fs.FSWatcher; ino: number }>()
  let closed = false
  const close = (): void => {
    closed = true
    for (const { watch } of watches.values()) watch.close()
    watches.clear()
  }
  const fail = (error: unknown): void => {
    if (closed) return
    close()
    failed(error instanceof Error ? error : new Error(String(error)))
  }
  /** A directory that vanished (renamed away or removed): its watches and its subtree's go; a renamed one is watched again under its new name. */
  const forget = (dir: BytePath): void => {
    for (const [path, { watch }] of watches)
      if (path === dir || path.startsWith(`${dir}/`)) {
        watch.close()
        watches.delete(path)
      }
  }
  const watchDir = (dir: BytePath): void => {
    if (closed || watches.has(dir)) return
    let entries: fs.Dirent<Buffer>[]
    try {
      const watch = fs.watch(bytePathBuffer(dir), { encoding: 'buffer', persistent: true }, (_event, name) => {
        changed()
        if (name) childEvent(`${dir}/${byteString(name)}`)
      })
      watch.on('error', (error) => (isGone(error) ? forget(dir) : fail(error)))
      watches.set(dir, { watch, ino: fs.lstatSync(bytePathBuffer(dir)).ino })
      entries = fs.readdirSync(bytePathBuffer(dir), { withFileTypes: true, encoding: 'buffer' })
    } catch (error) {
      // Gone between its parent's event and now: that event was the hint.
      if (isGone(error)) return forget(dir)
      return fail(error)
    }
    for (const entry of entries) if (entry.isDirectory()) watchDir(`${dir}/${byteString(entry.name)}`)
  }
  /** An event naming a child: a new directory (created, or renamed here with its subtree) is watched; a vanished one forgotten. */
  const childEvent = (child: BytePath): void => {
    let stats: fs.Stats
    try {
      stats = fs.lstatSync(bytePathBuffer(child))
    } catch (error) {
      if (isGone(error)) forget(child)
      else fail(error)
      return
    }
    if (!stats.isDirectory()) return
    // Another directory under a watched name: its watches are the old one's, now elsewhere.
    if (watches.get(child)?.ino !== stats.ino) forget(child)
    watchDir(child)
  }
  watchDir(byteString(Buffer.from(root, 'utf8')))
  return { close }
}

const isGone = (error: unknown): boolean =>
  error instanceof Error && 'code' in error && (error.code === 'ENOENT' || error.code === 'ENOTDIR')
