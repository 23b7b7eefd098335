"""Helpers around ``amaranth.lib.stream``: beat packing and simulator drivers/monitors.

The drivers are for Amaranth-simulator testbenches (``async def bench(ctx)``): a source
that inserts random gaps between beats and a sink that stalls at random, so every test
exercises the handshake at any cycle.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pack_beat", "unpack_beat", "pack_beats", "unpack_beats", "stream_send", "stream_recv"]


def pack_beat(values, width: int) -> int:
    """Elements -> one beat, element ``j`` in bits ``[j*width, (j+1)*width)`` (two's complement)."""
    mask = (1 << width) - 1
    beat = 0
    for j, v in enumerate(values):
        beat |= (int(v) & mask) << (j * width)
    return beat


def unpack_beat(beat: int, elems: int, width: int, signed: bool) -> list[int]:
    mask = (1 << width) - 1
    out = []
    for j in range(elems):
        v = (int(beat) >> (j * width)) & mask
        if signed and v >> (width - 1):
            v -= 1 << width
        out.append(v)
    return out


def pack_beats(vectors, elems: int, width: int) -> list[int]:
    """``(B, L)`` vectors -> a flat list of beats, ``L/elems`` per vector in stream order."""
    vectors = np.asarray(vectors)
    beats = []
    for row in vectors.reshape(vectors.shape[0], -1):
        for s in range(0, row.size, elems):
            beats.append(pack_beat(row[s:s + elems], width))
    return beats


def unpack_beats(beats, elems: int, width: int, signed: bool, per_vector: int) -> np.ndarray:
    """A flat list of beats -> ``(B, per_vector*elems)`` int64 array."""
    flat = [v for b in beats for v in unpack_beat(b, elems, width, signed)]
    return np.asarray(flat, dtype=np.int64).reshape(-1, per_vector * elems)


async def stream_send(ctx, stream, beats, rng=None, gap: float = 0.0):
    """Offer ``beats`` on ``stream`` in order; before each beat, idle with probability ``gap``."""
    for beat in beats:
        while rng is not None and gap and rng.random() < gap:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.payload, beat)
        ctx.set(stream.valid, 1)
        await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_recv(ctx, stream, count: int, rng=None, stall: float = 0.0, times: list | None = None):
    """Take ``count`` beats from ``stream``, dropping ``ready`` with probability ``stall`` each
    cycle; returns the beats (and appends each beat's cycle number to ``times``)."""
    out, cycle = [], 0
    while len(out) < count:
        ready = not (rng is not None and stall and rng.random() < stall)
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            out.append(payload)
            if times is not None:
                times.append(cycle)
        cycle += 1
    ctx.set(stream.ready, 0)
    return out
