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


def raw_payload(payload):
    """A payload as a plain value (a layout-typed payload is set and read as an integer)."""
    return payload.as_value() if hasattr(payload, "as_value") else payload


async def stream_send(ctx, stream, beats, rng=None, gap: float = 0.0):
    """Offer ``beats`` on ``stream`` in order; before each beat, idle with probability ``gap``."""
    for beat in beats:
        while rng is not None and gap and rng.random() < gap:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(raw_payload(stream.payload), beat)
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
        _, _, valid, payload = await ctx.tick().sample(stream.valid, raw_payload(stream.payload))
        if ready and valid:
            out.append(payload)
            if times is not None:
                times.append(cycle)
        cycle += 1
    ctx.set(stream.ready, 0)
    return out


def simulate_stream(dut, in_beats, out_count: int, *, rng=None, gap: float = 0.0, stall: float = 0.0,
                    count=None, max_cycles: int = 200_000) -> dict:
    """Run a component with stream ports ``i``/``o`` in the Amaranth simulator.

    Offers ``in_beats`` (random gaps with probability ``gap``), takes ``out_count`` beats
    (random stalls with probability ``stall``) and returns ``{"out": beats, "in_times":
    cycles of input handshakes, "out_times": cycles of output handshakes, "out_valid_first":
    first cycle o.valid was high, "count": cycles where signal ``count`` was high,
    "count_times": those cycles, "cycles": cycles run}``.
    """
    from amaranth.sim import Simulator

    res = {"out": [], "in_times": [], "out_times": [], "out_valid_first": None, "count": 0, "count_times": [],
           "cycles": 0}
    probe = count if count is not None else dut.o.valid

    async def source(ctx):
        await stream_send(ctx, dut.i, in_beats, rng, gap)

    async def sink(ctx):
        res["out"] = await stream_recv(ctx, dut.o, out_count, rng, stall)

    async def monitor(ctx):
        cycle = 0
        async for _, _, iv, ir, ov, ordy, c in ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid,
                                                                 dut.o.ready, probe):
            if iv and ir:
                res["in_times"].append(cycle)
            if ov and ordy:
                res["out_times"].append(cycle)
            if ov and res["out_valid_first"] is None:
                res["out_valid_first"] = cycle
            if count is not None and c:
                res["count"] += 1
                res["count_times"].append(cycle)
            cycle += 1
            res["cycles"] = cycle
            if cycle > max_cycles:
                raise RuntimeError(f"simulation passed {max_cycles} cycles: the design hangs")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return res
