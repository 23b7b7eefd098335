"""The whole accelerator in the Amaranth simulator, through its AXI-Stream ports: every
output bit-exact against the golden model, tlast on each frame's last beat, cycles per
frame within 10% of the plan's estimate, built widths equal to the plan's under `exact`."""
from __future__ import annotations

import numpy as np
import pytest

from accumulus.compiler import golden
from accumulus.compiler.accumulators import worst_case_inputs
from accumulus.compiler.plan import FORMAT_VERSION, Plan, validate
from accumulus.compiler.synthetic import _mac_layer, _thresholds, conv_plan, mlp_plan
from accumulus.compiler.types import IntType, signed_bits
from accumulus.hw.simstream import simulate_top
from accumulus.hw.top import GraphSpec

from conftest import require_module


def run_frames(plan, x, gap=0.0, stall=0.0, policy="exact", seed=0, engine="auto"):
    graph = GraphSpec(plan, policy, engine)
    got, lasts, times = simulate_top(graph, x, gap, stall, seed=seed)
    return graph, got, lasts, times


def check_plan(plan, frames=4, gap=0.0, stall=0.0, seed=0, extremes=True, rate=True, engine="auto"):
    """Random (and all-min / all-max) frames: bit-exact, tlast, and the steady-state rate."""
    itype = plan.tensor_type(plan.input_name)
    shape = plan.tensor_shape(plan.input_name)
    rng = np.random.default_rng(seed)
    x = rng.integers(itype.min, itype.max + 1, size=(frames,) + shape)
    if extremes:
        x[0], x[1] = itype.max, itype.min
    want = golden.run(plan, x)[plan.output_name].reshape(frames, -1)
    graph, got, lasts, times = run_frames(plan, x, gap, stall, seed=seed, engine=engine)
    np.testing.assert_array_equal(got, want)
    per = graph.out_beats
    assert lasts == ([0] * (per - 1) + [1]) * frames
    ends = np.asarray(times[per - 1::per])
    interval = np.diff(ends)
    if rate and gap == 0 and stall == 0:
        est = plan.doc["estimate"]["cycles_per_frame"]
        steady = interval[1:] if len(interval) > 1 else interval
        assert np.all(np.abs(steady - est) <= 0.10 * est), f"cycles per frame {list(interval)} vs plan estimate {est}"
        assert graph.cycles_per_frame == est
    return graph, interval


def residual_plan(seed=0) -> Plan:
    """A small residual CNN written straight as a plan: conv, conv, add (aligned, full
    width), elementwise requant, maxpool, avgpool (+requant), flatten-matvec, argmax."""
    rng = np.random.default_rng(seed)
    arrays, tensors, layers = {}, {}, []
    u4, w4 = IntType(4, False), IntType(4, True)
    h = w = 6
    c = 4
    tensors["x"] = {"shape": [h, w, 2], "type": u4.to_json(), "scale": 1.0}
    cin, inp = 2, "x"
    for i in range(2):
        conv = {"in_shape": [h, w, cin], "out_shape": [h, w, c], "kernel": [3, 3], "stride": [1, 1],
                "pads": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "pad_value": 1}
        wt = rng.integers(w4.min, w4.max + 1, size=(c, 9 * cin))
        layer, _ = _mac_layer(f"conv{i}", "conv", inp, f"t{i}", wt, w4, u4, u4, 2, 2, rng, arrays, conv)
        layers.append(layer)
        tensors[f"t{i}"] = {"shape": [h, w, c], "type": u4.to_json(), "scale": 1.0}
        cin, inp = c, f"t{i}"
    align = [{"mult": 1, "shift": 1, "zero_point": 0}, {"mult": 3, "shift": 0, "zero_point": 1}]
    lo, hi = 0 * 2 + (0 - 1) * 3, 15 * 2 + (15 - 1) * 3
    s_type = IntType(signed_bits(lo, hi), True)
    tensors["s"] = {"shape": [h, w, c], "type": s_type.to_json(), "scale": 1.0}
    layers.append({"name": "add", "kind": "add", "inputs": ["t0", "t1"], "output": "s", "onnx_nodes": [],
                   "align": align, "cycles_per_frame": h * w * c})

    def thresholds_requant(name, lo, hi):
        arrays[f"{name}.thresholds"] = _thresholds(rng, np.full(c, lo), np.full(c, hi), 15)
        arrays[f"{name}.descending"] = np.zeros(c, dtype=bool)
        return {"kind": "thresholds", "thresholds": f"{name}.thresholds", "descending": f"{name}.descending",
                "out_scale": 1, "out_bias": 0, "out_type": u4.to_json(), "threshold_bits": signed_bits(lo, hi + 1)}

    layers.append({"name": "rq", "kind": "requant", "inputs": ["s"], "output": "r", "onnx_nodes": [],
                   "input_type": s_type.to_json(), "requant": thresholds_requant("rq", lo, hi),
                   "acc": {"range": [[lo, hi]] * c}, "cycles_per_frame": h * w * c})
    tensors["r"] = {"shape": [h, w, c], "type": u4.to_json(), "scale": 1.0}
    layers.append({"name": "pool", "kind": "maxpool", "inputs": ["r"], "output": "p", "onnx_nodes": [],
                   "kernel": [2, 2], "stride": [2, 2], "pads": [0, 0, 0, 0], "in_shape": [h, w, c],
                   "out_shape": [3, 3, c], "cycles_per_frame": h * w * c})
    tensors["p"] = {"shape": [3, 3, c], "type": u4.to_json(), "scale": 1.0}
    layers.append({"name": "avg", "kind": "avgpool", "inputs": ["p"], "output": "a", "onnx_nodes": [],
                   "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "in_shape": [3, 3, c],
                   "out_shape": [3, 3, c], "pad_value": 0, "requant": thresholds_requant("avg", 0, 9 * 15),
                   "acc": {"range": [[0, 135]] * c}, "cycles_per_frame": 9 * 9 * c})
    tensors["a"] = {"shape": [3, 3, c], "type": u4.to_json(), "scale": 1.0}
    wt = rng.integers(w4.min, w4.max + 1, size=(10, 9 * c))
    layer, lw = _mac_layer("fc", "matvec", "a", "y", wt, w4, u4, None, 2, 4, rng, arrays)
    layers.append(layer)
    tensors["y"] = {"shape": [10], "type": IntType(int(lw.exact.max()), True).to_json(), "scale": 1.0}
    layers.append({"name": "argmax", "kind": "argmax", "inputs": ["y"], "output": "cls", "onnx_nodes": [],
                   "cycles_per_frame": 10})
    tensors["cls"] = {"shape": [1], "type": IntType(4, False).to_json(), "scale": 1.0}
    doc = {
        "format_version": FORMAT_VERSION,
        "source": {"model": "test:residual", "sha256": "", "metadata": None},
        "input": {"tensor": "x", "onnx_name": "x", "onnx_shape": [1, 2, h, w], "scale": 1.0, "zero_point": 0,
                  "type": u4.to_json(), "rounding_mode": "ROUND"},
        "tensors": tensors, "layers": layers,
        "output": {"tensor": "cls", "onnx_name": "y", "kind": "argmax", "dequant": None, "trailing": []},
        "estimate": {"cycles_per_frame": max(l["cycles_per_frame"] for l in layers)},
        "options": {"synthetic": True},
    }
    validate(doc)
    return Plan(doc, arrays)


