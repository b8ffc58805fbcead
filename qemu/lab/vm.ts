/**
 * qemu/vm: build the device images, or boot the device under QEMU (TCG).
 *
 *   qemu/vm build [--arch ARCH] [--force]
 *   qemu/vm boot [--arch ARCH] [--firmware FILE] [--flash FILE] [--media nor|nand|ext4|f2fs|ram] [--no-flash]
 *                [--flash-errors | --flash-error-sectors N,... | --slow-flash MBPS] [--attach FILE] [--memory MB]
 *                [--append 'ARGS']
 *                [--run 'CMD' [--cut-after S] [--cut-on TEXT]] [--timeout S] [--verbose]
 *
 * --run CMD runs CMD as root once the device has booted, prints its output,
 * powers off cleanly and exits with CMD's status. --cut-after S kills QEMU S
 * seconds after CMD started: a power cut (exit status 137); with --cut-on TEXT
 * the S seconds count from the console's first whole line that is TEXT (or,
 * TEXT ending in `*`, that begins with the rest) instead: a cut during boot,
 * e.g. during a factory reset, or on a line CMD prints for it. Only a line
 * whose newline has arrived counts, so the line is already in the output.
 * --flash-errors makes every read of the flash fail with EIO (QEMU's
 * blkdebug): a dying flash chip (--flash-error-sectors N,...: only reads
 * touching those sectors). --slow-flash MBPS reads, writes and discards at
 * most MBPS MB/s (QEMU's throttle filter): a slow eMMC or SD card, on which
 * mkfs's discard of the whole device takes a while. Without --run the
 * console is interactive (Ctrl-A X leaves QEMU; a reboot reboots). --arch picks the device's
 * CPU (qemu/lab/arch.ts: x86_64, the default, or arm64). --firmware FILE boots
 * another squashfs as the firmware (the lower) instead of the built one, with the
 * same kernel, initramfs and flash: a firmware upgrade over a kept flash.
 * --attach FILE gives the device FILE as one more read-only disk, the last
 * virtio disk (/dev/vdc after the firmware and the flash): e.g. a new firmware
 * for `ovroot upgrade-check`.
 */
import { spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { parseArgs } from 'node:util'
import { architectureNamed, hostArchitecture, type Architecture } from './arch.js'
import { BUILD, ensureImages } from './build.js'

const MEDIA = ['nor', 'nand', 'ext4', 'f2fs', 'ram'] as const
type Media = (typeof MEDIA)[number]

const FLASH_BYTES: Record<Media, number> = { nor: 8 << 20, nand: 32 << 20, ext4: 64 << 20, f2fs: 128 << 20, ram: 0 }
/** Kernel command-line settings that tell ovroot where this medium's flash is. */
const MEDIA_ARGUMENTS: Record<Media, string[]> = {
  nor: [],
  nand: [],
  ext4: ['ovroot.flash.device=/dev/vdb', 'ovroot.flash.filesystem=ext4'],
  f2fs: ['ovroot.flash.device=/dev/vdb', 'ovroot.flash.filesystem=f2fs'],
  ram: ['ovroot.flash.drivers=ram'],
}

const BEGIN = '@@OVROOT-LAB-BEGIN@@'
const END = /@@OVROOT-LAB-END (\d+)@@/

function fail(message: string, status = 2): never {
  process.stderr.write(`qemu/vm: ${message}\n`)
  process.exit(status)
}

/** A missing flash image is created erased: 0xFF for raw flash, zeros (sparse) for block media. */
function ensureFlash(file: string, media: Media): void {
  if (fs.existsSync(file)) return
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true })
  if (media === 'nor' || media === 'nand') fs.writeFileSync(file, Buffer.alloc(FLASH_BYTES[media], 0xff))
  else {
    fs.writeFileSync(file, '')
    fs.truncateSync(file, FLASH_BYTES[media])
  }
}

interface BootOptions {
  arch: Architecture
  flash: string | undefined
  media: Media
  memory: number
  append: string
  run: string | undefined
  cutAfter: number | undefined
  cutOn: string | undefined
  timeout: number
  verbose: boolean
  noFlash: boolean
  /** Reads of the flash that fail with EIO: every one, or those touching these 512-byte sectors. */
  flashErrors: 'every' | readonly number[] | undefined
  slowFlash: number | undefined
  firmware: string | undefined
  attach: string | undefined
}

/** QEMU's blkdebug driver, failing with EIO every read of the image it wraps, or every read touching one of `sectors`. */
function failingReads(image: string, dir: string, sectors: 'every' | readonly number[]): string {
  const config = path.join(dir, 'flash-errors.blkdebug')
  const rule = (sector?: number): string =>
    `[inject-error]\nevent = "read_aio"\nerrno = "5"\n${sector === undefined ? '' : `sector = "${sector}"\n`}`
  fs.writeFileSync(config, sectors === 'every' ? rule() : sectors.map(rule).join(''))
  return `blkdebug:${config}:${image}`
}

/** Bytes in a discard request of the slow flash: a card's limit, so that a long discard completes step by step. */
const SLOW_DISCARD_BYTES = 64 << 20

