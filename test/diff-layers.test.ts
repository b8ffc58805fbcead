/**
 * Several lowers, some of them former uppers: whiteouts (char 0/0 and xattr),
 * opaque directories and absolute redirects inside lower layers must resolve
 * exactly as the kernel resolves them.
 */
import t from 'tap'
import * as fs from 'node:fs'
import { execFileSync } from 'node:child_process'
import { hostTreeReader } from '../src/sys/fs.js'
import { bytesOf } from '../src/names.js'
import { makeNode, setXattr } from '../src/sys/libc.js'
import { diffJson, mountOverlay, oracle, scratch, snapshot, unmount } from './helpers/overlay.js'
import { writeTree } from './helpers/mutate.js'

await t.test('two lowers holding whiteouts, opaque dirs and redirects', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const [top, bottom, upper, work, merged, lowerView] = ['top', 'bottom', 'upper', 'work', 'merged', 'lowerview'].map(
    (n) => `${s.dir}/${n}`,
  ) as [string, string, string, string, string, string]
  writeTree(bottom, {
    '/etc/a': 'a\n',
    '/etc/b': 'b\n',
    '/etc/xw/gone': 'hidden by an xattr whiteout\n',
    '/etc/xw/kept': 'kept\n',
    '/opaque/old': 'hidden by opaque\n',
    '/src/dir/file': 'moved by redirect\n',
    '/usr/share/x': 'x\n',
  })
  writeTree(top, { '/etc/c': 'c\n', '/opaque/new': 'new\n', '/moved/own': 'own\n', '/etc/xw/gone': '' })
  makeNode(`${top}/etc/b`, 'char', 0)
  setXattr(`${top}/etc/xw`, 'trusted.overlay.opaque', Buffer.from('x'))
  setXattr(`${top}/etc/xw/gone`, 'trusted.overlay.whiteout', Buffer.from(''))
  setXattr(`${top}/opaque`, 'trusted.overlay.opaque', Buffer.from('y'))
  setXattr(`${top}/moved`, 'trusted.overlay.redirect', Buffer.from('/src/dir'))

  mountOverlay(lowerView, [top, bottom], undefined, undefined, [])
  const lowerSnapshot = snapshot(lowerView)
  unmount(lowerView)
  t.notOk(lowerSnapshot.has('/etc/b'), 'the kernel honours the char-device whiteout')
  t.notOk(lowerSnapshot.has('/etc/xw/gone'), 'the kernel honours the xattr whiteout')
  t.notOk(lowerSnapshot.has('/opaque/old'), 'the kernel honours the opaque lower dir')
  t.ok(lowerSnapshot.has('/moved/file'), 'the kernel follows the absolute redirect')

  fs.mkdirSync(upper)
  fs.mkdirSync(work)
  mountOverlay(merged, [top, bottom], upper, work, ['redirect_dir=on'])
  // Copying up below a redirect that a lower layer holds leaves the kernel
  // with stale origins at the next mount; a deletion and an addition exercise
  // the same redirect resolution without a copy-up.
  fs.rmSync(`${merged}/moved/file`)
  fs.writeFileSync(`${merged}/moved/added`, 'added\n')
  fs.rmSync(`${merged}/etc/xw/kept`)
  fs.writeFileSync(`${merged}/etc/b`, 'b is back\n')
  fs.renameSync(`${merged}/opaque`, `${merged}/opaque2`)
  fs.rmSync(`${merged}/usr`, { recursive: true })
  const expected = oracle(snapshot(merged), lowerSnapshot)
  unmount(merged)
  t.same(diffJson([top, bottom], upper), expected)
  t.ok(expected.length >= 5, 'the scenario changes something')
})

await t.test('a copy of a device: upper and lower copied elsewhere keep their meaning', async (t) => {
  const s = scratch()
  t.teardown(() => s.cleanup())
  const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((n) => `${s.dir}/${n}`) as [
    string,
    string,
    string,
    string,
  ]
  writeTree(lower, { '/etc/config/network': 'lan\n', '/etc/passwd': 'root\n', '/usr/share/dir/a': 'a\n' })
  fs.mkdirSync(upper)
  fs.mkdirSync(work)
  mountOverlay(merged, [lower], upper, work, ['redirect_dir=on', 'metacopy=on'])
  fs.chmodSync(`${merged}/etc/passwd`, 0o600)
  fs.appendFileSync(`${merged}/etc/config/network`, 'wan\n')
  fs.renameSync(`${merged}/usr/share/dir`, `${merged}/usr/share/renamed`)
  const expected = oracle(snapshot(merged), snapshot(lower))
  unmount(merged)
  const copy = `${s.dir}/copy`
  fs.mkdirSync(copy)
  // cp -a keeps trusted.* xattrs and whiteouts when run as root.
  const { execFileSync } = await import('node:child_process')
  execFileSync('cp', ['-a', upper, `${copy}/upper`])
  execFileSync('cp', ['-a', lower, `${copy}/lower`])
  t.same(diffJson([`${copy}/lower`], `${copy}/upper`), expected)
})

await t.test(
  'a file replaced by a FIFO or a symlink after the walk is refused when read, never waited on or followed',
  async (t) => {
    const s = scratch()
    t.teardown(() => s.cleanup())
    writeTree(s.dir, { '/secret': 'outside\n', '/file': 'a\n' })
    execFileSync('mkfifo', [`${s.dir}/fifo`])
    fs.symlinkSync(`${s.dir}/secret`, `${s.dir}/link`)
    for (const name of ['fifo', 'link']) {
      const path = bytesOf(`${s.dir}/${name}`)
      t.throws(() => hostTreeReader.readHead(path, 100), { code: 'ECHANGED' }, `${name}: readHead refuses`)
      t.throws(
        () => hostTreeReader.sameContent(path, bytesOf(`${s.dir}/file`), 2),
        { code: 'ECHANGED' },
        `${name}: sameContent refuses`,
      )
    }
    t.equal(hostTreeReader.readHead(bytesOf(`${s.dir}/file`), 100).toString(), 'a\n', 'a regular file is read')
  },
)