# -- fast tier --------------------------------------------------------------------------------
def test_mlp_with_argmax():
    plan = mlp_plan((32, 16, 16, 10), pe=[4, 2, 2], simd=[4, 4, 8], argmax=True, seed=5)
    check_plan(plan, frames=5)


def test_mlp_codes_output_under_gaps_and_stalls():
    plan = mlp_plan((16, 8, 8, 6), pe=[2, 4, 3], simd=[4, 2, 8], seed=6)
    check_plan(plan, frames=4, gap=0.4, stall=0.4, seed=1)


def test_conv_chain():
    plan = conv_plan((6, 6, 2), (4, 4), pe=[2, 2], simd=[2, 4], seed=2)
    check_plan(plan, frames=3)


def test_conv_simd_not_dividing_channels():
    # SIMD 9 on a 1-channel image: the window generator emits single elements and a
    # converter packs them; the queue before the MVU keeps the plan's rate.
    plan = conv_plan((5, 5, 1), (4,), pe=[1], simd=[9], seed=3)
    check_plan(plan, frames=3)


def test_residual_pool_requant_argmax():
    plan = residual_plan(seed=1)
    graph, _ = check_plan(plan, frames=4, rate=False)
    kinds = [e.kind for e in graph.engines]
    assert kinds == ["conv", "conv", "add", "requant", "maxpool", "avgpool", "matvec", "argmax"]


def test_residual_under_gaps_and_stalls():
    check_plan(residual_plan(seed=2), frames=3, gap=0.3, stall=0.3, seed=3)


def test_built_widths_are_the_plans_under_exact():
    plan = mlp_plan((32, 16, 16, 10), pe=[4, 2, 2], simd=[4, 4, 8], seed=8)
    for eng in GraphSpec(plan, "exact").engines:
        assert list(eng.mvu.acc_bits) == eng.layer["folding"]["pe_acc_bits"]
    wide = GraphSpec(plan, "fixed:32")
    assert all(list(e.mvu.acc_bits) == [32] * e.layer["folding"]["pe"] for e in wide.engines)


def test_exact_minus_one_wraps_on_worst_case_vectors():
    """Under exact-minus:1 the worst-case vectors give a different output (the tests can fail)."""
    plan = mlp_plan((16, 4), pe=[2], simd=[4], seed=9)
    layer = plan.layers[0]
    w = plan.array(layer["weight"])
    x_hi, x_lo = worst_case_inputs(w, plan.tensor_type("x"))
    x = np.concatenate([x_hi, x_lo])
    want = golden.run(plan, x)[plan.output_name]
    _, exact, _, _ = run_frames(plan, x, policy="exact")
    np.testing.assert_array_equal(exact, want)
    _, narrow, _, _ = run_frames(plan, x, policy="exact-minus:1")
    assert not np.array_equal(narrow, want)


