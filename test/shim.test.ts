/**
 * init/ovroot-init's checks of an init before PID 1 execs it, run under the shells a device has (busybox sh, dash)
 * on crafted files. A file the kernel refuses with ENOEXEC must be refused (the shell would run it as a script and
 * exit: a panic), one it loads must be accepted (else the real init is skipped), and no check may hang.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { parseConfig } from '../src/config/load.js'

const shim = fs.readFileSync(new URL('../init/ovroot-init', import.meta.url), 'utf8')
// The functions, from file_bytes() to exec_init(), whose comment begins with the second 'PID 1 must never exit'.
const execInitAt = shim.lastIndexOf('# PID 1 must never exit')
const checks = shim.slice(shim.indexOf('\nfile_bytes()'), execInitAt)
const execInit = shim.slice(execInitAt, shim.indexOf('\n}\n', execInitAt) + 3)

/** A shell's command line: its program, then its arguments. */
type Shell = [string, ...string[]]
const shells = ([['busybox', 'sh'], ['dash']] satisfies Shell[]).filter(
  ([file]) => spawnSync('sh', ['-c', `command -v ${file}`]).status === 0,
)

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovroot-shim-'))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
fs.writeFileSync(path.join(dir, 'checks.sh'), checks)

interface Elf {
  cls?: 1 | 2
  order?: 1 | 2
  machine?: number
  type?: number
  phentsize?: number
  phnum?: number
  phoff?: bigint
  /** Extra program headers: [type, offset, filesz]. */
  extra?: [number, bigint, bigint][]
  interp?: Buffer
  /** The PT_LOAD's file size instead of the whole file. */
  loadSize?: bigint
}

/** A minimal ELF: header, program headers (PT_INTERP, PT_LOAD of the whole file, extras), interpreter path, code. */
function elf({ cls = 2, order = 1, machine = 62, type = 2, interp, extra = [], ...over }: Elf): Buffer {
  const [headerSize, phdrSize] = cls === 1 ? [52, 32] : [64, 56]
  const phdrs: [number, bigint, bigint][] = []
  const count = (interp ? 1 : 0) + 1 + extra.length
  const interpAt = BigInt(headerSize + count * phdrSize)
  if (interp) phdrs.push([3, interpAt, BigInt(interp.length)])
  const total = interpAt + BigInt(interp?.length ?? 0) + 16n
  phdrs.push([1, 0n, over.loadSize ?? total], ...extra)
  const out = Buffer.alloc(Number(total))
  let at = 0
  const put = (size: number, value: number | bigint): void => {
    const big = BigInt(value)
    for (let i = 0; i < size; i++) {
      const shift = BigInt(8 * (order === 1 ? i : size - 1 - i))
      out[at + i] = Number((big >> shift) & 0xffn)
    }
    at += size
  }
  const word = cls === 1 ? 4 : 8
  out.set([0x7f, 0x45, 0x4c, 0x46, cls, order, 1])
  at = 16
  put(2, type)
  put(2, machine)
  put(4, 1)
  put(word, 0x400000n + total - 16n)
  put(word, over.phoff ?? BigInt(headerSize))
  put(word, 0)
  put(4, 0)
  put(2, headerSize)
  put(2, over.phentsize ?? phdrSize)
  put(2, over.phnum ?? phdrs.length)
  at = headerSize
  for (const [kind, offset, filesz] of phdrs) {
    put(4, kind)
    if (cls === 2) put(4, 5)
    put(word, offset)
    put(word, 0x400000n + offset)
    put(word, 0x400000n + offset)
    put(word, filesz)
    put(word, filesz)
    if (cls === 1) put(4, 5)
    put(word, 0x1000)
  }
  interp?.copy(out, Number(interpAt))
  return out
}

function file(name: string, content: Buffer | string): string {
  const full = path.join(dir, name)
  fs.writeFileSync(full, content, { mode: 0o755 })
  return full
}

/**
 * can_execute FILE under a shell, as PID 1 runs it; OWN stands in for the shim's interpreter (/proc/$$/exe), so
 * ELFs of other machines can be checked on this host. Answers 'OK' or the reason.
 */
/** What can_execute says of `target`; `own` stands in for the shim's /proc/$$/exe, `kernel` for `uname -m`. */
function verdict(shell: Shell, target: string, own?: string, kernel?: string): string {
  const fake = [
    own
      ? `file_bytes() { f=$1; case $f in /proc/*/exe) f=${own} ;; esac; od -An -v -tu1 -j "$2" -N "$3" "$f" 2>&-; }`
      : '',
    kernel ? `uname() { echo ${kernel}; }` : '',
  ].join('\n')
  const script = `. ${dir}/checks.sh\n${fake}\nwhy=$(can_execute "$1") && echo OK || echo "$why"`
  const result = spawnSync(shell[0], [...shell.slice(1), '-c', script, 'sh', target], {
    encoding: 'utf8',
    timeout: 20_000,
  })
  return result.error ? String(result.error) : result.stdout.trim() || result.stderr.trim()
}

