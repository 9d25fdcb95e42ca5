/**
 * oldFormatPackets: the framing GRUB 2.06 reads right (it decodes a new-format
 * two-octet length without the `+ 192`). Only headers change; bodies are kept.
 */
import { describe, expect, it } from 'vitest';
import { oldFormatPackets } from '../../publisher/src/bootsign.js';

const body = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => i & 0xff);

describe('oldFormatPackets', () => {
  it('rewrites one-, two- and five-octet new-format lengths as old-format headers of the right size', () => {
    // tag 6 (public key), 397 bytes: new-format 0xc6, two-octet length (1 + 205 + 192 → 192, 205).
    const b397 = body(397);
    const out = oldFormatPackets(Uint8Array.from([0xc6, 192, 205, ...b397]), 'key');
    expect([...out.subarray(0, 3)]).toEqual([0x80 | (6 << 2) | 1, 397 >> 8, 397 & 0xff]);
    expect(Buffer.from(out.subarray(3))).toEqual(Buffer.from(b397));
    // tag 13 (user id), 11 bytes, one-octet; then tag 2, 70000 bytes, five-octet → old four-octet.
    const big = body(70000);
    const five = [0xc2, 255, 0, 1, 0x11, 0x70, ...big];
    const two = oldFormatPackets(Uint8Array.from([0xcd, 11, ...body(11), ...five]), 'mixed');
    expect([...two.subarray(0, 2)]).toEqual([0x80 | (13 << 2), 11]);
    expect([...two.subarray(13, 18)]).toEqual([0x80 | (2 << 2) | 2, 0, 1, 0x11, 0x70]);
    expect(two.length).toBe(2 + 11 + 5 + 70000);
    // Old-format input stays as it is.
    expect(Buffer.from(oldFormatPackets(out, 'again'))).toEqual(Buffer.from(out));
  });

  it('refuses what has no old-format form or is not a packet stream, naming it', () => {
    expect(() => oldFormatPackets(Uint8Array.from([0xc2, 0xe1, 1, 2]), 'sig')).toThrow(/sig: packet at byte 0 uses a partial body length/);
    expect(() => oldFormatPackets(Uint8Array.from([0xd1, 1, 0]), 'key')).toThrow(/key: packet tag 17 has no old-format header/);
    expect(() => oldFormatPackets(Uint8Array.from([0x41]), 'key')).toThrow(/byte 0 is not an OpenPGP packet header/);
    expect(() => oldFormatPackets(Uint8Array.from([0xc6, 5, 1]), 'key')).toThrow(/packet at byte 0 is truncated/);
  });
});
