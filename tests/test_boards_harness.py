"""The UART harness in Amaranth's simulator: bytes in, packed beats with tlast, bytes out.

A stand-in core (an ArgMax over each frame, ties to the lowest index, as DESIGN.md's
ArgMax unit) checks the harness alone; the test against the generated top and the golden
model lives in test_boards_bitstream.py.
"""
from __future__ import annotations

import numpy as np
import pytest

amaranth = pytest.importorskip("amaranth")

from amaranth.hdl import C, Elaboratable, Module, Mux, Signal  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402

from accumulus.boards.harness import UARTHarness, VerilogTop, verilog_ports  # noqa: E402


class ArgMaxCore(Elaboratable):
    """Frames of ``in_elems``-element beats -> one beat: index of the first maximum."""

    def __init__(self, in_elems, in_width, out_bits=8):
        self.n, self.w = in_elems, in_width
        self.s_axis_tdata = Signal(in_elems * in_width)
        self.s_axis_tvalid = Signal()
        self.s_axis_tready = Signal()
        self.s_axis_tlast = Signal()
        self.m_axis_tdata = Signal(out_bits)
        self.m_axis_tvalid = Signal()
        self.m_axis_tready = Signal()
        self.m_axis_tlast = Signal()
        self.beats_seen = Signal(16)

    def elaborate(self, platform):
        m = Module()
        best = Signal(self.w)
        idx = Signal(16)
        best_idx = Signal(16)
        have = Signal()
        m.d.comb += [self.s_axis_tready.eq(~self.m_axis_tvalid), self.m_axis_tlast.eq(1)]
        with m.If(self.m_axis_tvalid & self.m_axis_tready):
            m.d.sync += self.m_axis_tvalid.eq(0)
        with m.If(self.s_axis_tvalid & self.s_axis_tready):
            m.d.sync += self.beats_seen.eq(self.beats_seen + 1)
            # Unrolled over the beat: element i beats the best if strictly greater.
            cur_best, cur_idx, cur_have = best, best_idx, have
            for i in range(self.n):
                e = self.s_axis_tdata[i * self.w:(i + 1) * self.w]
                take = ~cur_have | (e > cur_best)
                cur_best = Mux(take, e, cur_best)
                cur_idx = Mux(take, idx + i, cur_idx)
                cur_have = C(1, 1)
            m.d.sync += [best.eq(cur_best), best_idx.eq(cur_idx), have.eq(1), idx.eq(idx + self.n)]
            with m.If(self.s_axis_tlast):
                m.d.sync += [self.m_axis_tdata.eq(cur_idx), self.m_axis_tvalid.eq(1), have.eq(0), idx.eq(0)]
        return m


