/**
 * Builds the lab's device images from this machine's Debian packages and the
 * project's own build: a kernel, an initramfs (busybox and the modules a
 * router would have built in) and the squashfs firmware (busybox init, an
 * OpenWrt-like /etc, node, ovroot, init/ovroot-init, and the firmware manifest
 * ovroot writes). Rebuilt only when an input changed.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { hostArchitecture, type Architecture } from './arch.js'
import { squashFirmware } from './squashfs.js'

export const LAB = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..')
export const PROJECT = path.resolve(LAB, '..')
export const BUILD = path.join(LAB, 'build')
const CACHE = path.join(LAB, 'cache')

export interface Images {
  /** Where this architecture's images and default flashes live */
  dir: string
  kernel: string
  initramfs: string
  rootfs: string
}

export function imagesOf(arch: Architecture): Images {
  const dir = path.join(BUILD, arch.name)
  return {
    dir,
    kernel: path.join(dir, 'vmlinuz'),
    initramfs: path.join(dir, 'initramfs.cpio.gz'),
    rootfs: path.join(dir, 'rootfs.squashfs'),
  }
}

/** Loaded in preinit in this order (with their dependencies first). */
const MODULES = [
  'virtio_pci',
  'virtio_blk',
  'squashfs',
  'overlay',
  'mtd',
  'jffs2',
  'ext4',
  'f2fs',
  'crc32c_generic',
  'crc32_generic',
  'zstd',
  // ovroot upgrade-check mounts a new firmware's squashfs from a file.
  'loop',
]
/** Loaded by preinit itself, with parameters that depend on the medium. */
const MEDIA_MODULES = ['block2mtd', 'ubi', 'ubifs']
/** Device tools ovroot runs to format flash, and what the lab's scripts use. */
const DEVICE_TOOLS = [
  '/usr/sbin/flash_erase',
  '/usr/sbin/ubimkvol',
  '/usr/sbin/ubiupdatevol',
  '/usr/sbin/mkfs.ext4',
  '/usr/sbin/mkfs.f2fs',
  '/usr/sbin/e2fsck',
  '/usr/bin/getfattr',
  '/usr/bin/setfattr',
  // Inode flags (chattr +i, +a) the device tests set and read: busybox builds neither applet.
  '/usr/bin/chattr',
  '/usr/bin/lsattr',
]
/** The Debian packages a foreign architecture's image is assembled from (their libraries follow). */
const USERLAND_PACKAGES = [
  'busybox-static',
  'libc6',
  'libstdc++6',
  'libgcc-s1',
  // Node's official build for 32-bit ARM links it (64-bit CPUs have their atomics in the instruction set).
  'libatomic1',
  'mtd-utils',
  'e2fsprogs',
  'f2fs-tools',
  'attr',
]

function run(command: string, args: string[], options: { cwd?: string; input?: Buffer } = {}): string {
  return execFileSync(command, args, {
    cwd: options.cwd,
    input: options.input,
    encoding: 'utf8',
    stdio: ['pipe', 'pipe', 'pipe'],
    maxBuffer: 1 << 28,
  })
}

function log(message: string): void {
  process.stderr.write(`lab: ${message}\n`)
}

/** apt-cache's answer, after one apt-get update if the index does not know the package yet. */
function aptCache(args: string[]): string {
  try {
    return run('apt-cache', args)
  } catch {
    run('apt-get', ['update', '-qq'])
    return run('apt-cache', args)
  }
}

/** A foreign architecture's packages can be downloaded once dpkg knows the architecture. */
function ensureDebianArchitecture(arch: Architecture): void {
  if (arch.debian === run('dpkg', ['--print-architecture']).trim()) return
  if (run('dpkg', ['--print-foreign-architectures']).split('\n').includes(arch.debian)) return
  log(`adding the Debian architecture ${arch.debian}`)
  run('dpkg', ['--add-architecture', arch.debian])
  run('apt-get', ['update', '-qq'])
}

/** Download Debian packages (PKG:ARCH or PKG=VERSION) into DIR; answer the .deb files. */
function download(dir: string, packages: string[]): string[] {
  fs.mkdirSync(dir, { recursive: true })
  const before = new Set(fs.readdirSync(dir))
  run('apt-get', ['download', '-q', ...packages], { cwd: dir })
  return fs
    .readdirSync(dir)
    .filter((name) => name.endsWith('.deb') && !before.has(name))
    .map((name) => path.join(dir, name))
}

