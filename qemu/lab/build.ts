/**
 * Builds the lab's device images from this machine's Debian packages and the
 * project's own build: a kernel, an initramfs (busybox and the modules a
 * router would have built in) and the squashfs firmware (busybox init, an
 * OpenWrt-like /etc, node, ovroot, init/ovroot-init). Rebuilt only when an
 * input changed.
 */
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'

export const LAB = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..')
export const PROJECT = path.resolve(LAB, '..')
export const BUILD = path.join(LAB, 'build')
const CACHE = path.join(LAB, 'cache')

export interface Images {
  kernel: string
  initramfs: string
  rootfs: string
}

export const IMAGES: Images = {
  kernel: path.join(BUILD, 'vmlinuz'),
  initramfs: path.join(BUILD, 'initramfs.cpio.gz'),
  rootfs: path.join(BUILD, 'rootfs.squashfs'),
}

/** Loaded in preinit in this order (with their dependencies first). */
const MODULES = ['virtio_pci', 'virtio_blk', 'squashfs', 'overlay', 'mtd', 'jffs2', 'ext4', 'f2fs', 'crc32c_generic', 'crc32_generic', 'zstd']
/** Loaded by preinit itself, with parameters that depend on the medium. */
const MEDIA_MODULES = ['block2mtd', 'ubi', 'ubifs']
/** Device tools ovroot runs to format flash, and what the lab's scripts use. */
const DEVICE_TOOLS = ['/usr/sbin/flash_erase', '/usr/sbin/ubimkvol', '/usr/sbin/ubiupdatevol', '/usr/sbin/mkfs.ext4', '/usr/sbin/mkfs.f2fs', '/usr/bin/getfattr', '/usr/bin/setfattr']

function run(command: string, args: string[], options: { cwd?: string; input?: Buffer } = {}): string {
  return execFileSync(command, args, { cwd: options.cwd, input: options.input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 1 << 28 })
}

function log(message: string): void {
  process.stderr.write(`lab: ${message}\n`)
}

/** The Debian kernel the linux-image-amd64 metapackage points at, unpacked. */
function kernelTree(): { root: string; version: string } {
  const depends = (): string => run('apt-cache', ['depends', 'linux-image-amd64'])
  let listing = depends()
  if (!/Depends: linux-image-/.test(listing)) {
    run('apt-get', ['update', '-qq'])
    listing = depends()
  }
  const match = /Depends: (linux-image-(\d[^\s]*-amd64))/.exec(listing)
  if (!match?.[1] || !match[2]) throw new Error('lab: cannot find the kernel package linux-image-amd64 depends on')
  const [, packageName, version] = match as unknown as [string, string, string]
  const root = path.join(CACHE, packageName)
  if (!fs.existsSync(path.join(root, 'boot', `vmlinuz-${version}`))) {
    log(`downloading ${packageName}`)
    const download = path.join(CACHE, 'download')
    fs.mkdirSync(download, { recursive: true })
    run('apt-get', ['download', '-q', packageName], { cwd: download })
    const deb = fs.readdirSync(download).find((name) => name.startsWith(`${packageName}_`) && name.endsWith('.deb'))
    if (!deb) throw new Error(`lab: apt-get download ${packageName} produced no .deb`)
    fs.rmSync(root, { recursive: true, force: true })
    run('dpkg-deb', ['-x', path.join(download, deb), root])
    fs.rmSync(path.join(download, deb))
    run('depmod', ['-b', root, version])
  }
  return { root, version }
}

/** Module files in load order: dependencies before their users. */
function moduleClosure(root: string, version: string, wanted: string[]): Map<string, string> {
  const base = path.join(root, 'lib', 'modules', version)
  const deps = new Map<string, string[]>()
  const files = new Map<string, string>()
  for (const line of fs.readFileSync(path.join(base, 'modules.dep'), 'utf8').split('\n')) {
    const [file, rest] = line.split(':')
    if (!file) continue
    const name = path.basename(file).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_')
    files.set(name, path.join(base, file))
    deps.set(name, (rest ?? '').trim().split(/\s+/).filter(Boolean).map((dep) => path.basename(dep).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_')))
  }
  const ordered = new Map<string, string>()
  const visit = (name: string): void => {
    if (ordered.has(name)) return
    const file = files.get(name)
    if (!file) throw new Error(`lab: kernel module ${name} not found in ${base}`)
    for (const dep of deps.get(name) ?? []) visit(dep)
    ordered.set(name, file)
  }
  wanted.forEach(visit)
  return ordered
}

/** A binary and the shared libraries ldd says it needs. */
function copyWithLibraries(binary: string, rootfs: string, target = binary): void {
  copyFile(binary, path.join(rootfs, target))
  for (const line of run('ldd', [binary]).split('\n')) {
    const library = /(\/[^\s]+) \(0x/.exec(line)?.[1]
    if (library && !fs.existsSync(path.join(rootfs, library))) copyFile(fs.realpathSync(library), path.join(rootfs, library))
  }
}

function copyFile(from: string, to: string): void {
  fs.mkdirSync(path.dirname(to), { recursive: true })
  fs.copyFileSync(from, to)
  fs.chmodSync(to, fs.statSync(from).mode & 0o7777)
}

function copyTree(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true, verbatimSymlinks: true })
}

/** Every input's content, so a change anywhere rebuilds. */
function inputsDigest(kernelVersion: string): string {
  const hash = createHash('sha256').update(kernelVersion).update(JSON.stringify([MODULES, MEDIA_MODULES, DEVICE_TOOLS]))
  const addTree = (dir: string): void => {
    if (!fs.existsSync(dir)) return
    if (!fs.statSync(dir).isDirectory()) {
      hash.update(dir).update(fs.readFileSync(dir))
      return
    }
    for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const full = path.join(dir, entry.name)
      if (entry.isDirectory()) addTree(full)
      else hash.update(full).update(entry.isSymbolicLink() ? fs.readlinkSync(full) : fs.readFileSync(full))
    }
  }
  for (const dir of ['dist', 'init', 'etc', 'qemu/image', 'qemu/lab', 'node_modules/koffi/package.json']) addTree(path.join(PROJECT, dir))
  for (const file of [process.execPath, '/bin/busybox', ...DEVICE_TOOLS]) {
    const stat = fs.statSync(file)
    hash.update(`${file}:${stat.size}:${stat.mtimeMs}`)
  }
  return hash.digest('hex')
}