const x86 = file('ld.so', elf({}))
file('self', `#!${dir}/self\n`)
const cases: [string, Buffer | string, boolean][] = [
  ['a static program', elf({}), true],
  ['a shared object (PIE)', elf({ type: 3 }), true],
  ['a program whose interpreter is loadable', elf({ interp: Buffer.from(`${x86}\0`) }), true],
  ['an interpreter path the kernel reads to its first NUL', elf({ interp: Buffer.from(`${x86}\0junk\0`) }), true],
  ['a relocatable object (ENOEXEC)', elf({ type: 1 }), false],
  ['a core dump (ENOEXEC)', elf({ type: 4 }), false],
  ['program headers of entry size 0', elf({ phentsize: 0 }), false],
  ['program headers of entry size 57', elf({ phentsize: 57 }), false],
  ['no program header', elf({ phnum: 0 }), false],
  ['more than 64 KiB of program headers', elf({ phnum: 1171, extra: Array(1170).fill([0, 0n, 0n]) }), false],
  ['program headers at 2^63 - 1 (the sum overflows)', elf({ phoff: 2n ** 63n - 1n }), false],
  ['program headers at 2^64 - 8', elf({ phoff: 2n ** 64n - 8n }), false],
  ['a segment at 2^63 - 1 (the sum overflows)', elf({ extra: [[1, 2n ** 63n - 1n, 2n]] }), false],
  ['a segment past the end', elf({ loadSize: 100000n }), false],
  [
    'a .bss-only segment (nothing in the file) whose offset is past the end',
    elf({ extra: [[1, 0x200000n, 0n]] }),
    true,
  ],
  [
    'a .bss-only segment past the end, off a page (a kernel before 6.7 maps the file there)',
    elf({ extra: [[1, 0x200010n, 0n]] }),
    false,
  ],
  ['an interpreter path without its NUL (ENOEXEC)', elf({ interp: Buffer.from(x86) }), false],
  ['an empty interpreter path', elf({ interp: Buffer.from('\0') }), false],
  ['a 32-bit ELF on this 64-bit machine', elf({ cls: 1, machine: 3 }), false],
  ['a script', '#!/bin/sh\nexit 0\n', true],
  ['a script naming no interpreter', '#!   \nexit 0\n', false],
  ['a script with CRLF', '#!/bin/sh\r\nexit 0\n', false],
  ['a script whose interpreter is a pattern (the kernel takes it literally)', '#!/bin/[s]h\nexit 0\n', false],
  ['a script whose interpreter is itself', `#!${dir}/self\n`, false],
]

for (const shell of shells) {
  await t.test(`can_execute under ${shell.join(' ')}`, async (t) => {
    t.equal(
      verdict(
        shell,
        spawnSync('sh', ['-c', `command -v ${shell[0]}`])
          .stdout.toString()
          .trim(),
      ),
      'OK',
    )
    for (const [what, content, loadable] of cases) {
      const answer = verdict(shell, file('candidate', content))
      if (loadable) t.equal(answer, 'OK', `${what}: accepted (${answer})`)
      else t.not(answer, 'OK', `${what}: refused (${answer})`)
    }

    // Interpreters whose own PT_INTERP names each other, or themselves: the kernel ignores it, the check must end.
    file('loop-a', elf({ interp: Buffer.from(`${dir}/loop-b\0`) }))
    file('loop-b', elf({ interp: Buffer.from(`${dir}/loop-a\0`) }))
    t.equal(verdict(shell, path.join(dir, 'loop-a')), 'OK', 'interpreters naming each other: accepted, no hang')

    // Five scripts deep loads (ELOOP beyond), and a loop of scripts is refused.
    file('s0', '#!/bin/sh\nexit 0\n')
    for (let i = 1; i <= 5; i++) file(`s${i}`, `#!${dir}/s${i - 1}\n`)
    t.equal(verdict(shell, path.join(dir, 's4')), 'OK', 'five nested scripts: accepted')
    t.not(verdict(shell, path.join(dir, 's5')), 'OK', 'six nested scripts: refused')

    // Other machines, against a stand-in for the shim's own interpreter: both byte orders, both classes.
    for (const [cls, order, machine] of [
      [1, 1, 40],
      [1, 2, 8],
      [2, 2, 21],
      [2, 1, 183],
    ] as const) {
      const own = file(`own-${cls}-${order}`, elf({ cls, order, machine }))
      const loader = file(`ld-${cls}-${order}`, elf({ cls, order, machine, type: 3 }))
      const name = `class ${cls}, byte order ${order}, machine ${machine}`
      t.equal(
        verdict(shell, file('init', elf({ cls, order, machine, interp: Buffer.from(`${loader}\0`) })), own),
        'OK',
        name,
      )
      t.not(verdict(shell, file('init', elf({ cls, order, machine, phentsize: 0 })), own), 'OK', `${name}, bad headers`)
      t.not(
        verdict(shell, file('init', elf({ cls, order: order === 1 ? 2 : 1, machine })), own),
        'OK',
        `${name}, swapped`,
      )
    }
  })
}

