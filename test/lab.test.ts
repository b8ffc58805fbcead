/** The device lab's own machinery, on the host: what a stopped test run leaves behind must not hold the next one up. */
import t from 'tap'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { spawnSync } from 'node:child_process'
import { takeBuildLock } from '../qemu/lab/build.js'

await t.test(
  'the image build lock: a dead holder, or none named after 10 s, is taken over, not waited out for 10 minutes',
  async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovroot-lab-lock-'))
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const lock = path.join(dir, 'build.lock')
    const gone = spawnSync('true').pid
    fs.mkdirSync(lock)
    fs.writeFileSync(path.join(lock, 'pid'), `${gone}\n`)
    takeBuildLock(lock)
    t.equal(fs.readFileSync(path.join(lock, 'pid'), 'utf8'), `${process.pid}\n`, 'a killed builder’s lock is taken')
    fs.rmSync(lock, { recursive: true })
    fs.mkdirSync(lock)
    const old = new Date(Date.now() - 60_000)
    fs.utimesSync(lock, old, old)
    takeBuildLock(lock)
    t.equal(fs.readFileSync(path.join(lock, 'pid'), 'utf8'), `${process.pid}\n`, 'one that never named its builder too')
  },
)
