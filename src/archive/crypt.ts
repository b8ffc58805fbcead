/**
 * Passphrase encryption of a backup, authenticated chunk by chunk so that a
 * restore verifies as it streams and never holds the archive in memory.
 *
 *   header:  "OVROOTE1" | salt (16) | log2 N, r, p (3 bytes) | nonce prefix (8) | key check (16)
 *   chunks:  length (u32 BE, at most 64 KiB) | AES-256-GCM ciphertext | tag (16)
 *
 * The key is scrypt(passphrase, salt, N=2^15, r=8, p=1): 32 MiB of memory per
 * guess. Chunk i's nonce is the prefix and i (u32 BE); its additional data is
 * the header and a final flag (1 on the last chunk only), so chunks cannot be
 * reordered, dropped or cut off at the end. The key check, an HMAC of the
 * header under a second derived key, tells a wrong passphrase from tampering.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'
import { ExitCode, OvrootError } from '../errors.js'
import { readTextFile } from '../sys/fs.js'

export const ENCRYPTED_MAGIC = Buffer.from('OVROOTE1')
const HEADER_BYTES = 8 + 16 + 3 + 8 + 16
const CHUNK = 64 * 1024
const TAG = 16
const SCRYPT = { log2N: 15, r: 8, p: 1 }

interface Keys {
  cipher: Buffer
  check: Buffer
}

/**
 * The last derivation, kept: a live restore reads the archive twice (verify,
 * then stage), and each derivation costs 32 MiB and a good fraction of a
 * second on a device.
 */
let lastDerived: { input: Buffer; keys: Keys } | undefined

function deriveKeys(passphrase: Buffer, salt: Buffer, log2N: number, r: number, p: number): Keys {
  const input = Buffer.concat([salt, Buffer.from([log2N, r, p]), passphrase])
  if (lastDerived?.input.equals(input)) return lastDerived.keys
  const derived = scryptSync(passphrase, salt, 64, { N: 2 ** log2N, r, p, maxmem: 64 << 20 })
  const keys = { cipher: derived.subarray(0, 32), check: derived.subarray(32) }
  lastDerived = { input, keys }
  return keys
}

/** The passphrase file's content, without one trailing newline (as `echo pass > file` leaves it). */
export function readPassphrase(file: string): Buffer {
  const text = readTextFile(file).replace(/\r?\n$/, '')
  if (text.length === 0) throw new OvrootError('EPASSPHRASE', ExitCode.usage, `${file}: the passphrase file is empty`)
  return Buffer.from(text)
}

const nonce = (prefix: Buffer, index: number): Buffer => {
  const value = Buffer.alloc(12)
  prefix.copy(value, 0)
  value.writeUInt32BE(index, 8)
  return value
}
const aad = (header: Buffer, final: boolean): Buffer => Buffer.concat([header, Buffer.from([final ? 1 : 0])])

export class Encrypt extends Transform {
  private readonly header: Buffer
  private readonly key: Buffer
  private readonly prefix = randomBytes(8)
  private pending = Buffer.alloc(0)
  private index = 0

  constructor(passphrase: Buffer) {
    super()
    const salt = randomBytes(16)
    const keys = deriveKeys(passphrase, salt, SCRYPT.log2N, SCRYPT.r, SCRYPT.p)
    this.key = keys.cipher
    const unchecked = Buffer.concat([
      ENCRYPTED_MAGIC,
      salt,
      Buffer.from([SCRYPT.log2N, SCRYPT.r, SCRYPT.p]),
      this.prefix,
    ])
    this.header = Buffer.concat([
      unchecked,
      createHmac('sha256', keys.check).update(unchecked).digest().subarray(0, 16),
    ])
    this.push(this.header)
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.pending = Buffer.concat([this.pending, chunk])
    // Keep the last chunk back: only at the end is it known to be the final one.
    while (this.pending.length > CHUNK) {
      this.seal(this.pending.subarray(0, CHUNK), { final: false })
      this.pending = this.pending.subarray(CHUNK)
    }
    done()
  }

  override _flush(done: TransformCallback): void {
    this.seal(this.pending, { final: true })
    done()
  }

