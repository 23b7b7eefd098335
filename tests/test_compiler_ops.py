"""Op coverage against qonnx execution: ArgMax/TopK/Softmax outputs, bipolar/2/8-bit
activations, Gemm, Trunc (v1, v2), and front-door rejection of unsupported options."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model
from accumulus.errors import UserError


def _run(model, tmp_path, x):
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"))
    ctx = cg.qonnx_run(model, x)
    y, env = predict(plan, x)
    return plan, y, ctx[model.graph.output[0].name], env, ctx


def _x(n=1000, shape=(1, 8, 8), seed=0):
    return np.random.default_rng(seed).uniform(-0.1, 1.1, size=(n,) + shape).astype(np.float32)


def test_argmax_output_is_exact_with_per_channel_scales(tmp_path):
    model, _ = cg.mlp(seed=3, final_argmax=True)
    plan, y, ref, env, _ = _run(model, tmp_path, _x(2000))
    assert plan.doc["output"]["kind"] == "argmax" and plan.layers[-1]["kind"] == "argmax"
    assert y.dtype == np.int64 and y.shape == ref.shape
    assert (y == ref).mean() == 1.0
    assert not plan.doc["notes"], "the common-scale mapping is exact: no inexactness note"


@pytest.mark.parametrize("attrs, msg", [(dict(select_last_index=1), "select_last_index=1"),
                                        (dict(), None)])
def test_argmax_options(tmp_path, attrs, msg):
    model, _ = cg.mlp(seed=3, final_argmax=True)
    node = model.graph.node[-1]
    node.attribute.extend([helper.make_attribute(k, v) for k, v in attrs.items()])
    if msg:
        with pytest.raises(UserError, match=msg):
            compile_model(cg.save(model, tmp_path / "m.onnx"))
    else:
        compile_model(cg.save(model, tmp_path / "m.onnx"))


@pytest.mark.parametrize("k, largest, msg", [(2, 1, "k=2"), (1, 0, "largest=0")])
def test_topk_rejects_unsupported(tmp_path, k, largest, msg):
    b = cg.Builder(0)
    x = b.quant("x", np.float32(1 / 16), 0, 5, False, False)
    x = b.node("Flatten", [x], axis=1)
    w = b.weight((64, 10), 4, axis_shape=(1, 10))
    y = b.node("MatMul", [x, w], name="fc")
    kk = b.const(np.array([k], np.int64), "k")
    b.nodes.append(helper.make_node("TopK", [y, kk], ["vals", "idx"], name="topk", axis=-1, largest=largest))
    m = b.model("x", [1, 1, 8, 8], "idx", [1, k])
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(UserError, match=msg):
        compile_model(cg.save(m, tmp_path / "m.onnx"))


def test_softmax_is_applied_by_predict(tmp_path):
    b = cg.Builder(1)
    x = b.quant("x", np.float32(1 / 16), 0, 5, False, False)
    x = b.node("Flatten", [x], axis=1)
    w = b.weight((64, 10), 4, axis_shape=(1, 10))
    y = b.node("MatMul", [x, w], name="fc")
    y = b.node("Softmax", [y], axis=-1)
    m = b.model("x", [1, 1, 8, 8], y, [1, 10])
    plan, yy, ref, _, _ = _run(m, tmp_path, _x(500))
    assert [t["op"] for t in plan.doc["output"]["trailing"]] == ["Softmax"]
    np.testing.assert_allclose(yy, ref, rtol=1e-5, atol=1e-6)


def _act_mlp(kind, seed=0):
    b = cg.Builder(seed)
    x = b.quant("x", np.float32(1 / 16), 0, 5, False, False)
    x = b.node("Flatten", [x], axis=1)
    for i, n in enumerate((32, 32)):
        w = b.weight((64 if i == 0 else 32, n), 4, axis_shape=(1, n))
        x = b.node("MatMul", [x, w], name=f"fc{i}")
        x = b.node("Add", [x, b.const(b.rng.normal(0, .5, n).astype(np.float32), "b")])
        if kind == "bipolar":
            x = b.node("BipolarQuant", [x, b.const(np.float32(0.5), "s")], domain=cg.QDOM)
        elif kind == "1bit-quant":
            x = b.quant(x, np.float32(1.0), 0, 1, True, False)
        elif kind == "8bit":
            x = b.node("Relu", [x])
            x = b.quant(x, np.float32(0.02), 0, 8, False, False)
        elif kind == "2bit-signed-clip":
            x = b.node("Clip", [x, b.const(np.float32(-1.0), "lo"), b.const(np.float32(1.0), "hi")])
            x = b.quant(x, np.float32(0.5), 0, 2, True, True, rounding="FLOOR")
    w = b.weight((32, 10), 4, axis_shape=(1, 10))
    x = b.node("Gemm", [x, b.node("Transpose", [w], perm=[1, 0])], name="head", transB=1)
    return b.model("x", [1, 1, 8, 8], x, [1, 10])


@pytest.mark.parametrize("kind", ["bipolar", "1bit-quant", "8bit", "2bit-signed-clip"])
def test_activation_kinds_equal_qonnx(tmp_path, kind):
    model = _act_mlp(kind)
    x = _x(1000)
    x[:300] = np.round(x[:300] * 32) / 32
    plan, y, ref, env, ctx = _run(model, tmp_path, x)
    stats, lines, ties = cg.compare_codes(model, plan, env, ctx)
    for line in lines:
        print(line)
    for name, (n, bad) in stats.items():
        assert (n - bad) / n >= 0.999, (name, bad, n)
    assert ties
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.999
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    if kind in ("bipolar", "1bit-quant"):
        codes = env[plan.layers[0]["output"]]
        assert set(np.unique(codes)) <= {-1, 1}
        assert plan.layers[0]["requant"]["out_scale"] == 2


@pytest.mark.parametrize("version", [1, 2])
def test_trunc_after_average_pool(tmp_path, version):
    b = cg.Builder(2)
    x = b.quant("x", np.float32(1 / 16), 0, 5, False, False)
    w = b.weight((8, 1, 3, 3), 4, axis_shape=(8, 1, 1, 1))
    y = b.node("Conv", [x, w], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    y = b.node("Relu", [y])
    y = b.quant(y, np.float32(0.25), 0, 4, False, False)
    y = b.node("AveragePool", [y], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Mul", [y, b.const(np.float32(4.0), "four")])   # Brevitas: sum = avg * k*k
    s, z = b.const(np.float32(0.25), "ts"), b.const(np.float32(0), "tz")
    if version == 1:
        y = b.node("Trunc", [y, s, z, b.const(np.float32(6), "ib"), b.const(np.float32(4), "ob")], domain=cg.QDOM,
                   rounding_mode="FLOOR")
    else:
        y = b.node("Trunc", [y, s, z, b.const(np.float32(6), "ib"), b.const(np.float32(1.0), "os"),
                             b.const(np.float32(4), "ob")], domain=cg.QDOM, rounding_mode="FLOOR", signed=0)
    y = b.node("Flatten", [y], axis=1)
    w2 = b.weight((128, 10), 4, axis_shape=(1, 10))
    y = b.node("MatMul", [y, w2], name="fc")
    m = b.model("x", [1, 1, 8, 8], y, [1, 10], opset=13)
    if version == 2:
        for o in m.opset_import:
            if o.domain == cg.QDOM:
                o.version = 2
    plan, yy, ref, env, _ = _run(m, tmp_path, _x(500))
    assert "avgpool" in [l["kind"] for l in plan.layers]
    np.testing.assert_allclose(yy, ref, rtol=1e-5, atol=1e-5)


def test_every_unsupported_node_listed_once(tmp_path):
    model, _ = cg.mlp(seed=0)
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    relus[0].op_type = "Sigmoid"
    relus[1].op_type = "Tanh"
    with pytest.raises(UserError) as exc:
        compile_model(cg.save(model, tmp_path / "m.onnx"))
    msg = str(exc.value)
    assert "2 unsupported node(s)" in msg and "Sigmoid" in msg and "Tanh" in msg
    assert relus[0].name in msg and relus[1].name in msg and "\n" not in msg


def test_shape_chain_folding_and_old_ir_initializer_inputs(tmp_path):
    """x.view(x.shape[0], -1) exports as Shape->Gather->Unsqueeze->Concat->Reshape: folded away;
    initializers also listed as graph inputs (old IR) are constants, not data inputs."""
    b = cg.Builder(4)
    x = b.quant("x", np.float32(1 / 16), 0, 5, False, False)
    shp = b.node("Shape", [x])
    g0 = b.node("Gather", [shp, b.const(np.array(0, np.int64), "i0")], axis=0)
    u = b.node("Unsqueeze", [g0, b.const(np.array([0], np.int64), "ax")])
    cat = b.node("Concat", [u, b.const(np.array([-1], np.int64), "m1")], axis=0)
    f = b.node("Reshape", [x, cat])
    w = b.weight((64, 10), 4, axis_shape=(1, 10))
    y = b.node("MatMul", [f, w], name="fc")
    m = b.model("x", [1, 1, 8, 8], y, [1, 10])
    for init in m.graph.initializer:       # old IR: every initializer is also a graph input
        m.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    m.ir_version = 3
    plan, yy, ref, _, _ = _run(m, tmp_path, _x(300))
    assert [l["kind"] for l in plan.layers] == ["matvec"]
    np.testing.assert_allclose(yy, ref, rtol=1e-5, atol=1e-5)