/** The Debian kernel the linux-image-KERNEL metapackage points at, unpacked, with any module it lacks built. */
function kernelTree(arch: Architecture): { root: string; version: string } {
  const listing = aptCache(['depends', `linux-image-${arch.kernel}:${arch.debian}`])
  const match = new RegExp(`Depends: (linux-image-(\\d\\S*-${arch.kernel}))`).exec(listing)
  if (!match?.[1] || !match[2])
    throw new Error(`lab: cannot find the kernel package linux-image-${arch.kernel} depends on`)
  const [, packageName, version] = match as unknown as [string, string, string]
  const root = path.join(CACHE, packageName)
  if (!fs.existsSync(path.join(root, 'boot', `vmlinuz-${version}`))) {
    log(`downloading ${packageName}`)
    const [deb] = download(path.join(CACHE, 'download'), [`${packageName}:${arch.debian}`])
    if (!deb) throw new Error(`lab: apt-get download ${packageName} produced no .deb`)
    fs.rmSync(root, { recursive: true, force: true })
    run('dpkg-deb', ['-x', deb, root])
    fs.rmSync(deb)
  }
  buildMissingModules(arch, root, version)
  if (!fs.existsSync(path.join(root, 'lib', 'modules', version, 'modules.dep'))) run('depmod', ['-b', root, version])
  return { root, version }
}

/**
 * Out-of-tree builds of the drivers Debian's kernel for this architecture
 * leaves out (arm64 has no block2mtd, the lab's NOR flash): Debian's headers
 * and kbuild for that exact kernel, the file from Debian's linux-source, and
 * Debian's cross compiler.
 */
function buildMissingModules(arch: Architecture, root: string, version: string): void {
  const extra = path.join(root, 'lib', 'modules', version, 'extra')
  const wanted = Object.entries(arch.missingModules).filter(([name]) => !fs.existsSync(path.join(extra, `${name}.ko`)))
  if (wanted.length === 0) return
  log(`building ${wanted.map(([name]) => name).join(', ')} for ${version}`)
  const compiler = `${arch.triplet}-gcc-12`
  if (spawnSync('which', [compiler]).status !== 0)
    run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', `gcc-${arch.triplet.replace(/_/g, '-')}`])
  const headers = `linux-headers-${version}`
  const show = aptCache(['show', `${headers}:${arch.debian}`])
  // The headers need their common half at their own version, and kbuild at that version or newer.
  const dependency = (name: RegExp): RegExpExecArray => {
    const found = name.exec(show)
    if (!found?.[1]) throw new Error(`lab: ${headers} names no ${name.source}`)
    return found
  }
  const [, commonName, commonVersion] = dependency(/(linux-headers-[\d.]+-\d+-common) \(= ([^)]+)\)/)
  const common = `${commonName}=${commonVersion}`
  const kbuild = dependency(/(linux-kbuild-[\d.]+)/)[1] ?? ''
  const source = `linux-source-${/^(\d+\.\d+)/.exec(version)?.[1] ?? ''}`
  const tree = path.join(CACHE, `${headers}-kbuild`)
  fs.rmSync(tree, { recursive: true, force: true })
  for (const deb of download(path.join(CACHE, 'download'), [`${headers}:${arch.debian}`, common, kbuild, source])) {
    if (deb.includes('linux-source-')) {
      const sources = Object.values(arch.missingModules).map(
        (file) => `linux-source-${/^(\d+\.\d+)/.exec(version)?.[1] ?? ''}/${file}`,
      )
      execFileSync(
        'sh',
        [
          '-c',
          `dpkg-deb --fsys-tarfile "$1" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' | tar -xJ -C "$2" ${sources.map((file) => `'${file}'`).join(' ')}`,
          'sh',
          deb,
          tree,
        ],
        { stdio: 'pipe' },
      )
    } else run('dpkg-deb', ['-x', deb, tree])
    fs.rmSync(deb)
  }
  // Debian's headers Makefile includes the common tree by its installed, absolute path.
  const headersDir = path.join(tree, 'usr', 'src', headers)
  const makefile = path.join(headersDir, 'Makefile')
  fs.writeFileSync(
    makefile,
    fs.readFileSync(makefile, 'utf8').replace(/^include \/usr\/src\//m, `include ${tree}/usr/src/`),
  )
  fs.mkdirSync(extra, { recursive: true })
  for (const [name, file] of wanted) {
    const build = path.join(tree, 'build', name)
    fs.mkdirSync(build, { recursive: true })
    fs.copyFileSync(
      path.join(tree, fs.readdirSync(tree).find((entry) => entry.startsWith('linux-source-')) ?? '', file),
      path.join(build, path.basename(file)),
    )
    fs.writeFileSync(path.join(build, 'Kbuild'), `obj-m := ${path.basename(file, '.c')}.o\n`)
    run('make', ['-C', headersDir, `M=${build}`, `CROSS_COMPILE=${arch.triplet}-`, 'modules'])
    fs.copyFileSync(path.join(build, `${name}.ko`), path.join(extra, `${name}.ko`))
  }
  fs.rmSync(tree, { recursive: true, force: true })
  run('depmod', ['-b', root, version])
}
/** A module file's name as modprobe spells it: no directory, no .ko(.xz), underscores. */
function moduleName(file: string): string {
  return path
    .basename(file)
    .replace(/\.ko(\.\w+)?$/, '')
    .replace(/-/g, '_')
}