/**
 * The flash behind QEMU's throttle filter (reads and writes), which counts a discard's bytes as
 * written (a card erases what it discards), on a virtio disk that takes
 * discards of at most SLOW_DISCARD_BYTES, still the device's second disk (vdb).
 */
function slowFlash(image: string, megabytesPerSecond: number, discard: string): string[] {
  const bytesPerSecond = Math.round(megabytesPerSecond * 1e6)
  return [
    '-object',
    // JSON: QEMU 7.2 takes the group's limits from the command line in this form only (or as x- properties).
    JSON.stringify({
      'qom-type': 'throttle-group',
      id: 'slow-flash',
      limits: { 'bps-read': bytesPerSecond, 'bps-write': bytesPerSecond },
    }),
    '-drive',
    `driver=throttle,throttle-group=slow-flash,file.driver=raw,file.file.filename=${image},if=none,id=flash${discard}`,
    '-device',
    // A PCI slot after the rootfs's: a -device would otherwise take the first free slot and be probed first (vda).
    `virtio-blk-pci,drive=flash,addr=0x10,max-discard-sectors=${SLOW_DISCARD_BYTES / 512}`,
  ]
}

function qemuArguments(options: BootOptions, interactive: boolean): string[] {
  const images = ensureImages(options.arch)
  const append = [
    `console=${options.arch.console}`,
    'quiet',
    'panic=-1',
    'init=/sbin/ovroot-init',
    `lab.media=${options.media}`,
    ...MEDIA_ARGUMENTS[options.media],
  ]
  if (options.run !== undefined) append.push(`lab.run=${Buffer.from(options.run).toString('base64')}`)
  if (options.append) append.push(options.append)
  const args = [
    ...options.arch.machine,
    '-accel',
    'tcg',
    '-m',
    String(options.memory),
    // A scripted boot ends when the device reboots (its result is in); a person's console reboots the
    // device, as `ovroot reset --reboot` asks.
    ...(interactive ? [] : ['-no-reboot']),
    '-nic',
    'none',
    '-kernel',
    images.kernel,
    '-initrd',
    images.initramfs,
    '-append',
    append.join(' '),
  ]
  args.push('-drive', `file=${path.resolve(options.firmware ?? images.rootfs)},if=virtio,format=raw,readonly=on`)
  if (options.media !== 'ram' && !options.noFlash) {
    const flash = options.flash ?? path.join(images.dir, `default-${options.media}.flash`)
    ensureFlash(flash, options.media)
    const image = path.resolve(flash)
    // A block medium takes the guest's discards (mkfs discards the whole device) as a card does; they punch
    // holes in the image, which stays sparse. QEMU ignores them by default.
    const discard = options.media === 'ext4' || options.media === 'f2fs' ? ',discard=unmap' : ''
    if (options.slowFlash === undefined)
      args.push(
        '-drive',
        `file=${options.flashErrors ? failingReads(image, images.dir, options.flashErrors) : image},if=virtio,format=raw${discard}`,
      )
    else args.push(...slowFlash(image, options.slowFlash, discard))
  }
  if (options.attach !== undefined)
    args.push(
      '-drive',
      `file=${path.resolve(options.attach)},if=none,id=attached,format=raw,readonly=on`,
      '-device',
      // After the flash's slot (the slow flash takes 0x10): probed last, so the last vdX.
      'virtio-blk-pci,drive=attached,addr=0x11',
    )
  args.push(...(interactive ? ['-nographic'] : ['-display', 'none', '-serial', 'stdio', '-monitor', 'none']))
  return args
}

/** `line` is `pattern`, or begins with it when the pattern ends in `*`. */
function wholeLine(line: string, pattern: string): boolean {
  return pattern.endsWith('*') ? line.startsWith(pattern.slice(0, -1)) : line === pattern
}