function buildInitramfs(kernel: { root: string; version: string }, staging: string): void {
  fs.rmSync(staging, { recursive: true, force: true })
  copyFile('/bin/busybox', path.join(staging, 'bin', 'busybox'))
  copyFile(path.join(LAB, 'image', 'initramfs', 'init'), path.join(staging, 'init'))
  const modules = moduleClosure(kernel.root, kernel.version, [...MODULES, ...MEDIA_MODULES])
  for (const [name, file] of modules) copyFile(file, path.join(staging, 'lib', 'modules', `${name}.ko`))
  const generic = [...moduleClosure(kernel.root, kernel.version, MODULES).keys()]
  fs.writeFileSync(path.join(staging, 'modules.list'), `${generic.join('\n')}\n`)
  const list = run('find', ['.', '-print0'], { cwd: staging })
  const archive = execFileSync('cpio', ['-o', '-H', 'newc', '-0', '--quiet'], { cwd: staging, input: list, maxBuffer: 1 << 28 })
  fs.writeFileSync(IMAGES.initramfs, execFileSync('gzip', ['-1'], { input: archive, maxBuffer: 1 << 28 }))
}

function buildRootfs(staging: string): void {
  fs.rmSync(staging, { recursive: true, force: true })
  for (const dir of ['proc', 'sys', 'dev', 'run', 'tmp', 'rom', 'overlay', 'mnt', 'root', 'etc', 'usr/sbin', 'usr/bin', 'sbin', 'bin', 'var']) fs.mkdirSync(path.join(staging, dir), { recursive: true })
  copyFile('/bin/busybox', path.join(staging, 'bin', 'busybox'))
  run('chroot', [staging, '/bin/busybox', '--install', '-s'])
  copyTree(path.join(LAB, 'image', 'rootfs'), staging)
  copyFile(path.join(PROJECT, 'etc', 'ovroot.conf'), path.join(staging, 'etc', 'ovroot.conf'))
  copyFile(path.join(PROJECT, 'init', 'ovroot-init'), path.join(staging, 'sbin', 'ovroot-init'))
  copyWithLibraries(process.execPath, staging, '/usr/bin/node')
  for (const tool of DEVICE_TOOLS) copyWithLibraries(tool, staging)
  const lib = path.join(staging, 'usr', 'lib', 'ovroot')
  copyTree(path.join(PROJECT, 'dist'), lib)
  copyTree(path.join(PROJECT, 'node_modules', 'koffi'), path.join(lib, 'node_modules', 'koffi'))
  const native = path.join(PROJECT, 'node_modules', '@koromix', `koffi-linux-${process.arch}`)
  copyTree(native, path.join(lib, 'node_modules', '@koromix', `koffi-linux-${process.arch}`))
  for (const variant of fs.readdirSync(path.join(lib, 'node_modules', '@koromix', `koffi-linux-${process.arch}`))) {
    if (variant.startsWith('musl')) fs.rmSync(path.join(lib, 'node_modules', '@koromix', `koffi-linux-${process.arch}`, variant), { recursive: true })
  }
  fs.symlinkSync('../lib/ovroot/ovroot.js', path.join(staging, 'usr', 'sbin', 'ovroot'))
  fs.rmSync(IMAGES.rootfs, { force: true })
  run('mksquashfs', [staging, IMAGES.rootfs, '-comp', 'lz4', '-all-root', '-noappend', '-quiet', '-no-progress'])
}

/** Build what is missing or stale; answer the image paths. One builder at a time. */
export function ensureImages(force = false): Images {
  fs.mkdirSync(BUILD, { recursive: true })
  fs.mkdirSync(CACHE, { recursive: true })
  const lock = path.join(CACHE, 'build.lock')
  for (let waited = 0; ; waited++) {
    try {
      fs.mkdirSync(lock)
      break
    } catch {
      if (waited > 600) throw new Error(`lab: ${lock} held for 10 minutes; remove it if no build is running`)
      execFileSync('sleep', ['1'])
    }
  }
  try {
    return buildIfStale(force)
  } finally {
    fs.rmdirSync(lock)
  }
}

function buildIfStale(force: boolean): Images {
  const kernel = kernelTree()
  const digest = inputsDigest(kernel.version)
  const stamp = path.join(BUILD, 'inputs.sha256')
  const fresh = !force && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === digest && Object.values(IMAGES).every((file) => fs.existsSync(file))
  if (fresh) return IMAGES
  log(`building images (kernel ${kernel.version})`)
  copyFile(path.join(kernel.root, 'boot', `vmlinuz-${kernel.version}`), IMAGES.kernel)
  buildInitramfs(kernel, path.join(CACHE, 'initramfs-staging'))
  buildRootfs(path.join(CACHE, 'rootfs-staging'))
  fs.writeFileSync(stamp, digest)
  log(`images ready in ${path.relative(PROJECT, BUILD)}/`)
  return IMAGES
}