/**
 * Module files in load order: dependencies before their users. A wanted
 * driver this kernel has built in (armmp's mtd) has no file to load.
 */
function moduleClosure(root: string, version: string, wanted: string[]): Map<string, string> {
  const base = path.join(root, 'lib', 'modules', version)
  const builtIn = new Set(fs.readFileSync(path.join(base, 'modules.builtin'), 'utf8').split('\n').map(moduleName))
  const deps = new Map<string, string[]>()
  const files = new Map<string, string>()
  for (const line of fs.readFileSync(path.join(base, 'modules.dep'), 'utf8').split('\n')) {
    const [file, rest] = line.split(':')
    if (!file) continue
    const name = moduleName(file)
    files.set(name, path.join(base, file))
    deps.set(name, (rest ?? '').trim().split(/\s+/).filter(Boolean).map(moduleName))
  }
  const ordered = new Map<string, string>()
  const visit = (name: string): void => {
    if (ordered.has(name) || (builtIn.has(name) && !files.has(name))) return
    const file = files.get(name)
    if (!file) throw new Error(`lab: kernel module ${name} not found in ${base}`)
    for (const dep of deps.get(name) ?? []) visit(dep)
    ordered.set(name, file)
  }
  wanted.forEach(visit)
  return ordered
}

/**
 * What goes into the image besides ovroot itself: busybox, Node, the flash
 * tools, their libraries (found under sysroot), and koffi's native build.
 * The lab's own architecture takes this machine's binaries; another one is
 * assembled from the registries: Debian's packages for that architecture,
 * the npm registry's official Node binary and koffi's build for it.
 */
interface Userland {
  sysroot: string
  busybox: string
  node: string
  nodeVersion: string
  tools: string[]
  /** The @koromix/koffi-linux-ARCH package directory */
  koffi: string
  /** What identifies these inputs, for the rebuild check */
  identity: string[]
}

function hostUserland(arch: Architecture): Userland {
  const files = [process.execPath, '/bin/busybox', ...DEVICE_TOOLS]
  return {
    sysroot: '/',
    busybox: '/bin/busybox',
    node: process.execPath,
    nodeVersion: process.versions.node,
    tools: DEVICE_TOOLS,
    koffi: path.join(PROJECT, 'node_modules', '@koromix', `koffi-linux-${arch.node}`),
    identity: files.map((file) => `${file}:${fs.statSync(file).size}:${fs.statSync(file).mtimeMs}`),
  }
}

/** Debian packages and the lib* packages they depend on, transitively: one apt-cache call per level. */
function packageClosure(arch: Architecture, roots: string[]): string[] {
  const seen = new Set<string>()
  for (let level = roots; level.length > 0;) {
    for (const name of level) seen.add(name)
    const listing = aptCache([
      'depends',
      '--no-recommends',
      '--no-suggests',
      '--no-conflicts',
      '--no-breaks',
      '--no-replaces',
      '--no-enhances',
      ...level.map((name) => `${name}:${arch.debian}`),
    ])
    const dependencies = [...listing.matchAll(/^\s*(?:Pre)?Depends: (lib[^\s:<>]+)/gm)].map((found) => found[1] ?? '')
    level = [...new Set(dependencies)].filter((name) => name && !seen.has(name))
  }
  return [...seen].sort()
}

