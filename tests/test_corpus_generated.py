"""Generated graphs: random chains of the supported ops (hypothesis), and qonnx's bundled models.

Every generated graph is compiled and its golden model compared with qonnx 1.0.0 through the
test-side comparison in compiler_graphs (independent of compiler.verify): integer codes equal
except float ties in the reference, top-1 >= 99.9%.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model
from accumulus.compiler.verify import calibration_batch, compare
from accumulus.errors import UserError
from conftest import record_corpus, require_module

require_module("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

ROUNDING = ("ROUND", "FLOOR", "CEIL", "DOWN", "HALF_UP", "HALF_DOWN", "UP", "HALF_EVEN")


@st.composite
def chains(draw):
    seed = draw(st.integers(0, 2 ** 16))
    b = cg.Builder(seed)
    rng = b.rng
    in_bits = draw(st.integers(2, 8))
    in_signed = draw(st.booleans())
    in_scale = np.float32(draw(st.sampled_from([1 / 16, 1 / 255, 0.1, 0.37, 1.0])))
    pre = draw(st.sampled_from(["none", "mul_sub", "div"]))
    x = "x"
    if pre == "mul_sub":       # FINN's TFC preprocessing
        x = b.node("Sub", [b.node("Mul", [x, b.const(np.float32(2))]), b.const(np.float32(1))])
    elif pre == "div":
        x = b.node("Div", [x, b.const(np.float32(3))])
    x = b.quant(x, in_scale, 0, in_bits, in_signed, False)
    x = b.node("Flatten", [x], axis=1)
    k = 16
    depth = draw(st.integers(1, 3))
    for i in range(depth):
        n = draw(st.sampled_from([4, 8, 12]))
        w_bits = draw(st.integers(1, 8))
        per_channel = draw(st.booleans())
        shape_axis = (1, n) if per_channel else (1, 1)
        if w_bits == 1:
            w = rng.normal(0, 1, (k, n)).astype(np.float32)
            s = np.float32(draw(st.sampled_from([0.05, 0.5])))
            wq = b.quant(b.const(w, "w"), s, 0, 1, True, False)
        else:
            wq = b.weight((k, n), w_bits, axis_shape=shape_axis, sparsity=draw(st.sampled_from([0.0, 0.5])),
                          pow2=draw(st.booleans()))
        y = b.node("MatMul", [x, wq])
        if draw(st.booleans()):
            y = b.node("Add", [y, b.const(rng.normal(0, 0.5, n).astype(np.float32), "bias")])
        post = draw(st.sampled_from(["none", "bn", "affine", "neg"]))
        if post == "bn":
            g = rng.uniform(-1.5, 1.5, n).astype(np.float32)
            y = b.node("BatchNormalization", [y, b.const(g, "g"), b.const(rng.normal(0, .5, n).astype(np.float32), "b"),
                                              b.const(rng.normal(0, 2, n).astype(np.float32), "m"),
                                              b.const(rng.uniform(.5, 4, n).astype(np.float32), "v")])
        elif post == "affine":
            y = b.node("Mul", [y, b.const(rng.uniform(0.1, 2, (1, n)).astype(np.float32), "mul")])
        elif post == "neg":
            y = b.node("Mul", [y, b.const(np.float32(-0.5), "mul")])
        last = i == depth - 1
        if not last or draw(st.booleans()):
            if draw(st.booleans()):
                y = b.node("Relu", [y])
            a_bits = draw(st.integers(1, 8))
            signed = draw(st.booleans())
            narrow = draw(st.booleans()) and not (a_bits == 1 and not signed)
            mode = draw(st.sampled_from(ROUNDING))
            scale = np.float32(draw(st.sampled_from([0.25, 0.5, 1.0, 0.3, 1.7])))
            y = b.quant(y, scale, 0, a_bits, signed, narrow, rounding=mode)
        x, k = y, n
    return b.model("x", [1, 16], x, [1, k]), (in_bits, in_signed, float(in_scale))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(chains())
def test_generated_chains_agree_with_qonnx(tmp_path_factory, case):
    model, (in_bits, in_signed, in_scale) = case
    path = tmp_path_factory.mktemp("gen") / "g.onnx"
    cg.save(model, path)
    plan = compile_model(path)
    # inputs over the input's code range (calibration draws) and a few raw uniform values
    x = np.concatenate([calibration_batch(plan, 48, seed=1),
                        np.random.default_rng(2).uniform(-3, 3, (16, 16)).astype(np.float32)])
    ctx = cg.qonnx_run(model, x)
    y, env = predict(plan, x)
    ref = ctx[model.graph.output[0].name]
    stats, lines, all_ties = cg.compare_codes(model, plan, env, ctx)
    assert all_ties, "\n".join(lines)
    for name, (n, bad) in stats.items():
        # a tie flips one code and everything downstream of it in that sample
        assert bad == 0 or all_ties, f"{name}: {bad} of {n} codes differ"
    clean = np.ones(x.shape[0], bool)
    for line in lines:
        clean[int(line.split()[1].rstrip(":"))] = False
    np.testing.assert_allclose(y[clean], ref[clean], rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    # top-1, where the reference's best class is not a float tie with the runner-up (equal
    # integer logits, e.g. from 1-bit weights, come out a few ulp apart in float32)
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
    decided = clean & (top2[:, 1] - top2[:, 0] > 1e-4 * max(1.0, float(np.abs(ref).max())))
    if ref.shape[1] > 1 and decided.any():
        assert (y.argmax(1) == ref.argmax(1))[decided].mean() >= 0.999
    record_corpus("hypothesis: random QONNX op chains")


QONNX_DATA = Path(__import__("qonnx").__file__).parent / "data" / "onnx"
BUNDLED = sorted(p.relative_to(QONNX_DATA).as_posix() for p in QONNX_DATA.rglob("*.onnx"))


@pytest.mark.parametrize("name", BUNDLED)
def test_qonnx_bundled_models(name):
    """Each of qonnx's bundled test models either compiles and agrees with qonnx, or is refused
    with one clear error naming the node (never a wrong plan, never a traceback)."""
    import onnx
    path = QONNX_DATA / name
    try:
        plan = compile_model(path)
    except UserError as exc:
        msg = str(exc)
        assert "'" in msg and len(msg.splitlines()) == 1, msg
        record_corpus("qonnx bundled models (refused, clearly)")
        return
    ver = compare(plan, onnx.load(path), calibration_batch(plan, 8))
    assert ver.ok, ver.first_failure()
    record_corpus("qonnx bundled models (compiled, agree)")
