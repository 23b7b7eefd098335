"""The folding pass's engine choice (--engine rom | const | auto): what the plan records for
constant-weight layers, both engines' costs, the digit bound of the trained P, and that the
hardware builds the graph the plan describes."""
from __future__ import annotations

import json

import numpy as np
import pytest

import compiler_graphs as cg
from accumulus.cli import main
from accumulus.compiler.compile import CompileOptions, compile_model
from accumulus.compiler.passes.fold import register_every_for
from accumulus.compiler.plan import Plan
from accumulus.compiler.types import IntType

from conftest import require_module


def _naf_weight(n: int) -> int:
    """Nonzero digits of n's non-adjacent form, by the bit identity NAF = (3n >> 1) - (n >> 1)
    digit-wise: the digits are nonzero where ``(n >> 1) ^ ((3n) >> 1)`` has a one."""
    n = abs(int(n))
    return bin((n >> 1) ^ ((3 * n) >> 1)).count("1")


def _mac(plan):
    return [l for l in plan.layers if l["kind"] in ("matvec", "conv")]


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    model, names = cg.mlp(widths=(64, 32, 10), seed=3)
    return cg.save(model, tmp_path_factory.mktemp("m") / "m.onnx"), names


def test_naf_identity_matches_a_digit_by_digit_count():
    # the test's own NAF count against the definition (no two adjacent nonzero digits,
    # digits in {-1, 0, 1}), by brute force over signed-digit strings of 6 digits
    import itertools
    best = {}
    for digits in itertools.product((-1, 0, 1), repeat=6):
        if any(digits[i] and digits[i + 1] for i in range(5)):
            continue
        v = sum(d << i for i, d in enumerate(digits))
        best[v] = min(best.get(v, 99), sum(1 for d in digits if d))
    for v in range(-20, 21):
        assert _naf_weight(v) == best[v], v