/** An npm package's tarball, unpacked: npm pack fetches it from the registry without installing. */
function npmPackage(spec: string, into: string): string {
  const dir = path.join(into, spec.replace(/[/@]/g, '_'))
  if (!fs.existsSync(path.join(dir, 'package', 'package.json'))) {
    fs.rmSync(dir, { recursive: true, force: true })
    fs.mkdirSync(dir, { recursive: true })
    const tarball = run('npm', ['pack', '--silent', spec], { cwd: dir }).trim().split('\n').pop() ?? ''
    run('tar', ['-xzf', tarball], { cwd: dir })
    fs.rmSync(path.join(dir, tarball))
  }
  return path.join(dir, 'package')
}

function foreignUserland(arch: Architecture): Userland {
  ensureDebianArchitecture(arch)
  const cache = path.join(CACHE, arch.name)
  const sysroot = path.join(cache, 'sysroot')
  // The assembled package list and its versions: a later build asks apt only for those versions (each
  // apt-cache call reads the whole multi-architecture index), and works out the closure again only when they moved.
  const stamp = path.join(cache, 'sysroot.json')
  const versionsOf = (packages: string[]): string =>
    aptCache(['policy', ...packages.map((name) => `${name}:${arch.debian}`)]).replace(
      /^\s+(Installed|Version table).*$/gm,
      '',
    )
  const recorded = fs.existsSync(stamp)
    ? (JSON.parse(fs.readFileSync(stamp, 'utf8')) as { roots?: string[]; packages: string[]; versions: string })
    : undefined
  // A package added to USERLAND_PACKAGES is in no recorded closure: the recorded roots must be today's.
  const sameRoots = recorded?.roots?.join() === USERLAND_PACKAGES.join()
  let versions = recorded && sameRoots ? versionsOf(recorded.packages) : ''
  if (!recorded || !sameRoots || versions !== recorded.versions) {
    const packages = packageClosure(arch, USERLAND_PACKAGES)
    versions = versionsOf(packages)
    log(`assembling the ${arch.name} userland from ${packages.length} Debian packages`)
    fs.rmSync(sysroot, { recursive: true, force: true })
    for (const deb of download(
      path.join(cache, 'download'),
      packages.map((name) => `${name}:${arch.debian}`),
    )) {
      run('dpkg-deb', ['-x', deb, sysroot])
      fs.rmSync(deb)
    }
    fs.writeFileSync(stamp, JSON.stringify({ roots: USERLAND_PACKAGES, packages, versions }))
  }
  const koffiVersion = (
    JSON.parse(fs.readFileSync(path.join(PROJECT, 'node_modules', 'koffi', 'package.json'), 'utf8')) as {
      version: string
    }
  ).version
  const nodeSpec = arch.nodePackage ?? `node-linux-${arch.node}@${process.versions.node}`
  const koffiSpec = `@koromix/koffi-linux-${arch.node}@${koffiVersion}`
  const nodePackage = npmPackage(nodeSpec, cache)
  return {
    sysroot,
    busybox: path.join(sysroot, 'bin', 'busybox'),
    node: path.join(nodePackage, 'bin', 'node'),
    nodeVersion: (JSON.parse(fs.readFileSync(path.join(nodePackage, 'package.json'), 'utf8')) as { version: string })
      .version,
    tools: DEVICE_TOOLS,
    koffi: npmPackage(koffiSpec, cache),
    identity: [versions, nodeSpec, koffiSpec],
  }
}

/** A path inside sysroot with every symlink resolved inside sysroot (absolute targets included). */
function resolveWithin(sysroot: string, file: string): string {
  if (sysroot === '/') return fs.realpathSync(file)
  let current = file
  for (let hops = 0; hops < 40; hops++) {
    const stat = fs.lstatSync(path.join(sysroot, current))
    if (!stat.isSymbolicLink()) return path.join(sysroot, current)
    const target = fs.readlinkSync(path.join(sysroot, current))
    current = path.isAbsolute(target) ? target : path.join(path.dirname(current), target)
  }
  throw new Error(`lab: too many symlinks resolving ${file} in ${sysroot}`)
}

