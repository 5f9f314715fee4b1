#!/usr/bin/env python3
"""Writes the seed inputs of fuzz_ring (tests/runtime/fuzz_corpus_ring/): client scripts in the
format fuzz_ring.c describes. Run from the repository root after changing that format."""
import os
import struct

SQE, SQIX, CQIX, REAP, POKE, STEP = range(6)
TAIL, HEAD, WAKE, SLEEPING, SPACE, SPACE_SLEEPING = range(6)
SQ_OFF = 4096  # seg_layout: the SQ ring right after the header page
DIR = 'tests/runtime/fuzz_corpus_ring'
OPS = 'tests/runtime/fuzz_corpus'


def sqe(opcode=0, tag=0, seq=0, out_off=0, out_len=0):
    return bytes([SQE]) + struct.pack('<BBHIQQQQQQQ', opcode, 0, 0, seq, tag, 0, 0, 0, 0,
                                      out_off, out_len)


def ops_entries(name):
    """The entries of a fuzz_ops seed, each as a submit command."""
    b = open(os.path.join(OPS, name), 'rb').read()
    return b''.join(bytes([SQE]) + b[i:i + 64] for i in range(0, len(b), 64))


def base(v):
    return struct.pack('<I', v)


def ix(cmd, field, v):
    return bytes([cmd, field]) + struct.pack('<I', v & 0xffffffff)


def step(n):
    return bytes([STEP, n - 1])


def reap(n):
    return bytes([REAP, n])


seeds = {
    # Mostly valid entries of every kind, as fuzz_ops' seeds have them, served in one go.
    'valid': base(0) + ops_entries('mixed') + ops_entries('open_close') + step(8),
    'valid_each': base(0) + b''.join(ops_entries(n) + step(1) + reap(1) for n in
                                     ('noop', 'stats', 'select', 'select_cap', 'fetch',
                                      'append')),
    # Both 32-bit indexes wrap and the small rings go round twice.
    'wrapped': base(0xfffffffa) + b''.join(sqe(tag=t) + step(1) + reap(1) for t in range(12)),
    # The client publishes a tail far past what it wrote, then one past the ring's size.
    'bogus_tail': base(0) + sqe(tag=1) + ix(SQIX, TAIL, 1000) + step(1),
    'overfill': base(7) + b''.join(sqe(tag=t) for t in range(9)) + step(4),
    # The client never reaps: the CQ fills, a completion is held, then it reaps a little.
    'full_cq': base(0) + b''.join(sqe(tag=t) for t in range(7)) + step(7) + reap(2) + step(3),
    # The CQ's consumer index moved where the daemon never produced.
    'bogus_cq_head': base(0x100) + sqe(tag=1) + sqe(tag=2) + ix(CQIX, HEAD, 0x100 + 77) + step(2),
    # A racing client: it rewrites the daemon's own SQ head, asks for wake-ups on both rings
    # and rewrites a submitted entry before the daemon takes it.
    'race': base(3) + sqe(tag=5) + ix(SQIX, HEAD, 0xdead) + ix(SQIX, SLEEPING, 1) +
            ix(CQIX, SPACE_SLEEPING, 1) + bytes([POKE]) + struct.pack('<H', (SQ_OFF + 320 + 3 * 64) // 8) +
            bytes([16]) + struct.pack('<QQ', 1, 99) + step(2) + reap(4),
}
os.makedirs(DIR, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(DIR, name), 'wb') as f:
        f.write(data)