# -- constant-weight engines (hw/constmv.py) in the top -----------------------------------------
def test_const_mlp_compiled_with_engine_const(tmp_path):
    """A QONNX MLP compiled with --engine const: one frame per cycle, bit-exact, also under
    gaps and stalls."""
    require_module("onnx")
    import compiler_graphs as cg
    from accumulus.compiler.compile import CompileOptions, compile_model

    model, _ = cg.mlp(widths=(32, 16, 10), seed=4, in_shape=(1, 32))
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"), CompileOptions(engine="const"))
    assert plan.doc["estimate"]["cycles_per_frame"] == 1
    graph, _ = check_plan(plan, frames=6)
    assert [e.engine for e in graph.engines if e.mvu] == ["const", "const"]
    assert graph.in_elems == 32 and graph.in_beats == 1
    check_plan(plan, frames=5, gap=0.4, stall=0.4, seed=2)


def test_const_conv_takes_a_window_per_cycle():
    """Conv layers built constant-weight: the window generator hands over a whole window per
    beat, so a frame takes one input pixel per cycle."""
    plan = conv_plan((5, 5, 2), (4, 4), pe=[2, 2], simd=[2, 4], seed=2)
    graph, interval = check_plan(plan, frames=4, rate=False, engine="const")
    assert all(e.engine == "const" and e.swg.simd == e.layer["fan_in"] for e in graph.engines)
    assert graph.cycles_per_frame == 25
    assert np.all(np.abs(interval[1:] - 25) <= 0.10 * 25), list(interval)
    check_plan(plan, frames=3, gap=0.3, stall=0.3, seed=4, rate=False, engine="const")


def test_mixed_rom_and_const_layers_under_gaps_and_stalls():
    plan = mlp_plan((16, 8, 8, 6), pe=[2, 4, 3], simd=[4, 2, 8], seed=6)
    plan.layers[1]["engine"] = "const"
    graph, _ = check_plan(plan, frames=4, gap=0.4, stall=0.4, seed=1, rate=False)
    assert [e.engine for e in graph.engines] == ["rom", "const", "rom"]


def test_const_exact_minus_one_wraps_on_worst_case_vectors():
    plan = mlp_plan((16, 4), pe=[2], simd=[4], seed=9)
    w = plan.array(plan.layers[0]["weight"])
    x_hi, x_lo = worst_case_inputs(w, plan.tensor_type("x"))
    x = np.concatenate([x_hi, x_lo])
    want = golden.run(plan, x)[plan.output_name]
    _, exact, _, _ = run_frames(plan, x, policy="exact", engine="const")
    np.testing.assert_array_equal(exact, want)
    _, narrow, _, _ = run_frames(plan, x, policy="exact-minus:1", engine="const")
    assert not np.array_equal(narrow, want)


def test_engine_override_validated():
    plan = mlp_plan((16, 4), pe=[2], simd=[4], seed=9)
    with pytest.raises(ValueError, match="engine must be one of"):
        GraphSpec(plan, "exact", "lut")
    plan.layers[0]["engine"] = "dsp"
    with pytest.raises(ValueError, match="layer 'fc0': engine 'dsp'"):
        GraphSpec(plan, "exact")


@pytest.mark.parametrize("policy", ["wide", "fixed:", "exact-minus:x", 3])
def test_policy_validation(policy):
    plan = mlp_plan((8, 4))
    with pytest.raises((ValueError, TypeError), match="acc_policy"):
        GraphSpec(plan, policy)


def test_grouped_conv_rejected_naming_layer():
    plan = conv_plan((4, 4, 2), (2,), seed=1)
    plan.layers[0]["conv"]["groups"] = 2
    with pytest.raises(ValueError, match="conv0.*groups"):
        GraphSpec(plan)


def test_plan_type_checked():
    with pytest.raises(TypeError, match="plan"):
        GraphSpec({"layers": []})


# -- slow tier: plans of the canonical models -------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["digits-mlp", "mnist-tfc"])
def test_mlp_presets(preset):
    from accumulus.sim.presets import preset_plan

    plan = preset_plan(preset, seed=11)
    check_plan(plan, frames=4)
    graph = GraphSpec(plan)
    for eng in graph.engines:
        if eng.mvu is not None:
            assert list(eng.mvu.acc_bits) == eng.layer["folding"]["pe_acc_bits"]


@pytest.mark.slow
@pytest.mark.parametrize("residual", [False, True], ids=["digits-cnn", "digits-rescnn"])
def test_cnn_presets_compiled(tmp_path, residual):
    """digits-cnn / digits-rescnn shaped QONNX graphs through the compiler at its default folding."""
    require_module("onnx")
    import compiler_graphs as cg
    from accumulus.compiler.compile import compile_model

    plan = compile_model(cg.save(cg.cnn(seed=13, residual=residual), tmp_path / "cnn.onnx"))
    assert any(l["kind"] == "add" for l in plan.layers) == residual
    graph, _ = check_plan(plan, frames=3, extremes=False)
    for eng in graph.engines:
        if eng.mvu is not None:
            assert list(eng.mvu.acc_bits) == eng.layer["folding"]["pe_acc_bits"]