/** Debian's packages still install some tools to /sbin and /bin rather than /usr/sbin and /usr/bin. */
function packagedPath(sysroot: string, tool: string): string {
  const unmerged = tool.replace(/^\/usr\//, '/')
  return fs.existsSync(path.join(sysroot, tool)) || !fs.existsSync(path.join(sysroot, unmerged)) ? tool : unmerged
}

/** Where the dynamic linker looks: this triplet's multiarch directories first. */
function findLibrary(arch: Architecture, sysroot: string, name: string): string {
  for (const dir of [`/lib/${arch.triplet}`, `/usr/lib/${arch.triplet}`, '/lib', '/usr/lib']) {
    const candidate = path.join(dir, name)
    if (fs.existsSync(path.join(sysroot, candidate))) return candidate
  }
  throw new Error(`lab: library ${name} not found in ${sysroot}`)
}

/** A binary (read from source, installed at target) and, transitively, the libraries its ELF headers name. */
function copyWithLibraries(arch: Architecture, sysroot: string, source: string, rootfs: string, target: string): void {
  copyFile(source, path.join(rootfs, target))
  const pending = [source]
  for (let binary = pending.shift(); binary !== undefined; binary = pending.shift()) {
    const interpreter = /program interpreter: ([^\]]+)\]/.exec(run('readelf', ['-lW', binary]))?.[1]
    const needed = [...run('readelf', ['-dW', binary]).matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map(
      (found) => findLibrary(arch, sysroot, found[1] ?? ''),
    )
    for (const library of interpreter ? [interpreter, ...needed] : needed) {
      if (fs.existsSync(path.join(rootfs, library))) continue
      const real = resolveWithin(sysroot, library)
      copyFile(real, path.join(rootfs, library))
      pending.push(real)
    }
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
function inputsDigest(arch: Architecture, kernelVersion: string, userland: Userland): string {
  const hash = createHash('sha256')
    .update(kernelVersion)
    .update(JSON.stringify([arch, MODULES, MEDIA_MODULES, DEVICE_TOOLS, userland.identity]))
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
  for (const dir of ['dist', 'init', 'etc', 'qemu/image', 'qemu/lab', 'node_modules/koffi/package.json'])
    addTree(path.join(PROJECT, dir))
  return hash.digest('hex')
}

function buildInitramfs(
  kernel: { root: string; version: string },
  userland: Userland,
  images: Images,
  staging: string,
): void {
  fs.rmSync(staging, { recursive: true, force: true })
  copyFile(userland.busybox, path.join(staging, 'bin', 'busybox'))
  copyFile(path.join(LAB, 'image', 'initramfs', 'init'), path.join(staging, 'init'))
  const modules = moduleClosure(kernel.root, kernel.version, [...MODULES, ...MEDIA_MODULES])
  for (const [name, file] of modules) copyFile(file, path.join(staging, 'lib', 'modules', `${name}.ko`))
  const generic = [...moduleClosure(kernel.root, kernel.version, MODULES).keys()]
  fs.writeFileSync(path.join(staging, 'modules.list'), `${generic.join('\n')}\n`)
  const list = run('find', ['.', '-print0'], { cwd: staging })
  const archive = execFileSync('cpio', ['-o', '-H', 'newc', '-0', '--quiet'], {
    cwd: staging,
    input: list,
    maxBuffer: 1 << 28,
  })
  fs.writeFileSync(images.initramfs, execFileSync('gzip', ['-1'], { input: archive, maxBuffer: 1 << 28 }))
}

/** busybox's applet links; this machine's busybox lists them (the same Debian version for every architecture). */
function installApplets(staging: string): void {
  for (const applet of run('/bin/busybox', ['--list-full']).split('\n').filter(Boolean)) {
    const link = path.join(staging, applet)
    if (fs.existsSync(link)) continue
    fs.mkdirSync(path.dirname(link), { recursive: true })
    fs.symlinkSync('/bin/busybox', link)
  }
}

function buildRootfs(arch: Architecture, userland: Userland, images: Images, staging: string): void {
  fs.rmSync(staging, { recursive: true, force: true })
  for (const dir of [
    'proc',
    'sys',
    'dev',
    'run',
    'tmp',
    'rom',
    'overlay',
    'mnt',
    'root',
    'etc',
    'usr/sbin',
    'usr/bin',
    'sbin',
    'bin',
    'var',
  ])
    fs.mkdirSync(path.join(staging, dir), { recursive: true })
  copyFile(userland.busybox, path.join(staging, 'bin', 'busybox'))
  installApplets(staging)
  copyTree(path.join(LAB, 'image', 'rootfs'), staging)
  copyFile(path.join(PROJECT, 'etc', 'ovroot.conf'), path.join(staging, 'etc', 'ovroot.conf'))
  copyFile(path.join(PROJECT, 'init', 'ovroot-init'), path.join(staging, 'sbin', 'ovroot-init'))
  copyWithLibraries(arch, userland.sysroot, userland.node, staging, '/usr/bin/node')
  for (const tool of userland.tools)
    copyWithLibraries(
      arch,
      userland.sysroot,
      resolveWithin(userland.sysroot, packagedPath(userland.sysroot, tool)),
      staging,
      tool,
    )
  const lib = path.join(staging, 'usr', 'lib', 'ovroot')
  copyTree(path.join(PROJECT, 'dist'), lib)
  // Node before 20.19 (npm's last armv7l build is 20.11) does not detect an ES module by its syntax: it
  // takes dist/ovroot.js for CommonJS unless a package.json says otherwise (README "Supported platforms").
  if (olderThan(userland.nodeVersion, [20, 19]))
    fs.writeFileSync(path.join(lib, 'package.json'), '{ "type": "module" }\n')
  copyTree(path.join(PROJECT, 'node_modules', 'koffi'), path.join(lib, 'node_modules', 'koffi'))
  // The device runs glibc: koffi's musl build for the same CPU would be dead weight.
  const native = path.join(lib, 'node_modules', '@koromix', `koffi-linux-${arch.node}`)
  copyTree(userland.koffi, native)
  for (const variant of fs.readdirSync(native))
    if (variant.startsWith('musl')) fs.rmSync(path.join(native, variant), { recursive: true })
  fs.symlinkSync('../lib/ovroot/ovroot.js', path.join(staging, 'usr', 'sbin', 'ovroot'))
  buildUnloadableInits(staging)
  squashFirmware(path.join(PROJECT, 'dist'), staging, images.rootfs)
}

function olderThan(version: string, [major, minor]: [number, number]): boolean {
  // npm's node-linux-* packages spell it v20.11.0.
  const [have = 0, haveMinor = 0] = version.replace(/^v/, '').split('.').map(Number)
  return have < major || (have === major && haveMinor < minor)
}

const EM_X86_64 = 62
const EM_AARCH64 = 183
const PT_INTERP = 3

/**
 * Inits that exist and are executable but that the kernel cannot run, made
 * from the image's own binaries, for the shim's fallback tests (ovroot.boot.init=):
 * a script whose interpreter is missing, a binary for another machine, a
 * binary whose program interpreter (ld.so) is missing, and a truncated binary
 * (execve succeeds; it dies at its first page fault beyond the end).
 */
function buildUnloadableInits(staging: string): void {
  const dir = path.join(staging, 'usr', 'lib', 'ovroot-lab', 'unloadable-init')
  fs.mkdirSync(dir, { recursive: true })
  const write = (name: string, content: Buffer | string): void => {
    fs.writeFileSync(path.join(dir, name), content)
    fs.chmodSync(path.join(dir, name), 0o755)
  }
  write('missing-interpreter', '#!/usr/bin/lua\nprint("never runs")\n')
  const busybox = fs.readFileSync(path.join(staging, 'bin', 'busybox'))
  write('truncated', busybox.subarray(0, busybox.length >> 1))
  const foreign = Buffer.from(busybox)
  const littleEndian = foreign[5] === 1
  const machine = littleEndian ? foreign.readUInt16LE(18) : foreign.readUInt16BE(18)
  const other = machine === EM_X86_64 ? EM_AARCH64 : EM_X86_64
  if (littleEndian) foreign.writeUInt16LE(other, 18)
  else foreign.writeUInt16BE(other, 18)
  write('other-machine', foreign)
  write(
    'missing-loader',
    withInterpreter(fs.readFileSync(path.join(staging, 'usr', 'sbin', 'mkfs.ext4')), '/lib/ld-missing.so.1'),
  )
}

/** A dynamically linked ELF (32- or 64-bit) with its program interpreter renamed (the new name no longer than the old). */
function withInterpreter(elf: Buffer, interpreter: string): Buffer {
  const copy = Buffer.from(elf)
  const littleEndian = copy[5] === 1
  const wide = copy[4] === 2
  const u16 = (at: number): number => (littleEndian ? copy.readUInt16LE(at) : copy.readUInt16BE(at))
  const u32 = (at: number): number => (littleEndian ? copy.readUInt32LE(at) : copy.readUInt32BE(at))
  const u64 = (at: number): number => Number(littleEndian ? copy.readBigUInt64LE(at) : copy.readBigUInt64BE(at))
  // ELF64 and ELF32 place the same fields at different offsets (and widths).
  const word = wide ? u64 : u32
  const phoff = word(wide ? 32 : 28)
  const [phentsize, phnum] = wide ? [u16(54), u16(56)] : [u16(42), u16(44)]
  for (let index = 0; index < phnum; index++) {
    const header = phoff + index * phentsize
    if (u32(header) !== PT_INTERP) continue
    const offset = word(header + (wide ? 8 : 4))
    const size = word(header + (wide ? 32 : 16))
    if (interpreter.length + 1 > size) throw new Error(`lab: ${interpreter} is longer than the interpreter it replaces`)
    copy.fill(0, offset, offset + size)
    copy.write(interpreter, offset, 'latin1')
    return copy
  }
  throw new Error('lab: the binary has no program interpreter')
}

/** Build what is missing or stale for this architecture; answer the image paths. One builder at a time. */
export function ensureImages(arch: Architecture, force = false): Images {
  fs.mkdirSync(BUILD, { recursive: true })
  fs.mkdirSync(CACHE, { recursive: true })
  const lock = path.join(CACHE, 'build.lock')
  takeBuildLock(lock)
  try {
    return buildIfStale(arch, force)
  } finally {
    fs.rmSync(lock, { recursive: true, force: true })
  }
}

/** The lock names its holder: a builder killed mid-build (a test run stopped) holds nobody up. */
export function takeBuildLock(lock: string): void {
  for (let waited = 0; ; waited++) {
    try {
      fs.mkdirSync(lock)
      fs.writeFileSync(path.join(lock, 'pid'), `${process.pid}\n`)
      return
    } catch {
      if (abandoned(lock)) fs.rmSync(lock, { recursive: true, force: true })
      else if (waited > 600) throw new Error(`lab: ${lock} held for 10 minutes; remove it if no build is running`)
      else execFileSync('sleep', ['1'])
    }
  }
}

/** Its holder is dead, or it names none 10 s after it was made (its maker died between the two steps). */
function abandoned(lock: string): boolean {
  let holder = 0
  try {
    holder = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8').trim())
  } catch {
    // No pid yet, or no lock any more (released: the next try takes it).
  }
  if (Number.isInteger(holder) && holder > 0) return !alive(holder)
  const made = fs.statSync(lock, { throwIfNoEntry: false })
  return made !== undefined && Date.now() - made.mtimeMs > 10_000
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ESRCH'
  }
}

function buildIfStale(arch: Architecture, force: boolean): Images {
  const images = imagesOf(arch)
  ensureDebianArchitecture(arch)
  const kernel = kernelTree(arch)
  const userland = arch === hostArchitecture() ? hostUserland(arch) : foreignUserland(arch)
  const digest = inputsDigest(arch, kernel.version, userland)
  const stamp = path.join(images.dir, 'inputs.sha256')
  const fresh =
    !force &&
    fs.existsSync(stamp) &&
    fs.readFileSync(stamp, 'utf8') === digest &&
    [images.kernel, images.initramfs, images.rootfs].every((file) => fs.existsSync(file))
  if (fresh) return images
  log(`building ${arch.name} images (kernel ${kernel.version})`)
  fs.mkdirSync(images.dir, { recursive: true })
  copyFile(path.join(kernel.root, 'boot', `vmlinuz-${kernel.version}`), images.kernel)
  buildInitramfs(kernel, userland, images, path.join(CACHE, arch.name, 'initramfs-staging'))
  buildRootfs(arch, userland, images, path.join(CACHE, arch.name, 'rootfs-staging'))
  fs.writeFileSync(stamp, digest)
  log(`images ready in ${path.relative(PROJECT, images.dir)}/`)
  return images
}