def test_engine_const_records_the_adder_graph(mlp_path):
    path, _ = mlp_path
    plan = compile_model(path, CompileOptions(engine="const"))
    assert plan.doc["options"]["engine"] == "const" and plan.doc["estimate"]["const_layers"] == 2
    for l in _mac(plan):
        n, k = l["channels"], l["fan_in"]
        w = plan.array(l["weight"])
        assert l["engine"] == "const"
        assert l["folding"]["pe"] == n and l["folding"]["simd"] == k
        assert l["folding"]["channel_order"] == list(range(n))
        assert l["folding"]["pe_acc_bits"] == l["acc"]["bits"]["exact"]
        assert l["cycles_per_frame"] == 1
        g = l["const"]
        assert g["nonzero_weights"] == int(np.count_nonzero(w))
        per_channel = [sum(_naf_weight(v) for v in row) for row in w]
        assert g["csd_digits"] == sum(per_channel) and g["csd_digits_max"] == max(per_channel)
        assert g["digit_bound"] is None                       # no trained P in this graph
        # with sharing, fewer adders than digits minus one per channel
        assert 0 < g["adders"] <= g["csd_digits"] - n
        assert g["pipeline_depth"] == -(-g["adder_levels"] // g["register_every"])
        assert set(l["engine_cost"]) == {"rom", "const"} and l["engine_cost"]["const"]["cycles_per_frame"] == 1
    assert plan.doc["estimate"]["cycles_per_frame"] == 1


@pytest.mark.parametrize("solver", ["csd", "da4ml"])
def test_plan_graph_is_the_built_graph(mlp_path, solver):
    """The plan's adders, adder bits and pipeline depth are those of the engine hw/ builds,
    with either adder-graph solver (--const-solver)."""
    require_module("amaranth")
    if solver == "da4ml":
        require_module("da4ml")
    from accumulus.hw.top import GraphSpec

    path, _ = mlp_path
    plan = compile_model(path, CompileOptions(engine="const", const_solver=solver))
    assert plan.doc["options"]["const_solver"] == solver
    built = 0
    for eng in GraphSpec(plan, "exact").engines:
        if eng.kind != "matvec":
            continue
        rep, g = eng.mvu.report(), eng.layer["const"]
        assert eng.engine == "const" and g["solver"] == rep["solver"] == solver
        for key in ("adders", "adder_bits", "pipeline_depth", "pipeline_register_bits", "acc_register_bits",
                    "nonzero_weights", "csd_digits", "requant_form", "requant_adder_bits", "requant_q_bits"):
            assert rep[key] == g[key], key
        assert eng.mvu.register_every == g["register_every"]
        built += 1
    assert built


def test_engine_rom_keeps_the_folding_and_no_graph(mlp_path):
    path, _ = mlp_path
    rom = compile_model(path, CompileOptions(engine="rom"))
    auto = compile_model(path, CompileOptions())
    for a, b in zip(_mac(rom), _mac(auto)):
        assert a["engine"] == "rom" and "const" not in a and set(a["engine_cost"]) == {"rom", "const"}
        assert a["engine_cost"] == b["engine_cost"]          # the same two estimates, whatever was chosen
        # at the default ~1k-cycle target the folded engine is far cheaper: auto keeps it
        assert b["engine"] == "rom" and b["folding"] == a["folding"]
        assert b["engine_cost"]["const"]["lut"] > b["engine_cost"]["rom"]["lut"]
        assert a["engine_cost"]["rom"]["pe"] == a["folding"]["pe"]


def test_auto_goes_const_when_the_rom_engine_must_unroll(mlp_path):
    path, _ = mlp_path
    # 1 cycle per frame at 100 MHz: the ROM engine would need PE = N, SIMD = K
    plan = compile_model(path, CompileOptions(engine="auto", target_fps=1e8, clock_mhz=100))
    for l in _mac(plan):
        c = l["engine_cost"]
        assert c["rom"]["pe"] * c["rom"]["simd"] == l["channels"] * l["fan_in"]
        assert c["const"]["lut"] < c["rom"]["lut"]
        assert l["engine"] == "const"
    # a board whose LUTs the constant engines exceed: auto falls back to ROM folding
    budget = {"lut": 2000, "ff": 5280, "dsp": 8, "bram_bits": 122880}
    small = compile_model(path, CompileOptions(engine="auto", target_fps=1e8, clock_mhz=100, budget=budget,
                                               family="ice40"))
    for l in _mac(small):
        if l["engine_cost"]["const"]["lut"] > budget["lut"]:
            assert l["engine"] == "rom"


def test_register_every_from_the_clock():
    assert register_every_for(None, None) == 4
    slow, fast = register_every_for(12.0, "ice40"), register_every_for(150.0, "ecp5")
    assert 1 <= fast < slow <= 8
    # a stage's adder levels fit 70% of the period at the family's level delay
    assert fast * 2.5 <= 0.7 * 1000 / 150 < (fast + 1) * 2.5


def test_digit_bound_of_the_trained_p(tmp_path):
    """With a trained P the plan records the digit bound, and every channel is inside it."""
    model, names = cg.mlp(widths=(64, 32, 10), seed=2)
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"))
    exact = {l["onnx_nodes"][0]: max(l["acc"]["bits"]["exact"]) for l in _mac(plan)}
    meta = {"version": 1, "dataset": "digits", "test_accuracy": 0.9,
            "layers": {n: {"weight": "w", "weight_bits": 4, "input_bits": 4, "input_signed": False,
                           "acc_bits": exact[n], "quant": "a2q+"} for n in names}}
    model2, _ = cg.mlp(widths=(64, 32, 10), seed=2, metadata=meta)
    plan2 = compile_model(cg.save(model2, tmp_path / "m2.onnx"), CompileOptions(engine="const"))
    for l in _mac(plan2):
        p, k = l["acc"]["bits"]["target"], l["fan_in"]
        it = IntType.from_json(l["input_type"])
        span = it.max - it.min
        d_max = max(_naf_weight(v) for v in range(-8, 8))          # int4 weights
        assert l["const"]["digit_bound"] == min(((1 << p) - 1) // span, k * d_max)
        w = plan2.array(l["weight"])
        assert max(sum(_naf_weight(v) for v in row) for row in w) <= l["const"]["digit_bound"]


def test_engine_const_conv_takes_one_window_per_cycle(tmp_path):
    model = cg.cnn(seed=1)
    plan = compile_model(cg.save(model, tmp_path / "c.onnx"), CompileOptions(engine="const"))
    convs = [l for l in plan.layers if l["kind"] == "conv"]
    assert convs
    for l in convs:
        conv = l["conv"]
        assert l["engine"] == "const" and l["folding"]["simd"] == l["fan_in"]
        assert l["cycles_per_frame"] == max(conv["out_shape"][0] * conv["out_shape"][1],
                                            conv["in_shape"][0] * conv["in_shape"][1])
    # the pools after a constant engine take its N channels per beat
    for pool in (l for l in plan.layers if l["kind"] == "maxpool"):
        h, w, c = pool["in_shape"]
        assert pool["cycles_per_frame"] == h * w
    require_module("amaranth")
    from accumulus.hw.top import GraphSpec

    graph = GraphSpec(plan, "exact")
    assert graph.cycles_per_frame == plan.doc["estimate"]["cycles_per_frame"]
    assert {e.name: e.cycles_per_frame for e in graph.engines} == {l["name"]: l["cycles_per_frame"]
                                                                   for l in plan.layers}


def test_cli_engine_option(tmp_path, capsys, mlp_path):
    path, _ = mlp_path
    with pytest.raises(SystemExit):
        main(["compile", str(path), "--out", str(tmp_path), "--engine", "lut"])
    assert "invalid choice: 'lut'" in capsys.readouterr().err
    assert main(["compile", str(path), "--out", str(tmp_path), "--engine", "const", "--quiet"]) == 0
    plan = Plan.load(tmp_path)
    assert all(l["engine"] == "const" for l in _mac(plan))
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["options"]["engine"] == "const"


def test_const_cost_model_against_yosys_on_ecp5():
    """compiler/cost.py's constant-weight model against the Yosys runs the benchmark recorded
    (benchmarks/constmv_vs_rom.py: synth_ecp5 of a 64x64 layer): within 15% on LUTs and FFs."""
    from pathlib import Path

    from accumulus.compiler import cost

    doc = json.loads((Path(__file__).parent.parent / "benchmarks/results/constmv_vs_rom.json").read_text())
    assert doc["family"] == "ecp5" and doc["tools"]["yosys"].startswith("Yosys")
    coeff = cost.load_coefficients("ecp5")
    rows = [r for r in doc["results"] if r["engine"] == "const" and r["ok"]]
    assert len(rows) >= 2
    for r in rows:
        g = r["graph"]
        est = cost.const_layer_cost(g["adder_bits"], g["pipeline_register_bits"] + g["acc_register_bits"],
                                    doc["layer"]["channels"], 0, 0, coeff)
        y = r["resources"]
        assert abs(est["lut"] / y["lut"] - 1) <= 0.15, (r["label"], est["lut"], y["lut"])
        assert abs(est["ff"] / y["ff"] - 1) <= 0.15, (r["label"], est["ff"], y["ff"])
        assert est["dsp"] == 0 and est["bram_bits"] == 0


def test_width_table_shows_the_engine(tmp_path, capsys, mlp_path):
    path, _ = mlp_path
    assert main(["compile", str(path), "--out", str(tmp_path), "--engine", "const"]) == 0
    out = capsys.readouterr().out
    head, *rows = [l for l in out.splitlines() if l.startswith(("layer", "fc"))]
    assert "engine" in head and "adders" in head and "digits/bound" in head
    plan = Plan.load(tmp_path)
    for l, row in zip(_mac(plan), rows):
        assert row.split()[0] == l["name"] and " const " in row
        assert f" {l['const']['adders']} " in row
        assert f"{l['engine_cost']['rom']['lut']:.0f}/{l['engine_cost']['const']['lut']:.0f}" in row


def test_estimate_only_report_costs_const_layers_as_adder_graphs(tmp_path, mlp_path):
    from accumulus.boards.boards import load_board
    from accumulus.boards.report import run_report
    from accumulus.compiler import cost

    path, _ = mlp_path
    proj = tmp_path / "p"
    plan = compile_model(path, CompileOptions(engine="const"))
    plan.save(proj)
    doc = run_report(proj, load_board("ulx3s-85f"), ["exact"], estimate_only=True, progress=False)
    coeff = cost.load_coefficients("ecp5")
    for l in _mac(plan):
        e, g = doc["policy"]["exact"]["estimate"][l["name"]], l["const"]
        assert e["engine"] == "const" and doc["widths"][l["name"]]["engine"] == "const"
        levels = plan.array(l["requant"]["thresholds"]).shape[1] if l["requant"] else 0
        want = cost.const_layer_cost(g["adder_bits"], g["pipeline_register_bits"] + g["acc_register_bits"],
                                     l["channels"], levels, l["requant"]["threshold_bits"] if l["requant"] else 0,
                                     coeff)
        if not l["requant"]:
            assert e["lut"] == pytest.approx(want["lut"]) and e["ff"] == pytest.approx(want["ff"])
        assert e["bram_bits"] == 0
    assert "| exact | fc0 | const |" in (proj / "reports" / "report.md").read_text()