def _simulate(harness, core, frames, divisor, max_cycles):
    """Send ``frames`` byte by byte over RX; decode TX bytes; return (bytes, beats seen by the core)."""
    sim = Simulator(harness)
    sim.add_clock(1e-6)
    received = []
    expect = len(frames) * harness.out_bytes

    async def sender(ctx):
        ctx.set(harness.rx, 1)
        await ctx.tick().repeat(5)
        for frame in frames:
            for byte in frame:
                bits = [0] + [(int(byte) >> i) & 1 for i in range(8)] + [1]
                for b in bits:
                    ctx.set(harness.rx, b)
                    await ctx.tick().repeat(divisor)

    async def receiver(ctx):
        cycles = 0
        while len(received) < expect and cycles < max_cycles:
            await ctx.tick()
            cycles += 1
            if ctx.get(harness.tx) == 0:       # start bit: sample mid-bit from here
                await ctx.tick().repeat(divisor // 2)
                value = 0
                for i in range(8):
                    await ctx.tick().repeat(divisor)
                    value |= ctx.get(harness.tx) << i
                await ctx.tick().repeat(divisor)
                assert ctx.get(harness.tx) == 1, "stop bit must be high"
                received.append(value)
                cycles += 10 * divisor

    sim.add_testbench(sender, background=True)
    sim.add_testbench(receiver)
    sim.run()
    return received


@pytest.mark.parametrize("in_elems", [1, 4])
def test_harness_round_trip_argmax(in_elems):
    rng = np.random.default_rng(in_elems)
    frame_elems, width, divisor = 16, 5, 4
    frames = rng.integers(0, 17, size=(3, frame_elems))
    frames[1, 3] = frames[1, 9] = 31            # a tie: the lower index wins
    core = ArgMaxCore(in_elems, width)
    harness = UARTHarness(core, in_elems=in_elems, in_width=width, frame_elems=frame_elems, out_bits=8,
                          divisor=divisor, fifo_depth=8)
    got = _simulate(harness, core, frames, divisor, max_cycles=frame_elems * 3 * 12 * divisor + 2000)
    want = [int(np.argmax(f)) for f in frames]
    assert got == want


def test_harness_multibyte_output_lsb_first():
    class Echo(ArgMaxCore):
        """Outputs the last beat's data zero-extended to 12 bits (two bytes)."""

        def elaborate(self, platform):
            m = Module()
            m.d.comb += [self.s_axis_tready.eq(~self.m_axis_tvalid), self.m_axis_tlast.eq(1)]
            with m.If(self.m_axis_tvalid & self.m_axis_tready):
                m.d.sync += self.m_axis_tvalid.eq(0)
            with m.If(self.s_axis_tvalid & self.s_axis_tready & self.s_axis_tlast):
                m.d.sync += [self.m_axis_tdata.eq(self.s_axis_tdata), self.m_axis_tvalid.eq(1)]
            return m

    core = Echo(2, 6, out_bits=12)
    harness = UARTHarness(core, in_elems=2, in_width=6, frame_elems=4, out_bits=12, divisor=4)
    got = _simulate(harness, core, [[1, 2, 0x3F, 0x2A]], 4, max_cycles=4000)
    word = 0x3F | (0x2A << 6)                    # elements 2 and 3 of the frame, element 0 low
    assert got == [word & 0xFF, word >> 8]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_harness_validates_parameters():
    core = ArgMaxCore(4, 5)
    with pytest.raises(ValueError, match="frame_elems=10"):
        UARTHarness(core, in_elems=4, in_width=5, frame_elems=10, out_bits=8, divisor=4)
    with pytest.raises(ValueError, match="in_width=9"):
        UARTHarness(core, in_elems=4, in_width=9, frame_elems=8, out_bits=8, divisor=4)
    with pytest.raises(TypeError, match="divisor"):
        UARTHarness(core, in_elems=4, in_width=5, frame_elems=8, out_bits=8, divisor=4.5)


def test_verilog_ports_parses_amaranth_style_declarations():
    text = """
module accumulus_top(clk, rst, s_axis_tdata, s_axis_tvalid);
  input clk;
  wire clk;
  input rst;
  input [39:0] s_axis_tdata;
  output s_axis_tready;
  output [7:0] m_axis_tdata;
endmodule
"""
    ports = verilog_ports(text)
    assert ports["s_axis_tdata"] == 40 and ports["m_axis_tdata"] == 8 and ports["clk"] == 1
    with pytest.raises(ValueError, match="lacks the AXI-Stream ports"):
        VerilogTop.from_verilog(text)


@pytest.mark.parametrize("board_id,pattern", [("ulx3s-85f", r'FREQUENCY PORT "clk25_0__io" ([0-9.]+) HZ;'),
                                              ("icebreaker", r"set_frequency clk12_0__io ([0-9.]+)")])
def test_pnr_clock_constraint_retargets(board_id, pattern):
    """``report --pnr-clock-mhz``: the generated constraint file asks place and route for the
    given clock instead of the oscillator's; without it the oscillator's stays."""
    import re

    from accumulus.boards.boards import load_board
    from accumulus.boards.pnr import harness_build_plan

    board = load_board(board_id)
    params = {"in_elems": 4, "in_width": 8, "frame_elems": 16, "out_bits": 8, "in_bits": 32, "out_beats_per_frame": 1}
    files = {"accumulus_top.v": "module accumulus_top(); endmodule\n"}

    def constraints(plan):
        return [float(v) for t in plan.files.values() if isinstance(t, str) for v in re.findall(pattern, t)]

    unit = 1e6 if board_id == "ulx3s-85f" else 1.0
    assert constraints(harness_build_plan(board, files, params)) == [board.clock_mhz * unit]
    assert constraints(harness_build_plan(board, files, params, clock_mhz=150.0)) == [150.0 * unit]
    with pytest.raises(Exception, match="positive"):
        harness_build_plan(board, files, params, clock_mhz=0)


@pytest.mark.parametrize("board_id,outputs", [("ulx3s-85f", ["--textcfg"]), ("icebreaker", ["--asc"])])
def test_pnr_script_packs_before_placing(board_id, outputs):
    """Place and route runs in two scripts: Yosys + nextpnr ``--pack-only`` (writing the packed
    utilisation), then the full nextpnr and bitstream commands on the same netlist."""
    from accumulus.boards.boards import load_board
    from accumulus.boards.pnr import harness_build_plan, over_capacity, split_build_script

    params = {"in_elems": 4, "in_width": 8, "frame_elems": 16, "out_bits": 8, "in_bits": 32, "out_beats_per_frame": 1}
    plan = harness_build_plan(load_board(board_id), {"accumulus_top.v": "module accumulus_top(); endmodule\n"}, params)
    script = plan.files[f"{plan.script}.sh"]
    pack, rest = split_build_script(script)
    pack_lines, rest_lines = pack.splitlines(), rest.splitlines()
    nextpnr = [l for l in pack_lines if l.startswith('"$NEXTPNR_')]
    assert len(nextpnr) == 1 and "--pack-only" in nextpnr[0].split()
    assert "--report nextpnr_pack.json" in nextpnr[0]
    assert not any(o in nextpnr[0].split() for o in outputs)           # no bitstream config from the packer
    assert "nextpnr_report.json" not in nextpnr[0]                      # the full run's report is not overwritten
    assert sum(l.startswith('"$YOSYS"') for l in pack_lines) == 1
    assert not any(l.startswith('"$YOSYS"') for l in rest_lines)       # synthesis runs once
    full = [l for l in rest_lines if l.startswith('"$NEXTPNR_')]
    assert full == [l for l in script.splitlines() if l.startswith('"$NEXTPNR_')]
    for part in (pack_lines, rest_lines):
        assert "set -e" in part                                         # a failing step stops its script
    with pytest.raises(Exception, match="unexpected amaranth build script"):
        split_build_script("#!/bin/sh\necho nothing\n")
    util = {"TRELLIS_COMB": {"used": 83641, "available": 83640}, "TRELLIS_FF": {"used": 10, "available": 83640}}
    assert over_capacity(util) == ["TRELLIS_COMB 83641/83640"]
    assert over_capacity({"TRELLIS_COMB": {"used": 83640, "available": 83640}}) == []


def test_pnr_router_option_reaches_nextpnr():
    """``report --pnr-router router2``: the nextpnr command of both scripts names the router;
    without it nextpnr's default stays; anything else is refused."""
    from accumulus.boards.boards import load_board
    from accumulus.boards.pnr import harness_build_plan, split_build_script

    params = {"in_elems": 4, "in_width": 8, "frame_elems": 16, "out_bits": 8, "in_bits": 32, "out_beats_per_frame": 1}
    files = {"accumulus_top.v": "module accumulus_top(); endmodule\n"}
    board = load_board("ulx3s-85f")

    def nextpnr_lines(plan):
        pack, rest = split_build_script(plan.files[f"{plan.script}.sh"])
        return [l for l in (pack + rest).splitlines() if l.startswith('"$NEXTPNR_')]

    lines = nextpnr_lines(harness_build_plan(board, files, params, router="router2"))
    assert len(lines) == 2 and all("--router router2" in l for l in lines)
    assert not any("--router" in l for l in nextpnr_lines(harness_build_plan(board, files, params)))
    with pytest.raises(Exception, match="router1 or router2"):
        harness_build_plan(board, files, params, router="router3")
