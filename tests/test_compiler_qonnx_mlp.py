"""QONNX MLP: golden model == qonnx 1.0.0 execution; CLI compile / widths / predict."""
from __future__ import annotations

import json

import numpy as np
import pytest

import compiler_graphs as cg
from accumulus.cli import main
from accumulus.commands.predict import predict
from accumulus.compiler import golden
from accumulus.compiler.accumulators import exact_range
from accumulus.compiler.compile import CompileOptions, compile_model
from accumulus.compiler.plan import Plan
from accumulus.compiler.types import signed_bits
from accumulus.errors import UserError


def _check_agreement(model, plan, x, min_match=0.999):
    ctx = cg.qonnx_run(model, x)
    y, env = predict(plan, x)
    ref = ctx[model.graph.output[0].name]
    stats = cg.assert_codes_agree(model, plan, env, ctx, y, ref, min_match=min_match)
    return y, ref, env, stats


@pytest.mark.parametrize("pow2", [False, True])
def test_mlp_golden_equals_qonnx_on_random_inputs(tmp_path, pow2):
    model, _ = cg.mlp(seed=3, pow2=pow2, act_scale=0.25 if pow2 else None)
    path = cg.save(model, tmp_path / "mlp.onnx")
    plan = compile_model(path)
    x = np.random.default_rng(7).uniform(-0.2, 1.2, size=(1000, 1, 8, 8)).astype(np.float32)
    # grid inputs land on exact quantizer ties of the 1/16 input scale
    x[:200] = np.round(x[:200] * 32) / 32
    y, ref, env, stats = _check_agreement(model, plan, x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_mlp_golden_equals_qonnx_on_digits(tmp_path):
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = (d.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    assert x.shape[0] == 1797
    model, _ = cg.mlp(seed=5)
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"))
    _, _, env, _ = _check_agreement(model, plan, x)
    # the input codes are the raw pixels (scale 1/16, 5-bit unsigned)
    np.testing.assert_array_equal(env[plan.input_name].reshape(-1, 64), d.data.astype(np.int64))


def test_widths_are_exact_per_pe_and_match_accumulators(tmp_path):
    model, names = cg.mlp(seed=1)
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"), CompileOptions(max_pes=40))
    for layer in plan.layers:
        if layer["kind"] != "matvec":
            continue
        w = plan.array(layer["weight"])
        from accumulus.compiler.types import IntType
        lo, hi = exact_range(w, IntType.from_json(layer["input_type"]))
        exact = [signed_bits(a, b) for a, b in zip(lo, hi)]
        assert layer["acc"]["bits"]["exact"] == exact
        f = layer["folding"]
        assert layer["channels"] % f["pe"] == 0 and layer["fan_in"] % f["simd"] == 0
        order = np.asarray(f["channel_order"])
        assert sorted(order.tolist()) == list(range(layer["channels"]))
        for p in range(f["pe"]):
            assert f["pe_acc_bits"][p] == max(exact[c] for c in order[p::f["pe"]])
        assert layer["cycles_per_frame"] == (layer["channels"] // f["pe"]) * (layer["fan_in"] // f["simd"])
    lanes = sum(l["folding"]["pe"] * l["folding"]["simd"] for l in plan.layers if l["kind"] == "matvec")
    assert lanes <= 40


def test_target_p_from_metadata(tmp_path):
    model, names = cg.mlp(seed=2)
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"))
    exact = {l["onnx_nodes"][0]: max(l["acc"]["bits"]["exact"]) for l in plan.layers if l["kind"] == "matvec"}
    meta = {"version": 1, "dataset": "digits", "test_accuracy": 0.9,
            "layers": {n: {"weight": "w", "weight_bits": 4, "input_bits": 4, "input_signed": False,
                           "acc_bits": exact[n], "quant": "a2q+"} for n in names}}
    model2, _ = cg.mlp(seed=2, metadata=meta)
    plan2 = compile_model(cg.save(model2, tmp_path / "m2.onnx"))
    for l in plan2.layers:
        if l["kind"] == "matvec":
            assert l["acc"]["bits"]["target"] == exact[l["onnx_nodes"][0]]
            assert max(l["folding"]["pe_acc_bits"]) <= l["acc"]["bits"]["target"]
    meta["layers"]["fc1"]["acc_bits"] = exact["fc1"] - 1
    model3, _ = cg.mlp(seed=2, metadata=meta)
    with pytest.raises(UserError, match=r"layer 'fc1' channel \d+: exact accumulator width .* exceeds the trained "
                                        r"target P=\d+ \(integer-weight L1 norm \d+"):
        compile_model(cg.save(model3, tmp_path / "m3.onnx"))


def test_cli_compile_widths_predict(tmp_path, capsys):
    model, _ = cg.mlp(seed=4)
    path = cg.save(model, tmp_path / "m.onnx")
    out = tmp_path / "proj"
    assert main(["compile", str(path), "--out", str(out), "--target-fps", "100000", "--clock-mhz", "100"]) == 0
    text = capsys.readouterr().out
    assert "datatype" in text and "exact" in text and "fc0" in text
    doc = json.loads((out / "plan.json").read_text())
    assert doc["estimate"]["cycles_per_frame"] <= 1000
    assert main(["widths", str(out)]) == 0
    assert "fc2" in capsys.readouterr().out
    x = np.random.default_rng(0).uniform(0, 1, size=(50, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(out), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                 "--codes", str(tmp_path / "z.npz")]) == 0
    y = np.load(tmp_path / "y.npy")
    ref = cg.qonnx_run(model, x, all_tensors=False)[model.graph.output[0].name]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    z = np.load(tmp_path / "z.npz")
    plan = Plan.load(out)
    assert set(l["output"] for l in plan.layers) <= set(z.files)
    # the golden model re-run on the saved codes reproduces them
    env = golden.run(plan, z[plan.input_name])
    np.testing.assert_array_equal(env[plan.output_name], z[plan.output_name])


def test_board_budget_and_missing_board(tmp_path, capsys):
    model, _ = cg.mlp(seed=4)
    path = cg.save(model, tmp_path / "m.onnx")
    assert main(["compile", str(path), "--out", str(tmp_path / "a"), "--board", "no-such-board", "--quiet"]) == 0
    assert "no boards/data/no-such-board.json" in capsys.readouterr().err
    tiny = {"lut": 300, "ff": 5000, "dsp": 0, "bram_bits": 10 ** 6}
    plan = compile_model(path, CompileOptions(budget=tiny))
    assert plan.doc["estimate"]["notes"], "a tiny LUT budget must relax or flag the folding"
    assert plan.doc["estimate"]["cycles_per_frame"] > 1024


@pytest.mark.parametrize("pow2", [True, False])
def test_wide_activations_use_exact_multshift(tmp_path, pow2):
    """10-bit activations: multiplier/shift instead of 1023 thresholds per channel; exact for
    power-of-two scales, within 1e-3 codes otherwise (with a 2^16 accumulator pre-scale)."""
    model, _ = cg.mlp(seed=3, act_bits=10, pow2=pow2, act_scale=2 ** -6 if pow2 else None)
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"))
    kinds = [l["requant"]["kind"] for l in plan.layers if l.get("requant")]
    assert kinds and set(kinds) == {"multshift"}
    if pow2:
        assert not plan.doc["notes"]
    else:
        assert all("max deviation" in n for n in plan.doc["notes"])
        assert all(l.get("max_error_codes", 0) < 1e-3 for l in plan.layers)
    x = np.random.default_rng(1).uniform(-0.1, 1.1, size=(1000, 1, 8, 8)).astype(np.float32)
    _check_agreement(model, plan, x)