  private seal(plain: Buffer, { final }: { final: boolean }): void {
    const cipher = createCipheriv('aes-256-gcm', this.key, nonce(this.prefix, this.index++))
    cipher.setAAD(aad(this.header, final))
    const body = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()])
    const length = Buffer.alloc(4)
    length.writeUInt32BE(body.length - TAG)
    this.push(Buffer.concat([length, body]))
  }
}

const tampered = (what: string): OvrootError =>
  new OvrootError('ETAMPERED', ExitCode.data, `encrypted backup is damaged or was tampered with (${what})`)

export class Decrypt extends Transform {
  private header: Buffer | undefined
  private key: Buffer | undefined
  private pending = Buffer.alloc(0)
  private index = 0
  private sawFinal = false

  constructor(private readonly passphrase: Buffer) {
    super()
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.pending = Buffer.concat([this.pending, chunk])
    try {
      this.drain({ atEnd: false })
      done()
    } catch (error) {
      done(error as Error)
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      this.drain({ atEnd: true })
      if (!this.sawFinal) throw tampered('it ends before its last chunk: truncated')
      done()
    } catch (error) {
      done(error as Error)
    }
  }

  private drain({ atEnd }: { atEnd: boolean }): void {
    if (!this.header) {
      if (this.pending.length < HEADER_BYTES) {
        if (atEnd) throw tampered('shorter than its header')
        return
      }
      this.openHeader(this.pending.subarray(0, HEADER_BYTES))
      this.pending = this.pending.subarray(HEADER_BYTES)
    }
    for (;;) {
      if (this.pending.length < 4) break
      const length = this.pending.readUInt32BE(0)
      if (length > CHUNK) throw tampered(`chunk ${this.index} claims ${length} bytes`)
      const total = 4 + length + TAG
      // Whether a chunk is the last is known only once something follows it, or the stream ends.
      if (this.pending.length < total || (!atEnd && this.pending.length === total)) break
      const final = atEnd && this.pending.length === total
      this.open(this.pending.subarray(4, 4 + length), this.pending.subarray(4 + length, total), { final })
      this.pending = this.pending.subarray(total)
    }
    if (atEnd && this.pending.length > 0) throw tampered('it ends inside a chunk: truncated')
  }

  private openHeader(header: Buffer): void {
    if (!header.subarray(0, 8).equals(ENCRYPTED_MAGIC)) throw tampered('no ovroot encryption header')
    const [log2N = 0, r = 0, p = 0] = header.subarray(24, 27)
    // Only what backup writes: the parameters are read before anything can be checked, so any other value is an attacker's choice of cost.
    if (log2N !== SCRYPT.log2N || r !== SCRYPT.r || p !== SCRYPT.p)
      throw tampered(
        `key-derivation parameters N=2^${log2N} r=${r} p=${p}, not the N=2^${SCRYPT.log2N} r=${SCRYPT.r} p=${SCRYPT.p} ovroot writes`,
      )
    const keys = deriveKeys(this.passphrase, header.subarray(8, 24), log2N, r, p)
    const check = createHmac('sha256', keys.check)
      .update(header.subarray(0, HEADER_BYTES - 16))
      .digest()
      .subarray(0, 16)
    if (!timingSafeEqual(check, header.subarray(HEADER_BYTES - 16)))
      throw new OvrootError('EPASSPHRASE', ExitCode.data, 'wrong passphrase for this encrypted backup')
    this.header = header
    this.key = keys.cipher
  }

  private open(ciphertext: Buffer, tag: Buffer, { final }: { final: boolean }): void {
    const decipher = createDecipheriv(
      'aes-256-gcm',
      this.key ?? Buffer.alloc(32),
      nonce((this.header ?? Buffer.alloc(HEADER_BYTES)).subarray(27, 35), this.index),
    )
    decipher.setAAD(aad(this.header ?? Buffer.alloc(0), final))
    decipher.setAuthTag(tag)
    try {
      this.push(Buffer.concat([decipher.update(ciphertext), decipher.final()]))
    } catch {
      throw tampered(`chunk ${this.index} fails authentication`)
    }
    this.index++
    this.sawFinal = final
  }
}
