"""An onnxruntime-quantized graph, end to end (slow tier).

A plain float MLP (MatMul + Add + Relu, 64-64-32-10, Softmax at the end) is trained on the
digits set in numpy, then quantized by ``onnxruntime.quantization.quantize_static`` as a
user would: QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration. Its
graph has the shape that defeated the golden model before: int8 weight ``DequantizeLinear``
with ``axis=1``, the MatMul output quantized to uint8 with a non-zero zero point *before* a
separate ``Add``, the bias a uint8 ``DequantizeLinear`` with its own scale and zero point, the
Relu absorbed into a zero-point-0 ``QuantizeLinear``, and a QuantizeLinear/DequantizeLinear
pair around the Softmax. It is taken through ``accumulus compile`` (which verifies itself
against onnxruntime), ``predict`` (top-1 against onnxruntime, optimisations off, on every
digits image), ``build`` and ``sim`` on Verilator.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import compiler_graphs as cg
from accumulus.cli import main
from accumulus.commands.predict import predict
from accumulus.compiler.plan import Plan
from conftest import require_module, require_tool

MIN_AGREE = 0.999


def _pattern(qm):
    """The graph features of the issue's description, read from onnxruntime's own output."""
    inits = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
    prod = {o: n for n in qm.graph.node for o in n.output}
    dq = [n for n in qm.graph.node if n.op_type == "DequantizeLinear"]
    weight_dq = [n for n in dq if n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    axes = {next((a.i for a in n.attribute if a.name == "axis"), 1) for n in weight_dq}
    adds = [n for n in qm.graph.node if n.op_type == "Add"]
    # each Add reads a dequantized, requantized MatMul output and a uint8 dequantized bias
    bias_dq = [prod[i] for a in adds for i in a.input if prod.get(i) is not None and prod[i].input[0] in inits]
    mm_q = [prod[prod[i].input[0]] for a in adds for i in a.input
            if prod.get(i) is not None and prod[i].input[0] in prod and prod[prod[i].input[0]].op_type == "QuantizeLinear"]
    mm_zp = [int(inits[q.input[2]]) for q in mm_q if prod[q.input[0]].op_type == "MatMul"]
    ops = [n.op_type for n in qm.graph.node]
    sm = ops.index("Softmax")
    return dict(weight_axes=axes, n_weight_dq=len(weight_dq),
                bias_dtypes={str(inits[n.input[0]].dtype) for n in bias_dq},
                matmul_out_zp=mm_zp, relu_left=ops.count("Relu"),
                softmax_wrapped=ops[sm - 1] == "DequantizeLinear" and ops[sm + 1] == "QuantizeLinear")


@pytest.mark.slow
def test_onnxruntime_qdq_mlp_compile_predict_build_cosim(tmp_path):
    require_module("onnxruntime")
    require_tool("g++")
    require_module("verilator")
    import ort_graphs as og

    from accumulus.quant.data import load_dataset

    ds = load_dataset("digits")
    x = np.concatenate([ds.x_test, ds.x_train]).reshape(-1, 64).astype(np.float32)
    labels = np.concatenate([ds.y_test, ds.y_train])
    ws, bs = og.train_digits_mlp(ds.x_train, ds.y_train, widths=(64, 64, 32, 10))
    fm = og.mlp(ws, bs, softmax=True)
    qm = og.quantize(fm, tmp_path / "q.onnx", ds.x_train[:128].reshape(-1, 64), quant_format="QDQ",
                     per_channel=True, activation_type="QUInt8", weight_type="QInt8")
    pat = _pattern(qm)
    assert pat["weight_axes"] == {1} and pat["n_weight_dq"] == 3, pat
    assert pat["bias_dtypes"] == {"uint8"} and len(pat["matmul_out_zp"]) == 3 and any(pat["matmul_out_zp"]), pat
    assert pat["relu_left"] == 0 and pat["softmax_wrapped"], pat

    proj = tmp_path / "proj"
    assert main(["compile", str(tmp_path / "q.onnx"), "--out", str(proj)]) == 0
    plan = Plan.load(proj)
    assert plan.doc["verification"]["ok"] is True and plan.doc["verification"]["samples"] >= 32

    ctx = og.ort_run_all(qm, x)
    y, env = predict(plan, x)
    ref = ctx[qm.graph.output[0].name]
    stats, lines, all_ties = og.compare_all(qm, plan, env, ctx)
    assert len(stats) >= 5 and all_ties, (sorted(stats), lines[:5])
    # the quantized Softmax's top code can be shared by two classes: compare the logit codes'
    # argmax (what the hardware outputs) and, separately, the Softmax output values
    logits = [l for l in plan.layers if l.get("onnx_tensor")][-1]
    top1 = float(np.mean(env[logits["output"]].reshape(len(x), -1).argmax(1)
                         == ctx[logits["onnx_tensor"]].reshape(len(x), -1).argmax(1)))
    ties = cg.code_tie_samples(lines)
    clean = np.array([b not in ties for b in range(len(x))])
    np.testing.assert_array_equal(y[clean], ref[clean])
    accuracy = float(np.mean(ref.argmax(1) == labels))
    print(f"onnxruntime QDQ MLP: {len(stats)} requantized tensors, {len(ties)} tie samples; top-1 golden vs "
          f"onnxruntime {top1:.4f} on {len(x)} images; onnxruntime accuracy {accuracy:.4f}; pattern {pat}")
    assert len(x) >= 1000 and top1 >= MIN_AGREE
    assert accuracy > 0.85, "the trained net should be a real classifier"

    cg.build_and_cosim_verilator(proj, x, tmp_path / "x.npy")