await t.test('an init that is not a file is named for what it is', async (t) => {
  const directory = path.join(dir, 'init-directory')
  fs.mkdirSync(directory, { recursive: true })
  const dangling = path.join(dir, 'init-dangling')
  if (!fs.existsSync(dangling)) fs.symlinkSync(path.join(dir, 'nowhere'), dangling)
  const fifo = path.join(dir, 'init-fifo')
  if (!fs.existsSync(fifo)) spawnSync('mkfifo', [fifo])
  for (const shell of shells) {
    t.equal(verdict(shell, directory), `${directory} is not a regular file`, `${shell.join(' ')}: a directory`)
    t.equal(verdict(shell, fifo), `${fifo} is not a regular file`, `${shell.join(' ')}: a FIFO`)
    t.equal(verdict(shell, dangling), `${dangling} does not exist`, `${shell.join(' ')}: a dangling symlink`)
  }
})

await t.test("a 64-bit init of the kernel's own machine under a 32-bit shim is accepted", async (t) => {
  // The kernel's machine from uname -m, its 64-bit ELF machine and the 32-bit one a shim on it may be built for.
  const kernels: [string, number, number][] = [
    ['x86_64', 62, 3],
    ['aarch64', 183, 40],
  ]
  for (const [kernel, machine64, machine32] of kernels) {
    const own = file('own-32', elf({ cls: 1, machine: machine32 }))
    const loader = file('ld-64', elf({ machine: machine64, type: 3 }))
    for (const shell of shells) {
      const name = `${shell.join(' ')} on ${kernel}`
      const init = file('init-64', elf({ machine: machine64, interp: Buffer.from(`${loader}\0`) }))
      t.equal(verdict(shell, init, own, kernel), 'OK', `${name}: the 64-bit init and its 64-bit ld.so`)
      const other = file('init-other', elf({ machine: machine64 === 62 ? 183 : 62 }))
      t.not(verdict(shell, other, own, kernel), 'OK', `${name}: another machine's 64-bit init is still refused`)
      const swapped = file('init-swapped', elf({ machine: machine64, order: 2 }))
      t.not(verdict(shell, swapped, own, kernel), 'OK', `${name}: so is the other byte order`)
    }
  }
})

await t.test("the shim's block I/O sample takes every counted field of /proc/diskstats", async (t) => {
  const blockIo = shim.slice(shim.indexOf('\nblock_io()'), shim.indexOf('\n}\n', shim.indexOf('\nblock_io()')) + 3)
  const stats = file('diskstats', '   8       0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n')
  for (const shell of shells) {
    const script = `${blockIo.replace(/\/proc\/diskstats/g, stats)}\nblock_io; echo $io`
    const result = spawnSync(shell[0], [...shell.slice(1), '-c', script], { encoding: 'utf8', timeout: 20_000 })
    // Reads, sectors read, writes, sectors written, discards, sectors discarded, flushes: fields 4, 6, 8, 10, 15, 17, 19.
    t.equal(result.stdout.trim(), '1 3 5 7 12 14 16', `${shell.join(' ')}: ${result.stderr}`)
  }
})

await t.test('an exec that fails in the EXIT trap still reaches the next candidate and the shells', async (t) => {
  // Both candidates pass the check and fail to exec (ENOENT): the second failure happens inside the trap.
  const missing = file('missing-interpreter', `#!${dir}/nowhere\n`)
  const other = file('other-missing', `#!${dir}/nowhere-else\n`)
  const harness = file(
    'harness.sh',
    `${execInit.replace(/\/sbin\/init/g, other).replace(/^\t\t\/bin\/sh$/m, '\t\techo SHELLS; exit 7')}
can_execute() { :; }
say() { echo "$*" >&2; }
uptime_seconds() { echo 1; }
RUN=${dir}
if [ -n "$OVROOT_INIT_TRIED" ]; then tried=$OVROOT_INIT_TRIED; unset OVROOT_INIT_TRIED; fi
REAL_INIT=${missing}
exec_init
`,
  )
  for (const shell of shells) {
    const result = spawnSync(shell[0], [...shell.slice(1), harness], { encoding: 'utf8', timeout: 20_000 })
    t.equal(result.stdout.trim(), 'SHELLS', `${shell.join(' ')}: the shells run after both execs failed`)
    t.match(result.stderr, `exec of ${other} failed`, `${shell.join(' ')}: the second candidate was tried`)
  }
})