async function boot(options: BootOptions): Promise<number> {
  const interactive = options.run === undefined
  const args = qemuArguments(options, interactive)
  if (interactive) {
    const child = spawn(options.arch.qemu, args, { stdio: 'inherit' })
    return new Promise((resolve) => child.on('exit', (code) => resolve(code ?? 1)))
  }
  const child = spawn(options.arch.qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const logFile = path.join(BUILD, 'last-console.log')
  const log = fs.createWriteStream(logFile)
  let console = ''
  let printed = 0
  let status: number | undefined
  // An object, not a let: the timer sets it, and TypeScript would take a let for still false at the end.
  const power = { cut: false }
  let begun = false
  let cutArmed = false
  /** Where the console's next line to match against --cut-on begins. */
  let unmatched = 0
  const armCut = (): void => {
    if (cutArmed || options.cutAfter === undefined) return
    cutArmed = true
    setTimeout(() => {
      power.cut = true
      child.kill('SIGKILL')
    }, options.cutAfter * 1000)
  }
  const timer = setTimeout(() => {
    process.stderr.write(`qemu/vm: no result within ${options.timeout} s; console in ${logFile}\n`)
    child.kill('SIGKILL')
  }, options.timeout * 1000)
  const onOutput = (chunk: string): void => {
    const text = chunk.replace(/\r/g, '')
    log.write(text)
    if (options.verbose) process.stderr.write(text)
    console += text
    for (let end = console.indexOf('\n', unmatched); end >= 0; end = console.indexOf('\n', unmatched)) {
      if (options.cutOn !== undefined && wholeLine(console.slice(unmatched, end), options.cutOn)) armCut()
      unmatched = end + 1
    }
    if (!begun) {
      const start = console.indexOf(`${BEGIN}\n`)
      if (start < 0) return
      begun = true
      printed = start + BEGIN.length + 1
      if (options.cutOn === undefined) armCut()
    }
    const end = END.exec(console.slice(printed))
    const upTo = end ? printed + end.index : Math.max(printed, console.lastIndexOf('\n') + 1)
    process.stdout.write(console.slice(printed, upTo))
    printed = upTo
    if (end && status === undefined) status = Number(end[1])
  }
  // Decoded as a stream: a character whose bytes arrive in two reads is one character, not two U+FFFD.
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', onOutput)
  child.stderr.on('data', (chunk: Buffer) => log.write(chunk))
  const exit = await new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  clearTimeout(timer)
  log.end()
  if (power.cut) {
    process.stderr.write('qemu/vm: power cut\n')
    return 137
  }
  if (status === undefined) {
    process.stderr.write(
      `qemu/vm: the device did not report the command's end (qemu exit ${exit}); last console lines:\n${console.split('\n').slice(-25).join('\n')}\n`,
    )
    return 125
  }
  return status
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  if (command === 'build') {
    const { values } = parseArgs({
      args: rest,
      options: {
        force: { type: 'boolean', default: false },
        arch: { type: 'string', default: hostArchitecture().name },
      },
    })
    ensureImages(architectureNamed(values.arch), values.force)
    return 0
  }
  if (command !== 'boot')
    fail(
      'usage: qemu/vm build [--arch ARCH] [--force] | qemu/vm boot [--arch ARCH] [--firmware FILE] [--flash FILE] [--media nor|nand|ext4|f2fs|ram] [--no-flash] [--flash-errors | --flash-error-sectors N,... | --slow-flash MBPS] [--attach FILE] [--memory MB] [--append ARGS] [--run CMD [--cut-after S [--cut-on TEXT]]] [--timeout S] [--verbose]',
    )
  const { values } = parseArgs({
    args: rest,
    options: {
      arch: { type: 'string', default: hostArchitecture().name },
      flash: { type: 'string' },
      media: { type: 'string', default: 'nor' },
      memory: { type: 'string', default: '256' },
      append: { type: 'string', default: '' },
      run: { type: 'string' },
      'cut-after': { type: 'string' },
      'cut-on': { type: 'string' },
      timeout: { type: 'string', default: '600' },
      verbose: { type: 'boolean', default: false },
      'no-flash': { type: 'boolean', default: false },
      'flash-errors': { type: 'boolean', default: false },
      'flash-error-sectors': { type: 'string' },
      'slow-flash': { type: 'string' },
      firmware: { type: 'string' },
      attach: { type: 'string' },
    },
  })
  const media = values.media as Media
  if (!MEDIA.includes(media)) fail(`--media ${values.media}: expected one of ${MEDIA.join(', ')}`)
  const memory = Number(values.memory)
  if (!Number.isInteger(memory) || memory < 64)
    fail(`--memory ${values.memory}: expected a whole number of MB, at least 64`)
  const cutAfter = values['cut-after'] === undefined ? undefined : Number(values['cut-after'])
  if (cutAfter !== undefined && (!(cutAfter >= 0) || values.run === undefined))
    fail('--cut-after takes seconds and goes with --run')
  const sectors = values['flash-error-sectors']?.split(',').map(Number)
  if (
    sectors !== undefined &&
    (values['flash-errors'] || !sectors.every((sector) => Number.isSafeInteger(sector) && sector >= 0))
  )
    fail('--flash-error-sectors takes sector numbers, separated by commas, and does not go with --flash-errors')
  const flashErrors = values['flash-errors'] ? 'every' : sectors
  const slowFlash = values['slow-flash'] === undefined ? undefined : Number(values['slow-flash'])
  if (slowFlash !== undefined && (!(slowFlash > 0) || flashErrors))
    fail('--slow-flash takes megabytes per second and does not go with --flash-errors or --flash-error-sectors')
  for (const file of [values.firmware, values.attach])
    if (file !== undefined && !fs.existsSync(file)) fail(`${file}: no such file`)
  return boot({
    arch: architectureNamed(values.arch),
    flash: values.flash,
    media,
    memory,
    append: values.append,
    run: values.run,
    cutAfter,
    cutOn: values['cut-on'],
    timeout: Number(values.timeout),
    verbose: values.verbose,
    noFlash: values['no-flash'],
    flashErrors,
    slowFlash,
    firmware: values.firmware,
    attach: values.attach,
  })
}

main(process.argv.slice(2)).then(
  (status) => process.exit(status),
  (error: unknown) => fail(error instanceof Error ? error.message : String(error), 4),
)
