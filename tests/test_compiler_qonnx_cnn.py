"""QONNX CNNs (Conv+BatchNorm+Relu+Quant, MaxPool, residual Add, GlobalAveragePool): golden == qonnx."""
from __future__ import annotations

import numpy as np
import pytest

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model

CASES = {
    "cnn": dict(),
    "rescnn": dict(residual=True),
    "gap": dict(gap=True),
    "pow2-padded-pool": dict(pow2=True, pool_pad=True),
    "no-bn-2bit": dict(bn=False, act_bits=2, w_bits=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cnn_golden_equals_qonnx(tmp_path, case):
    model = cg.cnn(seed=11, **CASES[case])
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"))
    x = np.random.default_rng(2).uniform(-0.1, 1.1, size=(1000, 1, 8, 8)).astype(np.float32)
    x[:300] = np.round(x[:300] * 32) / 32
    ctx = cg.qonnx_run(model, x)
    y, env = predict(plan, x)
    ref = ctx[model.graph.output[0].name]
    cg.assert_codes_agree(model, plan, env, ctx, y, ref, min_tensors=3)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_cnn_plan_structure(tmp_path):
    plan = compile_model(cg.save(cg.cnn(seed=1, residual=True), tmp_path / "m.onnx"))
    kinds = [l["kind"] for l in plan.layers]
    assert kinds.count("conv") == 3 and kinds.count("maxpool") == 2 and kinds.count("add") == 1
    add = next(l for l in plan.layers if l["kind"] == "add")
    nxt = plan.consumers(add["output"])
    assert [l["kind"] for l in nxt] == ["requant"], "a residual sum is requantized by its own layer"
    conv = next(l for l in plan.layers if l["kind"] == "conv")
    assert conv["conv"]["pad_value"] == 0 and plan.array(conv["weight"]).shape == (16, 9)
    # negative batch-norm scales give descending threshold rows
    assert any(plan.array(l["requant"]["descending"]).any() for l in plan.layers
               if l.get("requant") and l["requant"]["kind"] == "thresholds")
    for l in plan.layers:
        rq = l.get("requant")
        if rq and rq["kind"] == "thresholds":
            t = plan.array(rq["thresholds"])
            rng = np.asarray(l["acc"]["range"])
            desc = plan.array(rq["descending"])
            for c in range(t.shape[0]):
                lo, hi = rng[c]
                assert (t[c] >= lo - 1).all() and (t[c] <= hi + 1).all()
                d = np.diff(t[c])
                assert (d <= 0).all() if desc[c] else (d >= 0).all()


@pytest.mark.parametrize("max_pes", [None, 4, 12, 40, 200])
def test_conv_folding_is_one_the_window_generator_delivers(tmp_path, max_pes):
    """Every conv's SIMD is a beat width hw/swg.py produces directly (it divides the input
    channels, or is whole pixels of the window): otherwise the generator would feed
    gcd(SIMD, C) elements per beat and the hardware would run slower than the plan says."""
    from accumulus.compiler.compile import CompileOptions
    from accumulus.compiler.types import IntType
    from accumulus.hw.swg import SWGSpec

    plan = compile_model(cg.save(cg.cnn(seed=3, residual=True), tmp_path / "m.onnx"), CompileOptions(max_pes=max_pes))
    convs = [l for l in plan.layers if l["kind"] == "conv"]
    assert convs
    for l in convs:
        c, simd = l["conv"]["in_shape"][2], l["folding"]["simd"]
        spec = SWGSpec(l["conv"]["in_shape"], l["conv"]["kernel"], l["conv"]["stride"], l["conv"]["pads"],
                       pad_value=0, elem=IntType(8, True), simd=simd)
        assert spec.word_elems * spec.lanes == simd, (l["name"], c, simd)
