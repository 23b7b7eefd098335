"""QCDQ weights: ``int8 initializer -> Clip(lo, hi) -> DequantizeLinear`` types the weight by
the clip range (Clip(-7, 7) -> int4 narrow), not by the int8 storage type.

The plan of a QCDQ export must equal the plan of the QONNX export of the same trained model
in every MAC layer's weight type, accumulator data-type bound and weight array; with the
storage type the data-type bound of a 4-bit layer grows by 4 bits and hw builds 8-bit
weight ROMs.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model
from accumulus.compiler.passes.lower import clip_type
from accumulus.compiler.types import IntType
from test_compiler_trained_models import _export_both, _mlp_cfg, _torch, _train, digits  # noqa: F401 (fixture)

MACS = ("matvec", "conv")


def _weight_quants(path):
    """QONNX weight quantizers in graph order: (bits, signed, narrow) read from each Quant node
    whose data input is an initializer (the model's own statement of its weight types)."""
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type == "Quant" and n.input[0] in inits:
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            out.append((int(inits[n.input[3]]), bool(a.get("signed", 1)), bool(a.get("narrow", 0))))
    return out


@pytest.mark.parametrize("bits_w", [4, 3])
def test_trained_mlp_qcdq_weight_types_equal_qonnx(tmp_path, digits, bits_w):  # noqa: F811
    _torch().manual_seed(0)
    ds, x, _ = digits
    cfg = _mlp_cfg(bits_w, 4, hidden=(32,))
    model = _train(cfg, ds)
    qonnx_path, qcdq_path = _export_both(model, cfg, ds, tmp_path)
    # the QCDQ graph really stores the weights as int8 behind a Clip (what this test is about)
    qm = onnx.load(str(qcdq_path))
    inits = {i.name: i for i in qm.graph.initializer}
    clips = [n for n in qm.graph.node if n.op_type == "Clip" and n.input[0] in inits]
    assert len(clips) == 2 and all(inits[c.input[0]].data_type == TensorProto.INT8 for c in clips)

    pq, pc = compile_model(qonnx_path), compile_model(qcdq_path)
    lq = [l for l in pq.layers if l["kind"] in MACS]
    lc = [l for l in pc.layers if l["kind"] in MACS]
    assert len(lq) == len(lc) == 2
    declared = _weight_quants(qonnx_path)
    assert declared == [(bits_w, True, True)] * 2, declared
    for a, b, (bits, signed, narrow) in zip(lq, lc, declared):
        assert a["weight_type"] == {"bits": bits, "signed": signed, "narrow": narrow}, a["name"]
        assert b["weight_type"] == a["weight_type"], (b["name"], b["weight_type"], a["weight_type"])
        assert b["input_type"] == a["input_type"], b["name"]
        assert b["acc"]["bits"]["datatype"] == a["acc"]["bits"]["datatype"], (b["name"], b["acc"], a["acc"])
        np.testing.assert_array_equal(b["acc"]["bits"]["exact"], a["acc"]["bits"]["exact"], err_msg=b["name"])
        wq, wc = pq.array(a["weight"]), pc.array(b["weight"])
        np.testing.assert_array_equal(wc, wq, err_msg=b["name"])
        t = IntType(bits, signed, narrow)
        assert t.min <= wc.min() and wc.max() <= t.max, (b["name"], int(wc.min()), int(wc.max()))
    # same plan, same predictions (golden on both)
    yq, _ = predict(pq, x[:64])
    yc, _ = predict(pc, x[:64])
    np.testing.assert_allclose(yc, yq, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# hand-built: the clip range decides the type; the Clip still clips


def _graph(w, lo, hi, w_dtype=np.int8):
    """x (uint4 codes via QCDQ) @ Dequantize(Clip(w, lo, hi))."""
    K, N = w.shape
    zd = np.dtype(w_dtype).type
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z"),
             numpy_helper.from_array(np.uint8(0), "alo"), numpy_helper.from_array(np.uint8(15), "ahi"),
             numpy_helper.from_array(w.astype(w_dtype), "w"), numpy_helper.from_array(zd(lo), "wlo"),
             numpy_helper.from_array(zd(hi), "whi"), numpy_helper.from_array(np.float32(0.05), "ws"),
             numpy_helper.from_array(zd(0), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("Clip", ["q", "alo", "ahi"], ["c"], name="aclip"),
             helper.make_node("DequantizeLinear", ["c", "s", "z"], ["d"], name="dq"),
             helper.make_node("Clip", ["w", "wlo", "whi"], ["wc"], name="wclip"),
             helper.make_node("DequantizeLinear", ["wc", "ws", "wz"], ["wf"], name="wdq"),
             helper.make_node("MatMul", ["d", "wf"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("lo,hi,w_dtype,want", [
    (-7, 7, np.int8, IntType(4, True, True)),
    (-8, 7, np.int8, IntType(4, True)),
    (-1, 1, np.int8, IntType(2, True, True)),
    (0, 15, np.uint8, IntType(4, False)),
    (-127, 127, np.int8, IntType(8, True, True)),
    (-5, 5, np.int8, IntType(8, True)),          # no whole integer type: the storage type stays
], ids=["int4n", "int4", "int2n", "uint4", "int8n", "not-a-type"])
def test_weight_clip_types_the_weights(tmp_path, lo, hi, w_dtype, want):
    rng = np.random.default_rng(0)
    # codes beyond the clip range on both sides: the Clip must still clip them
    info = np.iinfo(w_dtype)
    w = rng.integers(max(lo - 3, info.min), min(hi + 3, info.max) + 1, (12, 5))
    m = _graph(w, lo, hi, w_dtype)
    cg.save(m, tmp_path / "m.onnx")
    plan = compile_model(tmp_path / "m.onnx")
    (layer,) = [l for l in plan.layers if l["kind"] == "matvec"]
    assert IntType.from_json(layer["weight_type"]) == want
    # the plan's weights are the clipped codes (stream layout: output channels first)
    np.testing.assert_array_equal(plan.array(layer["weight"]), np.clip(w, lo, hi).T)
    x = rng.uniform(-0.2, 1.8, (200, 12)).astype(np.float32)
    y, _ = predict(plan, x)
    np.testing.assert_allclose(y, cg.ort_run(m, x)["y"], rtol=1e-5, atol=1e-5)


def test_clip_type():
    i8, u8 = IntType(8, True), IntType(8, False)
    assert clip_type(-7, 7, i8) == IntType(4, True, True)
    assert clip_type(-8, 7, i8) == IntType(4, True)
    assert clip_type(0, 15, u8) == IntType(4, False)
    assert clip_type(0, 14, u8) == IntType(4, False, True)
    assert clip_type(None, None, i8) == i8
    assert clip_type(-200, 200, i8) == i8             # bounds beyond the storage type
    assert clip_type(-1, 0, i8) == IntType(1, True)
    assert clip_type(0, 10, u8) is None
    assert clip_type(-0.5, 7, i8) is None
    assert clip_type(3, 1, i8) is None                # empty range
