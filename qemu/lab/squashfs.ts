/**
 * How the lab makes a firmware image from a root directory, for the built
 * image and for the tests' later firmware alike (test/helpers/firmware.ts):
 * the firmware manifest ovroot writes (`ovroot manifest`), then mksquashfs
 * with the lab's options.
 */
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import * as path from 'node:path'

/** Where a firmware ships its manifest (src/upgrade/manifest.ts): the lab's images carry one. */
export const MANIFEST = 'usr/lib/ovroot/firmware.manifest'

/** ROOT's manifest, written by the project's ovroot (DIST/ovroot.js) into ROOT, then ROOT squashed into IMAGE. */
export function squashFirmware(dist: string, root: string, image: string): void {
  // The host's node: the command runs here, on the tree, whatever CPU the image is for.
  execFileSync(
    process.execPath,
    [path.join(dist, 'ovroot.js'), 'manifest', root, '--output', path.join(root, MANIFEST)],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  )
  fs.rmSync(image, { force: true })
  execFileSync('mksquashfs', [root, image, '-comp', 'lz4', '-all-root', '-noappend', '-quiet', '-no-progress'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
}
