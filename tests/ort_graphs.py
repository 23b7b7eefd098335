"""Float models and onnxruntime's quantize_static for the onnxruntime differential tests.

The float models are built here with onnx.helper (MatMul+Add MLP, Gemm MLP, Conv CNN, each
optionally ending in Softmax) and quantized at test time by
``onnxruntime.quantization.quantize_static``; golden codes are then compared with
onnxruntime's own (graph optimisations off), every requantized tensor by name.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DIGITS_SHAPE = (1, 8, 8)


def _model(nodes, inits, in_shape, out, n_out):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] + list(in_shape))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, n_out])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


class _B:
    def __init__(self):
        self.nodes, self.inits, self.k = [], [], 0

    def const(self, v, base):
        self.k += 1
        name = f"{base}{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(v, dtype=np.float32), name))
        return name

    def node(self, op, ins, name=None, **attrs):
        self.k += 1
        out = f"{op.lower()}_{self.k}"
        self.nodes.append(helper.make_node(op, ins, [out], name=name or f"{op}_{self.k}", **attrs))
        return out


def mlp(weights, biases, gemm=False, softmax=False, in_shape=(64,)):
    """Float MLP: [MatMul + Add | Gemm] (+ Relu between layers), optionally a final Softmax.
    ``weights[i]`` is (in, out); a Gemm stores it transposed (transB=1, as PyTorch exports)."""
    b = _B()
    t = "x"
    if len(in_shape) > 1:
        t = b.node("Flatten", [t], axis=1)
    for i, (w, bias) in enumerate(zip(weights, biases)):
        if gemm:
            t = b.node("Gemm", [t, b.const(np.asarray(w).T, "w"), b.const(bias, "b")], name=f"fc{i}", transB=1)
        else:
            t = b.node("MatMul", [t, b.const(w, "w")], name=f"fc{i}")
            t = b.node("Add", [t, b.const(bias, "b")], name=f"bias{i}")
        if i < len(weights) - 1:
            t = b.node("Relu", [t], name=f"relu{i}")
    if softmax:
        t = b.node("Softmax", [t], name="softmax", axis=-1)
    return _model(b.nodes, b.inits, in_shape, t, np.shape(weights[-1])[1])


def random_mlp(seed=0, widths=(64, 32, 10), gemm=False, softmax=False, in_shape=(64,)):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, 1.5 / np.sqrt(widths[i]), (widths[i], widths[i + 1])) for i in range(len(widths) - 1)]
    bs = [rng.normal(0, 0.2, widths[i + 1]) for i in range(len(widths) - 1)]
    return mlp(ws, bs, gemm, softmax, in_shape)


def random_cnn(seed=0, softmax=False, chans=(6, 8), gemm_head=True):
    """Float CNN on digits: Conv3x3(pad 1)+Relu, Conv3x3(stride 2)+Relu, MaxPool2, Flatten,
    Gemm (or MatMul + Add) -> 10, optionally Softmax."""
    rng = np.random.default_rng(seed)
    b = _B()
    t, cin = "x", 1
    for i, cout in enumerate(chans):
        w = rng.normal(0, 1.5 / np.sqrt(cin * 9), (cout, cin, 3, 3))
        kw = dict(pads=[1, 1, 1, 1]) if i == 0 else dict(pads=[0, 0, 0, 0])
        t = b.node("Conv", [t, b.const(w, "w"), b.const(rng.normal(0, 0.1, cout), "b")], name=f"conv{i}",
                   kernel_shape=[3, 3], **kw)
        t = b.node("Relu", [t], name=f"relu{i}")
        cin = cout
    t = b.node("MaxPool", [t], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    t = b.node("Flatten", [t], name="flatten", axis=1)
    feat = chans[-1] * 3 * 3
    w = rng.normal(0, 1.5 / np.sqrt(feat), (feat, 10))
    if gemm_head:
        t = b.node("Gemm", [t, b.const(w.T, "w"), b.const(rng.normal(0, 0.1, 10), "b")], name="fc", transB=1)
    else:
        t = b.node("MatMul", [t, b.const(w, "w")], name="fc")
        t = b.node("Add", [t, b.const(rng.normal(0, 0.1, 10), "b")], name="fc_bias")
    if softmax:
        t = b.node("Softmax", [t], name="softmax", axis=-1)
    return _model(b.nodes, b.inits, DIGITS_SHAPE, t, 10)


def train_digits_mlp(x, labels, widths=(64, 64, 32, 10), epochs=40, seed=0, lr=0.05):
    """Float MLP trained briefly on digits (plain numpy SGD on softmax cross-entropy)."""
    rng = np.random.default_rng(seed)
    W = [rng.normal(0, np.sqrt(2 / widths[i]), (widths[i], widths[i + 1])) for i in range(len(widths) - 1)]
    B = [np.zeros(widths[i + 1]) for i in range(len(widths) - 1)]
    X = x.reshape(len(x), -1).astype(np.float64)
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        for s in range(0, len(X), 64):
            idx = perm[s:s + 64]
            h = [X[idx]]
            for i in range(len(W)):
                z = h[-1] @ W[i] + B[i]
                h.append(np.maximum(z, 0) if i < len(W) - 1 else z)
            p = np.exp(h[-1] - h[-1].max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), labels[idx]] -= 1
            g = p / len(idx)
            for i in reversed(range(len(W))):
                gw, gb = h[i].T @ g, g.sum(0)
                if i:
                    g = (g @ W[i].T) * (h[i] > 0)
                W[i] -= lr * gw
                B[i] -= lr * gb
    return [w.astype(np.float32) for w in W], [b.astype(np.float32) for b in B]


def quantize(float_model, path, calib, quant_format="QDQ", per_channel=False, reduce_range=False,
             activation_type="QUInt8", weight_type="QInt8", act_symmetric=False, weight_symmetric=None):
    """``onnxruntime.quantization.quantize_static`` (MinMax calibration on ``calib``)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": c[None]} for c in calib])

        def get_next(self):
            return next(self.it, None)

    src = str(path) + ".float.onnx"
    onnx.save(float_model, src)
    extra = {"ActivationSymmetric": bool(act_symmetric)}
    if weight_symmetric is not None:
        extra["WeightSymmetric"] = bool(weight_symmetric)
    quantize_static(src, str(path), Reader(), quant_format=getattr(QuantFormat, quant_format),
                    per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=getattr(QuantType, activation_type), weight_type=getattr(QuantType, weight_type),
                    calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
    return onnx.load(str(path))


# -- onnxruntime's codes ---------------------------------------------------------------------------
def ort_run_all(model, x):
    """onnxruntime (graph optimisations off) with every node output exposed; constants added."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = x.shape[0]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    del m.graph.value_info[:]
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for t in n.output:
            if t and t not in have:
                m.graph.output.append(helper.make_empty_tensor_value_info(t))
                have.add(t)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ctx = dict(zip(names, sess.run(None, {m.graph.input[0].name: x})))
    for i in m.graph.initializer:
        ctx.setdefault(i.name, numpy_helper.to_array(i))
    return ctx


def _f64(ctx, name, default=0.0):
    return np.asarray(ctx[name], dtype=np.float64) if name else np.asarray(default, dtype=np.float64)


def _per_axis(v, nd, axis):
    v = np.asarray(v, dtype=np.float64)
    if v.size == 1:
        return v.reshape(())
    shape = [1] * nd
    shape[axis] = -1
    return v.reshape(shape)


def _conv_nchw(x, w, pads, strides, dil, group):
    """Float64 convolution (ONNX Conv semantics) by PyTorch, for the reference's pre-rounding values."""
    import torch

    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    return torch.nn.functional.conv2d(torch.from_numpy(xp), torch.from_numpy(np.asarray(w, np.float64)),
                                      stride=tuple(strides), dilation=tuple(dil), groups=group).numpy()


def reference_pre_rounding(model, ctx, node):
    """The value a quantizing node of the reference rounds, in float64 from its own inputs:
    ``v / s`` (QuantizeLinear; the zero point is added after rounding) and, for the QOperator
    ops, the exact real result over the output scale, ``acc · s_a·s_b / s_y`` (QLinearMatMul,
    QLinearConv, QGemm) or ``(s_a·(a - z_a) + s_b·(b - z_b)) / s_c`` (QLinearAdd). None for
    other ops."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    i = list(node.input) + [""] * 9
    op = node.op_type
    if op == "QuantizeLinear":
        x = _f64(ctx, i[0])
        return x / _per_axis(ctx[i[1]], x.ndim, attrs.get("axis", 1) % x.ndim)
    if op == "QLinearMatMul":
        a = _f64(ctx, i[0]) - _f64(ctx, i[2])
        b = _f64(ctx, i[3]) - _per_axis(_f64(ctx, i[5]), 2, 1)
        return (a @ b) * float(np.float32(ctx[i[1]])) * _per_axis(ctx[i[4]], 2, 1).reshape(-1) / _f64(ctx, i[6])
    if op == "QGemm":
        a = _f64(ctx, i[0]) - _f64(ctx, i[2])
        b = _f64(ctx, i[3])
        bz = _per_axis(_f64(ctx, i[5]), 2, 0 if attrs.get("transB", 0) else 1)
        bs = _per_axis(ctx[i[4]], 2, 0 if attrs.get("transB", 0) else 1)
        if attrs.get("transB", 0):
            b, bz, bs = b.T, np.asarray(bz).T, np.asarray(bs).T
        acc = a @ (b - bz) + (_f64(ctx, i[6]) if i[6] else 0.0)
        return acc * attrs.get("alpha", 1.0) * float(np.float32(ctx[i[1]])) * np.asarray(bs).reshape(-1) / _f64(ctx, i[7])
    if op == "QLinearConv":
        x = _f64(ctx, i[0]) - _f64(ctx, i[2])
        w = _f64(ctx, i[3]) - _per_axis(_f64(ctx, i[5]), 4, 0)
        acc = _conv_nchw(x, w, attrs.get("pads", [0, 0, 0, 0]), attrs.get("strides", [1, 1]),
                         attrs.get("dilations", [1, 1]), attrs.get("group", 1))
        if i[8]:
            acc = acc + _f64(ctx, i[8]).reshape(1, -1, 1, 1)
        ws = _per_axis(ctx[i[4]], 4, 0)
        return acc * float(np.float32(ctx[i[1]])) * ws.reshape(1, -1, 1, 1) / _f64(ctx, i[6])
    if op == "QLinearAdd":
        a = (_f64(ctx, i[0]) - _f64(ctx, i[2])) * _f64(ctx, i[1])
        b = (_f64(ctx, i[3]) - _f64(ctx, i[5])) * _f64(ctx, i[4])
        return (a + b) / _f64(ctx, i[6])
    return None


def compare_all(model, plan, env, ctx, tie_tol=1e-4):
    """Golden codes vs onnxruntime's on EVERY requantized tensor of the plan.

    Returns (stats {layer: (elements, mismatches)}, lines, all_ties). A tensor the reference
    does not produce as integer codes raises: nothing is silently left out. A difference is a
    float tie when the reference's pre-rounding value (:func:`reference_pre_rounding`) is
    within ``tie_tol`` of a half-integer; a sample is excused when its first differing
    tensor's differences are all ties (the tie then propagates downstream).
    """
    from compiler_graphs import to_stream

    producer = {o: n for n in model.graph.node for o in n.output}
    stats, first, lines, all_ties = {}, {}, [], True
    requantized = [l for l in plan.layers if l.get("requant") is not None and l.get("onnx_tensor")]
    for l in requantized:
        t = l["onnx_tensor"]
        assert t in ctx, f"{l['name']}: ONNX tensor {t} not produced by onnxruntime"
        v = np.asarray(ctx[t])
        assert np.issubdtype(v.dtype, np.integer), f"{l['name']}: {t} is {v.dtype}, not integer codes"
        node = producer[t]
        B = v.shape[0]
        pshape = plan.tensor_shape(l["output"])
        codes = to_stream(v.astype(np.int64), pshape).reshape(B, -1)
        gold = env[l["output"]].reshape(B, -1)
        assert codes.shape == gold.shape, (l["name"], codes.shape, gold.shape)
        bad = codes != gold
        stats[l["name"]] = (int(bad.size), int(bad.sum()))
        if not bad.any():
            continue
        pre = reference_pre_rounding(model, ctx, node)
        pre = None if pre is None else to_stream(np.broadcast_to(pre, v.shape), pshape).reshape(B, -1)
        for b in np.nonzero(bad.any(axis=1))[0]:
            if int(b) in first:
                continue
            p = None if pre is None else pre[b, bad[b]]
            tie = p is not None and bool(np.all(np.abs(np.abs(p - np.floor(p)) - 0.5) < tie_tol))
            first[int(b)] = tie
            all_ties &= tie
            lines.append(f"sample {b}: first difference in {l['name']} ({node.op_type} '{node.name}') at "
                         f"{np.nonzero(bad[b])[0].tolist()}: golden {gold[b, bad[b]].tolist()} reference "
                         f"{codes[b, bad[b]].tolist()} pre-rounding {None if p is None else p.tolist()} -> "
                         f"{'float tie' if tie else 'NOT A TIE'}")
    return stats, lines, all_ties
