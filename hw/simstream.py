"""Stream drivers for the Amaranth simulator: pack/unpack beats, send and receive them
under random input gaps and output stalls, and time every transfer.

Used by the unit tests of every engine and by the benchmarks (no pytest dependency).
A transfer happens on a clock edge where ``valid`` and ``ready`` are both high, sampled
just before the edge; cycle numbers count edges from the start of the simulation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# one definition of the beat packing (DESIGN.md, "Packing")
from .stream_util import pack_beat as pack
from .stream_util import raw_payload
from .stream_util import unpack_beat as unpack

__all__ = ["pack", "unpack", "Source", "Sink", "run"]


@dataclass
class Source:
    """Offers ``beats`` (raw payload ints) on ``port``; idle with probability ``gap``."""

    port: object
    beats: list
    gap: float = 0.0
    extra: list = field(default_factory=list)  # (signal, per-beat values) pairs, e.g. tlast
    times: list = field(default_factory=list)

    async def run(self, ctx, rng, clock):
        payload = raw_payload(self.port.payload)
        k = 0
        offering = False
        while k < len(self.beats):
            if not offering and (self.gap <= 0 or rng.random() >= self.gap):
                ctx.set(payload, self.beats[k])
                for sig, vals in self.extra:
                    ctx.set(sig, vals[k])
                ctx.set(self.port.valid, 1)
                offering = True
            _, _, ready = await ctx.tick().sample(self.port.ready)
            if offering and ready:
                self.times.append(clock[0])
                k += 1
                offering = False
                ctx.set(self.port.valid, 0)


@dataclass
class Sink:
    """Takes ``count`` beats from ``port``; not ready with probability ``stall``."""

    port: object
    count: int
    stall: float = 0.0
    extra: tuple = ()  # further signals sampled with every beat (e.g. tlast)
    beats: list = field(default_factory=list)
    extras: list = field(default_factory=list)
    times: list = field(default_factory=list)

    async def run(self, ctx, rng, clock):
        payload = raw_payload(self.port.payload)
        while len(self.beats) < self.count:
            ready = self.stall <= 0 or rng.random() >= self.stall
            ctx.set(self.port.ready, int(ready))
            _, _, valid, data, *ext = await ctx.tick().sample(self.port.valid, payload, *self.extra)
            if valid and ready:
                self.beats.append(int(data))
                self.extras.append(tuple(int(e) for e in ext))
                self.times.append(clock[0])
        ctx.set(self.port.ready, 0)


def run(dut, sources, sinks, seed: int = 0, max_cycles: int = 200_000, settle: int = 0):
    """Simulate ``dut`` until every sink has its beats; raise if ``max_cycles`` pass first.

    After the sinks are done, runs ``settle`` more cycles and checks that no sink port
    offers an unexpected extra beat (duplicated or spurious output).
    """
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    # A purely combinational DUT has no sync domain; a toggling flop gives it one.
    top = Module()
    top.submodules.dut = dut
    toggle = Signal()
    top.d.sync += toggle.eq(~toggle)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    rng = np.random.default_rng(seed)
    clock = [0]
    finished = []
    extra_beats = []

    async def counter(ctx):
        while True:
            await ctx.tick()
            clock[0] += 1

    async def bench(ctx):
        # The drivers run as background testbenches; this one only watches the deadline.
        while not all(len(s.beats) >= s.count for s in sinks):
            await ctx.tick()
            if clock[0] > max_cycles:
                raise TimeoutError(
                    f"simulation did not finish in {max_cycles} cycles: sinks got "
                    f"{[len(s.beats) for s in sinks]} of {[s.count for s in sinks]} beats, sources sent "
                    f"{[len(s.times) for s in sources]} of {[len(s.beats) for s in sources]}"
                )
        for _ in range(settle):
            for s in sinks:
                ctx.set(s.port.ready, 1)
            _, _, *valids = await ctx.tick().sample(*[s.port.valid for s in sinks])
            if any(valids):
                extra_beats.append(clock[0])
        finished.append(True)

    sim.add_process(counter)
    for s in list(sources) + list(sinks):
        sim.add_testbench(_bind(s, rng, clock), background=True)
    sim.add_testbench(bench)
    sim.run()
    if extra_beats:
        raise AssertionError(f"output offered beats beyond the expected count at cycles {extra_beats[:5]}")
    return sinks


def _bind(driver, rng, clock):
    async def proc(ctx):
        await driver.run(ctx, rng, clock)
    return proc


class _Port:
    def __init__(self, payload, valid, ready):
        self.payload, self.valid, self.ready = payload, valid, ready


def simulate_top(graph, codes, gap: float = 0.0, stall: float = 0.0, seed: int = 0, max_cycles: int = 2_000_000):
    """Run an :class:`~accumulus.hw.top.AcceleratorTop` of ``graph`` (a GraphSpec) on input
    codes ``(B, *shape)`` in stream order through its AXI-Stream ports.

    Returns ``(outputs (B, out_frame), tlast flags per beat, cycle of every output beat)``.
    """
    top = graph.create()
    codes = np.asarray(codes, dtype=np.int64)
    b = codes.shape[0]
    it, ot = graph.in_type, graph.out_type
    beats = [pack(v, it.bits) for v in codes.reshape(-1, graph.in_elems)]
    last = [int((k + 1) % graph.in_beats == 0) for k in range(len(beats))]
    src = Source(_Port(top.s_axis_tdata, top.s_axis_tvalid, top.s_axis_tready), beats, gap=gap,
                 extra=[(top.s_axis_tlast, last)])
    snk = Sink(_Port(top.m_axis_tdata, top.m_axis_tvalid, top.m_axis_tready), b * graph.out_beats, stall=stall,
               extra=(top.m_axis_tlast,))
    run(top, [src], [snk], seed=seed, max_cycles=max_cycles, settle=8)
    out = np.array([unpack(w, graph.out_elems, ot.bits, ot.signed) for w in snk.beats]).reshape(b, -1)
    return out, [e[0] for e in snk.extras], snk.times