await t.test('the shim reads [boot] init and timeout as the agent does, whatever the editor wrote', async (t) => {
  const configValue = shim.slice(
    shim.indexOf('\nconfig_value()'),
    shim.indexOf('\n}\n', shim.indexOf('\nconfig_value()')) + 3,
  )
  // The device's awk is busybox's; the host's may be another: both must read the file alike.
  const busyboxAwk = path.join(dir, 'busybox-awk')
  fs.mkdirSync(busyboxAwk, { recursive: true })
  if (!fs.existsSync(path.join(busyboxAwk, 'awk'))) fs.symlinkSync('/usr/bin/busybox', path.join(busyboxAwk, 'awk'))
  const files: [string, string][] = [
    ['plain', '[boot]\ninit = /sbin/procd\ntimeout = 30\n'],
    ['CRLF line ends (a Windows editor)', '[boot]\r\ninit = /sbin/procd\r\ntimeout = 30\r\n'],
    ['a UTF-8 byte order mark', '\uFEFF[boot]\ninit = /sbin/procd\ntimeout = 30\n'],
    ['comments after the values', '[boot]\ninit = /sbin/procd ; the real init\ntimeout = 30\t# seconds\n'],
    ['quoted values', '[boot]\ninit = "/sbin/procd"\ntimeout = \'30\'\n'],
    ['a spaced section header', '[ boot ]\ninit=/sbin/procd\ntimeout=30\n'],
  ]
  for (const [what, text] of files) {
    const agent = parseConfig(text, 'ovroot.conf').boot
    t.same([agent.init, agent.timeout], ['/sbin/procd', 30], `${what}: the agent's reading`)
    const config = file('ovroot.conf', text)
    for (const shell of shells)
      for (const awkDir of ['', busyboxAwk]) {
        const script = `CONFIG=${config}\n${configValue}\necho "$(config_value boot init)|$(config_value boot timeout)"`
        const env = { ...process.env, PATH: awkDir ? `${awkDir}:${process.env.PATH}` : process.env.PATH }
        const result = spawnSync(shell[0], [...shell.slice(1), '-c', script], {
          encoding: 'utf8',
          env,
          timeout: 20_000,
        })
        t.equal(result.stdout, '/sbin/procd|30\n', `${what}: ${shell.join(' ')}${awkDir ? ' with busybox awk' : ''}`)
      }
  }
})

await t.test(
  'the kernel command line is read as words, never expanded as patterns against the current directory',
  async (t) => {
    const cmdlineValue = shim.slice(
      shim.indexOf('\ncmdline_value()'),
      shim.indexOf('\n}\n', shim.indexOf('\ncmdline_value()')) + 3,
    )
    const cmdline = file('cmdline', 'console=ttyS0 ovroot.boot.timeout=* quiet\n')
    // PID 1's current directory is /: here, one holding a name that the pattern matches.
    const cwd = path.join(dir, 'cwd')
    fs.mkdirSync(cwd, { recursive: true })
    fs.writeFileSync(path.join(cwd, 'ovroot.boot.timeout=1'), '')
    for (const shell of shells) {
      const script = `${cmdlineValue.replace('/proc/cmdline', cmdline)}\ncmdline_value ovroot.boot.timeout; echo *`
      const result = spawnSync(shell[0], [...shell.slice(1), '-c', script], { cwd, encoding: 'utf8', timeout: 20_000 })
      t.equal(result.stdout, '*\novroot.boot.timeout=1\n', `${shell.join(' ')}: the word as written, patterns on after`)
    }
  },
)

await t.test(
  'an init that is the shim itself is refused (it would start again, forever) and the next one runs',
  async (t) => {
    const init = file('other-init', '#!/bin/sh\necho INIT\n')
    const harness = file(
      'harness-self.sh',
      `${execInit.replace(/\/sbin\/init/g, init)}
can_execute() { :; }
say() { echo "$*" >&2; }
uptime_seconds() { echo 1; }
RUN=${dir}
REAL_INIT=${dir}/shim-link
exec_init
`,
    )
    // Another name of the same file, as init= may give it (a symlink /sbin/init -> ovroot-init).
    if (!fs.existsSync(`${dir}/shim-link`)) fs.symlinkSync(harness, `${dir}/shim-link`)
    for (const shell of shells) {
      const result = spawnSync(shell[0], [...shell.slice(1), harness], { encoding: 'utf8', timeout: 20_000 })
      t.equal(result.stdout.trim(), 'INIT', `${shell.join(' ')}: the next candidate runs`)
      t.match(
        result.stderr,
        `cannot execute ${dir}/shim-link as init: it is ovroot-init itself`,
        `${shell.join(' ')}: one line says why`,
      )
    }
  },
)
