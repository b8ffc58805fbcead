/**
 * `ovroot diff` against the real kernel: changes are made through a mounted
 * overlay, the merged view is compared with the lower while mounted (the
 * oracle), and after unmounting the diff computed from the upper alone must
 * say exactly the same, under every mount option set a device may use.
 */
import t from 'tap'
import * as fs from 'node:fs'
import { setXattr } from '../src/sys/libc.js'
import { diffJson, MOUNT_VARIANTS, mountOverlay, oracle, scratch, snapshot, unmount } from './helpers/overlay.js'
import {
  random,
  randomLower,
  randomOperation,
  STANDARD_LOWER,
  STANDARD_OPERATIONS,
  writeTree,
} from './helpers/mutate.js'

for (const [variant, options] of Object.entries(MOUNT_VARIANTS)) {
  await t.test(`every kind of change, ${variant}`, async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((name) => `${s.dir}/${name}`) as [
      string,
      string,
      string,
      string,
    ]
    writeTree(lower, STANDARD_LOWER)
    setXattr(`${lower}/etc/profile`, 'user.tag', Buffer.from('lower'))
    fs.mkdirSync(upper)
    fs.mkdirSync(work)
    mountOverlay(merged, [lower], upper, work, options)
    for (const [name, operation] of Object.entries(STANDARD_OPERATIONS)) {
      try {
        operation(merged)
      } catch (error) {
        t.fail(`operation "${name}" failed: ${String(error)}`)
      }
    }
    const expected = oracle(snapshot(merged), snapshot(lower))
    unmount(merged)
    t.same(diffJson([lower], upper), expected, 'diff of the upper equals the merged-view comparison')

    const byPath = new Map(expected.map((change) => [change.path, change.change]))
    t.equal(byPath.get('/etc/config/network'), 'modified', 'the oracle sees an append')
    t.equal(byPath.get('/etc/passwd'), 'metadata', 'the oracle sees a chmod')
    t.equal(byPath.get('/usr/bin/tool'), 'metadata', 'a file capability added is a metadata change')
    t.equal(
      byPath.get('/etc/hosts.allow'),
      'metadata',
      'a POSIX ACL added is a metadata change, the mode being the same',
    )
    t.equal(byPath.get('/usr/share/doc'), 'deleted', 'a deleted directory is one entry')
    t.notOk(byPath.has('/usr/share/doc/readme'), 'its contents are implied')
    for (const unchanged of [
      '/etc/config/system',
      '/etc/shells',
      '/etc/group',
      '/etc/protocols',
      '/etc/init.d/network',
    ]) {
      t.notOk(byPath.has(unchanged), `${unchanged} was copied up but is unchanged`)
    }
  })

  await t.test(`randomised changes, ${variant}`, async (t) => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const s = scratch()
      const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((name) => `${s.dir}/${name}`) as [
        string,
        string,
        string,
        string,
      ]
      const next = random(seed * 7919 + variant.length)
      fs.mkdirSync(lower)
      randomLower(lower, next)
      fs.mkdirSync(upper)
      fs.mkdirSync(work)
      mountOverlay(merged, [lower], upper, work, options)
      const log: string[] = []
      for (let i = 0; i < 30; i++) {
        try {
          log.push(randomOperation(merged, next, i))
        } catch (error) {
          log.push(`(failed: ${String(error)})`)
        }
      }
      const expected = oracle(snapshot(merged), snapshot(lower))
      unmount(merged)
      t.same(diffJson([lower], upper), expected, `seed ${seed}: ${log.join('; ')}`)
      s.cleanup()
    }
  })
}
