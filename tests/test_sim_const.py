"""Co-simulation of constant-weight engines (hw/constmv.py) built through the top.

Fast tier: a small MLP built with every MAC layer constant-weight on Icarus, worst-case
vectors under back-pressure: bit-exact under ``exact``, and ``exact-minus:1`` fails (the
accumulators of an adder graph really need their exact width).
Slow tier: a digits-mlp-shaped QONNX graph (64-64-64-10, 5-bit input codes, W4 A4) through
the command line, ``compile --engine const`` -> ``build`` -> ``sim`` on Verilator and Icarus,
100 test frames and the worst-case vectors under back-pressure 0.3 on both sides; and the
digits-rescnn-shaped graph (conv windows whole per beat, residual add, pools) on Verilator.
"""
from __future__ import annotations

import json

import pytest

from accumulus.cli import main
from accumulus.compiler.synthetic import mlp_plan
from accumulus.compiler.types import IntType

from conftest import require_module, require_tool


def _built(path, plan, policy="exact", engine="const"):
    require_module("amaranth")
    from accumulus.hw.build import build

    plan.save(path)
    doc = build(plan, path, acc_policy=policy, engine=engine)
    assert doc["engine"] == engine
    assert all(l["engine"] == "const" for l in doc["layers"] if l["kind"] == "matvec")
    return path


def test_const_cosim_worst_case_exact_passes_and_exact_minus_1_fails(tmp_path):
    require_tool("iverilog")
    from accumulus.sim.cosim import simulate

    plan = mlp_plan(widths=(16, 8, 4), input_type=IntType(4, False), pe=[2, 2], simd=[4, 4], seed=7)
    ok = simulate(_built(tmp_path / "exact", plan), stimulus="worst", backpressure=0.3, log=lambda s: None)
    assert ok["passed"] and ok["mismatches"] == 0
    assert {r["design"] for r in ok["runs"]} >= {"top", "layer-fc1"}    # the deeper engine alone too
    bad_dir = _built(tmp_path / "minus1", plan, policy="exact-minus:1")
    bad = simulate(bad_dir, stimulus="worst", backpressure=0.3, log=lambda s: None)
    assert not bad["passed"] and bad["mismatches"] > 0 and bad["acc_policy"] == "exact-minus:1"
    m = bad["first_mismatch"]
    assert m["expected"] != m["got"]
    assert main(["sim", str(bad_dir), "--stimulus", "worst", "--frames", "4"]) == 1


@pytest.fixture(scope="module")
def digits_const(tmp_path_factory):
    """digits-mlp's shape as a QONNX graph, compiled and built constant-weight by the CLI."""
    require_module("onnx")
    require_module("amaranth")
    import compiler_graphs as cg

    d = tmp_path_factory.mktemp("digits-const")
    model, _ = cg.mlp(widths=(64, 64, 64, 10), seed=21)
    path = cg.save(model, d / "model.onnx")
    assert main(["compile", str(path), "--out", str(d), "--engine", "const", "--quiet"]) == 0
    assert main(["build", str(d)]) == 0
    return d


@pytest.mark.slow
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_digits_mlp_const_bit_exact_under_backpressure(digits_const, simulator, capsys):
    require_tool("g++" if simulator == "verilator" else "iverilog")
    d = digits_const
    build = json.loads((d / "rtl" / "build.json").read_text())
    macs = [l for l in build["layers"] if l["kind"] == "matvec"]
    assert len(macs) == 3 and all(l["engine"] == "const" for l in macs)
    assert build["top"]["plan_cycles_per_frame"] == 1 and build["top"]["cycles_per_frame"] == 1
    rc = main(["sim", str(d), "--frames", "100", "--simulator", simulator, "--backpressure", "0.3", "--seed", "2"])
    out = capsys.readouterr().out
    r = json.loads((d / "sim" / "results.json").read_text())
    assert rc == 0 and r["passed"], out
    run = r["runs"][0]
    n = 100 + run["measure_frames"]
    assert r["frames"] == n and r["mismatches"] == 0
    assert run["frames_sent"] == run["frames_received"] == n, "a frame was lost or duplicated"
    assert r["frames_missing"] == 0 and r["extra_frames"] == 0
    assert run["input_gap_cycles"] > 0 and run["output_stall_cycles"] > 0
    # one frame per cycle, as the plan says
    assert r["cycles_per_frame_estimate"] == 1 and r["cycles_per_frame_error"] <= 0.10, out
    # worst-case vectors: every channel of every layer at both ends of its exact range
    rc = main(["sim", str(d), "--stimulus", "worst", "--simulator", simulator, "--backpressure", "0.3"])
    r = json.loads((d / "sim" / "results.json").read_text())
    assert rc == 0 and r["passed"] and r["mismatches"] == 0


def test_cli_build_engine_override(tmp_path, capsys):
    """'accumulus build --engine const' builds a ROM-folded plan constant-weight and says so."""
    require_module("amaranth")
    plan = mlp_plan(widths=(16, 8, 4), input_type=IntType(4, False), pe=[2, 2], simd=[4, 4], seed=3)
    plan.save(tmp_path)
    with pytest.raises(SystemExit):
        main(["build", str(tmp_path), "--engine", "dsp"])
    assert "invalid choice: 'dsp'" in capsys.readouterr().err
    assert main(["build", str(tmp_path), "--engine", "const", "--no-layer-files"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "rtl" / "build.json").read_text())
    assert doc["engine"] == "const" and "engine const" in out
    for l in doc["layers"]:
        assert l["engine"] == "const" and (l["pe"], l["simd"]) == (l["out"]["elems_per_beat"], l["in"]["elems_per_beat"])
        assert l["plan_folding"] == {"pe": 2, "simd": 4} and l["cycles_per_frame"] == 1
        assert l["const"]["adders"] > 0 and l["const"]["acc_policy"] == "exact"
    assert main(["build", str(tmp_path), "--no-layer-files"]) == 0       # auto: the plan's ROM folding
    doc = json.loads((tmp_path / "rtl" / "build.json").read_text())
    assert all(l["engine"] == "rom" and l["pe"] == 2 for l in doc["layers"])


@pytest.mark.slow
def test_digits_rescnn_const_bit_exact_on_verilator(tmp_path, capsys):
    require_tool("g++")
    require_module("onnx")
    import compiler_graphs as cg

    path = cg.save(cg.cnn(seed=13, residual=True), tmp_path / "model.onnx")
    assert main(["compile", str(path), "--out", str(tmp_path), "--engine", "const", "--quiet"]) == 0
    assert main(["build", str(tmp_path), "--no-layer-files"]) == 0
    build = json.loads((tmp_path / "rtl" / "build.json").read_text())
    convs = [l for l in build["layers"] if l["kind"] == "conv"]
    assert convs and all(l["engine"] == "const" and l["swg"]["elems_per_beat"] == l["simd"] for l in convs)
    # every engine, the pools and the add included, runs at the plan's rate
    assert build["top"]["cycles_per_frame"] == build["top"]["plan_cycles_per_frame"]
    capsys.readouterr()
    rc = main(["sim", str(tmp_path), "--frames", "40", "--simulator", "verilator", "--backpressure", "0.3",
               "--seed", "5"])
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "sim" / "results.json").read_text())
    assert rc == 0 and r["passed"] and r["mismatches"] == 0, out
    run = r["runs"][0]
    assert run["frames_sent"] == run["frames_received"] == r["frames"]
    assert r["cycles_per_frame_error"] <= 0.10, out
