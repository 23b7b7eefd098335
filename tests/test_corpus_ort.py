"""Differential corpus: graphs quantized by onnxruntime's ``quantize_static`` at test time,
golden vs onnxruntime with graph optimisations off.

Float graphs (tests/ort_graphs.py: MatMul + Add MLP, Gemm MLP, Conv CNN with a Gemm head or a
MatMul + Add head, half of them ending in Softmax) are quantized with MinMax calibration over
the full grid of ``quantize_static``'s options: QDQ and QOperator format, ``per_channel``,
``reduce_range``, symmetric or asymmetric activations, int8 or uint8 activations and weights.
onnxruntime itself refuses int8 activations with uint8 weights ("doesn't support data
format"), in both formats; those 64 combinations are left out (and a test checks that it
still refuses them). Each graph is compiled, and its golden model compared with
onnxruntime's on 200 inputs (half inside the calibration range, half beyond it so that the
output quantizers saturate): every requantized tensor of the plan by name (none missing),
top-1, the output values of every sample without a code tie, and compile's own
self-verification.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model
from accumulus.compiler.verify import calibration_batch, compare
from conftest import record_corpus, require_module

SAMPLES = 200
MIN_AGREE = 0.999
ARCHS = ("matmul-add", "gemm", "cnn-gemm", "cnn-matmul")
REFUSED_BY_ORT = ("QInt8", "QUInt8")        # (activation_type, weight_type) quantize_static rejects


def _grid():
    cases = []
    for i, (arch, fmt, pc, rr, sym, at, wt) in enumerate(itertools.product(
            ARCHS, ("QDQ", "QOperator"), (False, True), (False, True), (False, True),
            ("QUInt8", "QInt8"), ("QInt8", "QUInt8"))):
        if (at, wt) == REFUSED_BY_ORT:
            continue
        name = (f"{arch}-{fmt}-{'pc' if pc else 'pt'}{'-rr' if rr else ''}-{'sym' if sym else 'asym'}"
                f"-a{at[1:].lower()}-w{wt[1:].lower()}")
        cases.append(dict(name=name, arch=arch, quant_format=fmt, per_channel=pc, reduce_range=rr,
                          act_symmetric=sym, activation_type=at, weight_type=wt, seed=i, softmax=i % 2 == 0))
    return cases


CASES = _grid()


def _float_model(case):
    import ort_graphs as og

    s, arch = case["seed"], case["arch"]
    if arch in ("matmul-add", "gemm"):
        widths = (64, 32, 10) if s % 3 else (64, 48, 24, 10)
        return og.random_mlp(seed=s, widths=widths, gemm=arch == "gemm", softmax=case["softmax"]), (64,)
    return og.random_cnn(seed=s, softmax=case["softmax"], gemm_head=arch == "cnn-gemm"), og.DIGITS_SHAPE


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_onnxruntime_quantized_graph_agrees(tmp_path, case):
    require_module("onnxruntime")
    import ort_graphs as og

    fm, shape = _float_model(case)
    rng = np.random.default_rng(case["seed"])
    calib = rng.uniform(0, 1, (16,) + shape).astype(np.float32)
    opts = {k: case[k] for k in ("quant_format", "per_channel", "reduce_range", "activation_type",
                                 "weight_type", "act_symmetric")}
    qm = og.quantize(fm, tmp_path / "q.onnx", calib, **opts)
    ops = {n.op_type for n in qm.graph.node}
    if case["quant_format"] == "QDQ":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    else:
        assert ops & {"QLinearMatMul", "QLinearConv", "QGemm"}, ops

    plan = compile_model(tmp_path / "q.onnx")
    x = np.concatenate([rng.uniform(0, 1, (SAMPLES // 2,) + shape),
                        rng.uniform(-0.5, 1.5, (SAMPLES - SAMPLES // 2,) + shape)]).astype(np.float32)
    ctx = og.ort_run_all(qm, x)
    y, env = predict(plan, x)
    ref = ctx[qm.graph.output[0].name]

    stats, lines, all_ties = og.compare_all(qm, plan, env, ctx)
    for line in lines:
        print(line)
    assert len(stats) >= (2 if case["arch"] in ("matmul-add", "gemm") else 3), sorted(stats)
    assert all_ties, "\n".join(lines)
    ties = cg.code_tie_samples(lines)
    top1, real = cg.top1_excusing_ties(ref, y, ties)
    assert top1 >= MIN_AGREE, f"top-1 {top1:.4f}; samples {real[:10]} disagree without a tie"
    clean = np.array([b not in ties for b in range(len(x))])
    assert y.dtype == ref.dtype, (y.dtype, ref.dtype)
    # dequantized output codes (or onnxruntime's QLinearSoftmax codes): the same float32 arithmetic
    np.testing.assert_array_equal(y[clean], ref[clean])
    ver = compare(plan, qm, calibration_batch(plan, 32, seed=5))
    assert ver.ok, ver.first_failure()
    # ... and it compared every requantized tensor (QGemm and QLinearAdd outputs included)
    assert {t.layer for t in ver.tensors} >= set(stats), sorted(set(stats) - {t.layer for t in ver.tensors})
    record_corpus("onnxruntime quantize_static")


def test_onnxruntime_still_refuses_int8_activations_with_uint8_weights(tmp_path):
    """The combinations left out of the grid are left out because onnxruntime refuses them;
    if a later onnxruntime accepts them, they belong in the corpus."""
    require_module("onnxruntime")
    import ort_graphs as og

    fm = og.random_mlp(seed=0)
    calib = np.random.default_rng(0).uniform(0, 1, (4, 64)).astype(np.float32)
    for fmt in ("QDQ", "QOperator"):
        with pytest.raises(ValueError, match="support"):
            og.quantize(fm, tmp_path / f"{fmt}.onnx", calib, quant_format=fmt,
                        activation_type=REFUSED_BY_ORT[0], weight_type=REFUSED_BY_ORT[1])
