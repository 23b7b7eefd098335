"""Hand-built quantized ONNX graphs for the compiler tests (onnx.helper only).

Shaped like Brevitas' export_qonnx output: a Quant on the input (scale 1/16, 5-bit
unsigned: digits codes 0..16), per-channel 4-bit signed narrow weight Quants, MatMul/Conv
with float bias, ReLU then an unsigned 4-bit activation Quant.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QDOM = "qonnx.custom_op.general"


class Builder:
    def __init__(self, seed=0, domain=QDOM):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0
        self.domain = domain

    def name(self, base):
        self.k += 1
        return f"{base}{self.k}"

    def const(self, value, base="c"):
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def node(self, op, inputs, domain="", name=None, **attrs):
        out = self.name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or self.name(op), domain=domain, **attrs))
        return out

    def quant(self, x, scale, zp, bits, signed, narrow, rounding="ROUND", name=None):
        ins = [x, self.const(np.asarray(scale, np.float32), "scale"), self.const(np.asarray(zp, np.float32), "zp"),
               self.const(np.float32(bits), "bits")]
        return self.node("Quant", ins, domain=self.domain, name=name, signed=int(signed), narrow=int(narrow),
                         rounding_mode=rounding)

    def weight(self, shape, bits=4, axis_shape=None, sparsity=0.3, pow2=False):
        """Float weights whose Quant gives per-channel 4-bit narrow codes."""
        w = self.rng.normal(0, 1, size=shape).astype(np.float32)
        w[self.rng.random(shape) < sparsity] = 0
        scale = (np.abs(w).max(axis=tuple(i for i in range(len(shape)) if axis_shape[i] == 1), keepdims=True)
                 / (2 ** (bits - 1) - 1)).astype(np.float32)
        scale[scale == 0] = 1
        scale = scale.reshape(axis_shape)
        if pow2:
            scale = (2.0 ** np.round(np.log2(scale))).astype(np.float32)
        return self.quant(self.const(w, "w"), scale, 0, bits, True, True)

    def model(self, x_name, x_shape, out, out_shape=None, metadata=None, opset=13):
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(self.domain, 1)])
        if metadata is not None:
            import json
            helper.set_model_props(m, {"accumulus": json.dumps(metadata)})
        return m


def mlp(widths=(64, 64, 64, 10), seed=0, in_scale=1 / 16, in_bits=5, act_bits=4, w_bits=4, in_shape=(1, 1, 8, 8),
        act_scale=None, domain=QDOM, final_argmax=False, pow2=False, metadata=None):
    """Brevitas-like QONNX MLP: input Quant -> Flatten -> [MatMul+bias -> Relu -> Quant]* -> MatMul+bias."""
    b = Builder(seed, domain)
    x = b.quant("x", np.float32(in_scale), 0, in_bits, False, False, name="input_quant")
    x = b.node("Flatten", [x], axis=1)
    names = []
    for i in range(len(widths) - 1):
        k, n = widths[i], widths[i + 1]
        w = b.weight((k, n), w_bits, axis_shape=(1, n), pow2=pow2)
        name = f"fc{i}"
        names.append(name)
        y = b.node("MatMul", [x, w], name=name)
        bias = (b.rng.normal(0, 0.5, size=(n,))).astype(np.float32)
        if pow2:
            bias = (np.round(bias * 8) / 8).astype(np.float32)
        y = b.node("Add", [y, b.const(bias, "bias")])
        if i < len(widths) - 2:
            y = b.node("Relu", [y])
            s = np.float32(act_scale if act_scale is not None else b.rng.uniform(0.2, 0.6))
            y = b.quant(y, s, 0, act_bits, False, False)
        x = y
    out_shape = [1, widths[-1]]
    if final_argmax:
        x = b.node("ArgMax", [x], axis=1, keepdims=1)
        m = b.model("x", list(in_shape), x, [1, 1], metadata=metadata)
        m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
        return m, names
    return b.model("x", list(in_shape), x, out_shape, metadata=metadata), names


def save(model, path):
    onnx.save(model, str(path))
    return path


def with_batch(model, batch):
    """A copy of ``model`` whose data input and outputs have batch size ``batch`` (qonnx checks shapes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    del m.graph.value_info[:]
    return m


def qonnx_run(model, x, all_tensors=True):
    """Execute with qonnx 1.0.0 (the reference executor); every tensor by name."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    m = with_batch(model, x.shape[0])
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    mw = ModelWrapper(m).transform(InferShapes())
    return execute_onnx(mw, {m.graph.input[0].name: x}, return_full_exec_context=all_tensors)


def _producer(model, tensor):
    for n in model.graph.node:
        if tensor in n.output:
            return n
    return None


def _init(model, name):
    for i in model.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    return None


def to_stream(a, plan_shape=None):
    """ONNX layout (B, C, H, W) -> stream order (B, H, W, C); a flattened CHW vector whose plan
    tensor is an [H, W, C] image is reordered likewise; other vectors unchanged."""
    if a.ndim == 2 and plan_shape is not None and len(plan_shape) == 3:
        h, w, c = plan_shape
        a = a.reshape(a.shape[0], c, h, w)
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def compare_codes(model, plan, env, ctx, tie_tol=1e-4):
    """Compare every requantized tensor of the plan with the reference's quantizer output.

    Returns (stats, report): stats maps layer -> (elements, mismatches); report lists, per
    sample, the first layer where golden and reference differ, with each differing element's
    pre-rounding value in the reference (a tie is |frac - 0.5| < tie_tol) -- the evidence
    that the difference is a float tie in the reference, not a compiler error.
    """
    stats, first_diff, mode_of = {}, {}, {}
    layers = [l for l in plan.layers if l.get("onnx_tensor") and l["onnx_tensor"] in ctx]
    for l in layers:
        t = plan.tensor(l["output"])
        v = ctx[l["onnx_tensor"]]
        node = _producer(model, l["onnx_tensor"])
        if node is not None:
            mode_of[l["name"]] = next((a.s.decode() for a in node.attribute if a.name == "rounding_mode"), "ROUND")
            bits = _init(model, node.input[3]) if node.op_type == "Quant" and len(node.input) > 3 else None
            signed = next((a.i for a in node.attribute if a.name == "signed"), 1)
            if node.op_type == "BipolarQuant" or (bits is not None and int(np.ravel(bits)[0]) == 1 and signed):
                mode_of[l["name"]] = "SIGN"      # steps where x / s (+ z) crosses 0
        if node is not None and node.op_type in ("QuantizeLinear", "QLinearMatMul", "QLinearConv", "MultiThreshold"):
            if node.op_type == "MultiThreshold":
                a = node.attribute
                osc = next((x.f for x in a if x.name == "out_scale"), 1.0)
                ob = next((x.f for x in a if x.name == "out_bias"), 0.0)
                codes = np.round((v - ob) / osc)
            else:
                codes = v.astype(np.int64)
        else:
            codes = np.round(v / np.float64(t["scale"]) + np.float64(t["zero_point"]))
        pshape = plan.tensor_shape(l["output"])
        codes = to_stream(codes, pshape).reshape(v.shape[0], -1)
        gold = env[l["output"]].reshape(v.shape[0], -1)
        bad = codes != gold
        stats[l["name"]] = (int(bad.size), int(bad.sum()))
        for b in np.nonzero(bad.any(axis=1))[0]:
            if b in first_diff:
                continue
            pre = None
            if node is not None and node.op_type == "BipolarQuant":
                src = ctx[node.input[0]]
                s = float(np.ravel(ctx.get(node.input[1], _init(model, node.input[1])))[0])
                y = to_stream(src.astype(np.float64) / s, pshape).reshape(v.shape[0], -1)
                pre = y[b, bad[b]]
            elif node is not None and node.op_type in ("Quant", "QuantizeLinear"):
                src = ctx[node.input[0]]
                s = float(np.ravel(ctx.get(node.input[1], _init(model, node.input[1])))[0])
                z = float(np.ravel(ctx.get(node.input[2], _init(model, node.input[2])) if len(node.input) > 2
                                   and node.input[2] else [0])[0])
                y = to_stream(src.astype(np.float64) / s + (z if node.op_type == "Quant" else 0),
                              pshape).reshape(v.shape[0], -1)
                pre = y[b, bad[b]]
            first_diff[int(b)] = (l["name"], np.nonzero(bad[b])[0], gold[b, bad[b]], codes[b, bad[b]], pre)
    lines, all_ties = [], True
    for b, (name, where, g, r, pre) in sorted(first_diff.items()):
        tie = pre is not None and bool(np.all(_near_boundary(pre, mode_of.get(name, "ROUND"), tie_tol)))
        all_ties &= tie
        lines.append(f"sample {b}: first difference in {name} at {where.tolist()}: golden {g.tolist()} "
                     f"reference {r.tolist()} reference pre-rounding {None if pre is None else pre.tolist()} "
                     f"-> {'float tie' if tie else 'NOT A TIE'}")
    return stats, lines, all_ties


def _near_boundary(pre, mode, tol):
    """A pre-rounding value within ``tol`` of where ``mode`` changes its result: half-integers
    for the rounding-to-nearest modes, integers for FLOOR / CEIL / toward or away from zero."""
    pre = np.asarray(pre, dtype=np.float64)
    if mode.upper() == "SIGN":           # BipolarQuant, 1-bit signed Quant: x >= 0 -> +1
        return np.abs(pre) < tol
    if mode.upper() in ("FLOOR", "CEIL", "ROUND_TO_ZERO", "DOWN", "UP"):
        return np.abs(pre - np.round(pre)) < tol
    return np.abs(np.abs(pre - np.floor(pre)) - 0.5) < tol


def assert_every_requantized_tensor_ties_only(model, plan, env, ctx, tie_tol=1e-4):
    """compare_codes over the whole plan: every requantized tensor of the plan is compared (none
    silently missing), the comparison lines are printed, and every sample that differs anywhere
    differs first by a proven float tie of the reference. Returns (stats, lines)."""
    stats, lines, all_ties = compare_codes(model, plan, env, ctx, tie_tol=tie_tol)
    requantized = {l["name"] for l in plan.layers if l.get("requant") is not None and l.get("onnx_tensor")}
    assert requantized and set(stats) == requantized, (sorted(stats), sorted(requantized))
    for line in lines:
        print(line)
    assert all_ties, "\n".join(lines)
    return stats, lines


def assert_codes_agree(model, plan, env, ctx, y, ref, min_tensors=1, min_match=0.999, tie_tol=1e-4):
    """Golden codes equal the reference's on >= ``min_match`` of every requantized tensor,
    each difference is a float tie in the reference, and top-1 agrees on >= ``min_match``."""
    stats, lines, all_ties = compare_codes(model, plan, env, ctx, tie_tol)
    for line in lines:
        print(line)
    assert len(stats) >= min_tensors, f"only {len(stats)} requantized tensor(s) compared"
    for name, (n, bad) in stats.items():
        assert (n - bad) / n >= min_match, f"{name}: {bad} of {n} codes differ"
    assert all_ties, "a difference that is not a float tie in the reference:\n" + "\n".join(lines)
    top = (y.argmax(axis=1) == ref.argmax(axis=1)).mean()
    assert top >= min_match, f"top-1 agreement {top}"
    return stats


def cnn(seed=0, residual=False, gap=False, act_bits=4, w_bits=4, pow2=False, bn=True, pool_pad=False):
    """digits-cnn shaped QONNX graph: conv3x3/16, conv3x3/16 (+ residual), maxpool2, conv3x3/32,
    maxpool2 (or global average pool), fc -> 10. Conv + BatchNorm + Relu + Quant blocks."""
    b = Builder(seed)
    x = b.quant("x", np.float32(1 / 16), 0, 5, False, False, name="input_quant")
    chans = 1

    def block(x, cin, cout, name, relu=True, quant=True, scale=None):
        w = b.weight((cout, cin, 3, 3), w_bits, axis_shape=(cout, 1, 1, 1), pow2=pow2)
        bias = b.const(b.rng.normal(0, 0.3, size=(cout,)).astype(np.float32), "cb")
        y = b.node("Conv", [x, w, bias], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        if bn:
            g = b.rng.uniform(0.5, 1.5, cout).astype(np.float32)
            g[::5] *= -1          # a few negative batch-norm scales: descending thresholds
            params = [g, b.rng.normal(0, 0.2, cout).astype(np.float32), b.rng.normal(0, 0.5, cout).astype(np.float32),
                      b.rng.uniform(0.5, 2.0, cout).astype(np.float32)]
            y = b.node("BatchNormalization", [y] + [b.const(p, "bn") for p in params], epsilon=1e-5)
        if relu:
            y = b.node("Relu", [y])
        if quant:
            s = np.float32(scale if scale is not None else b.rng.uniform(0.1, 0.4))
            y = b.quant(y, s, 0, act_bits, not relu, False)
        return y

    a1 = block(x, 1, 16, "conv0")
    a2 = block(a1, 16, 16, "conv1", relu=not residual)
    if residual:
        y = b.node("Add", [a1, a2], name="res_add")
        y = b.node("Relu", [y])
        a2 = b.quant(y, np.float32(0.3), 0, act_bits, False, False)
    kw = dict(kernel_shape=[2, 2], strides=[2, 2])
    if pool_pad:
        kw = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    p1 = b.node("MaxPool", [a2], name="pool0", **kw)
    a3 = block(p1, 16, 32, "conv2")
    if gap:
        p2 = b.node("GlobalAveragePool", [a3], name="gap")
        p2 = b.quant(p2, np.float32(0.05), 0, 8, False, False)
        feat = 32
    else:
        p2 = b.node("MaxPool", [a3], name="pool1", kernel_shape=[2, 2], strides=[2, 2])
        feat = 32 * 2 * 2
    f = b.node("Flatten", [p2], axis=1)
    w = b.weight((feat, 10), w_bits, axis_shape=(1, 10), pow2=pow2)
    y = b.node("MatMul", [f, w], name="fc")
    y = b.node("Add", [y, b.const(b.rng.normal(0, 0.3, 10).astype(np.float32), "fb")])
    return b.model("x", [1, 1, 8, 8], y, [1, 10])


def finn_mlp(seed=0, domain=QDOM, n_in=64, hidden=64, n_out=10, sample=None):
    """FINN streamlined style: UINT5-annotated integer input, integer-valued float weights
    (INT4-annotated), MultiThreshold on the accumulators (unsigned, then signed via out_bias),
    final per-channel Mul + Add."""
    rng = np.random.default_rng(seed)
    b = Builder(seed, domain)
    x_in = rng.integers(0, 17, size=(256, n_in)) if sample is None else sample
    annotations = {"x": "UINT5"}

    def thresholds(acc, levels, half):
        q = np.quantile(acc, np.linspace(0.05, 0.95, levels), axis=0).T        # (C, levels)
        q = np.round(q)
        if half:
            q = q + 0.5
        return np.sort(q, axis=1).astype(np.float32)

    w1 = rng.integers(-7, 8, size=(n_in, hidden)).astype(np.float32)
    w1n = b.const(w1, "w")
    annotations[w1n] = "INT4"
    y = b.node("MatMul", ["x", w1n], name="fc0")
    acc = x_in @ w1
    t1 = thresholds(acc, 15, half=False)
    y = b.node("MultiThreshold", [y, b.const(t1, "thr")], domain=domain, name="mt0", out_dtype="UINT4",
               data_layout="NC")
    h = (acc[:, :, None] >= t1[None]).sum(-1)
    w2 = rng.integers(-7, 8, size=(hidden, hidden)).astype(np.float32)
    y = b.node("MatMul", [y, b.const(w2, "w")], name="fc1")
    acc = h @ w2
    t2 = thresholds(acc, 15, half=True)
    y = b.node("MultiThreshold", [y, b.const(t2, "thr")], domain=domain, name="mt1", out_dtype="INT4",
               out_bias=-8.0, out_scale=1.0, data_layout="NC")
    w3 = rng.integers(-7, 8, size=(hidden, n_out)).astype(np.float32)
    y = b.node("MatMul", [y, b.const(w3, "w")], name="fc2")
    y = b.node("Mul", [y, b.const(rng.uniform(0.01, 0.1, (1, n_out)).astype(np.float32), "s")])
    y = b.node("Add", [y, b.const(rng.normal(0, 1, (1, n_out)).astype(np.float32), "b")])
    m = b.model("x", [1, n_in], y, [1, n_out])
    for name, dt in annotations.items():
        qa = onnx.TensorAnnotation()
        qa.tensor_name = name
        kv = qa.quant_parameter_tensor_names.add()
        kv.key, kv.value = "finn_datatype", dt
        m.graph.quantization_annotation.append(qa)
    return m


def float_mlp(seed=0, widths=(64, 32, 10)):
    """A float MLP (MatMul + Add + Relu) for onnxruntime's quantize_static."""
    rng = np.random.default_rng(seed)
    b = Builder(seed, QDOM)
    x = "x"
    for i in range(len(widths) - 1):
        w = rng.normal(0, 1 / np.sqrt(widths[i]), (widths[i], widths[i + 1])).astype(np.float32)
        x = b.node("MatMul", [x, b.const(w, "w")], name=f"fc{i}")
        x = b.node("Add", [x, b.const(rng.normal(0, 0.1, widths[i + 1]).astype(np.float32), "b")])
        if i < len(widths) - 2:
            x = b.node("Relu", [x])
    m = helper.make_model(helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                          [1, widths[0]])],
                                           [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, widths[-1]])],
                                           b.inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def float_cnn(seed=0):
    """A float CNN: Conv+Relu, Conv+Relu, MaxPool, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    b = Builder(seed, QDOM)
    x = "x"
    for i, (cin, cout) in enumerate([(1, 8), (8, 8)]):
        w = rng.normal(0, 1 / np.sqrt(cin * 9), (cout, cin, 3, 3)).astype(np.float32)
        x = b.node("Conv", [x, b.const(w, "w"), b.const(rng.normal(0, 0.1, cout).astype(np.float32), "b")],
                   name=f"conv{i}", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        x = b.node("Relu", [x])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2], name="pool")
    x = b.node("Flatten", [x], axis=1)
    w = rng.normal(0, 0.1, (10, 128)).astype(np.float32)
    x = b.node("Gemm", [x, b.const(w, "w"), b.const(np.zeros(10, np.float32), "b")], name="fc", transB=1)
    m = helper.make_model(helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                          [1, 1, 8, 8])],
                                           [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 10])], b.inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def quantize_qdq(float_model, path, calib, per_channel=False):
    """onnxruntime.quantization.quantize_static in QDQ format (uint8 activations, int8 weights)."""
    import ort_graphs

    return ort_graphs.quantize(float_model, path, calib, per_channel=per_channel)


def ort_run(model, x):
    """onnxruntime (optimisations off) with every node output exposed."""
    import ort_graphs

    return ort_graphs.ort_run_all(model, x)


def code_tie_samples(lines):
    """Samples named by the tie lines of compare_codes / ort_graphs.compare_all."""
    return {int(line.split()[1].rstrip(":")) for line in lines}


def top1_excusing_ties(ref, y, tie_samples, tol=1e-4):
    """Fraction of samples whose top-1 agrees; a sample whose golden logits tie exactly at the
    top with the reference's pick among them and the reference's margin within float noise,
    or whose codes differ by a proven tie, is not counted as a disagreement."""
    bad = np.nonzero(ref.argmax(1) != y.argmax(1))[0]
    span = float(np.ptp(ref)) or 1.0
    real = []
    for b in bad:
        top = np.sort(ref[b])[::-1][:2]
        pick = int(ref[b].argmax())
        exact_tie = y[b, pick] == y[b].max() and top[0] - top[1] <= tol * span
        if not (exact_tie or int(b) in tie_samples):
            real.append(int(b))
    return 1 - len(real) / len(ref), real


def build_and_cosim_verilator(proj, x, stim_path, frames=64):
    """``accumulus build`` then ``sim`` on Verilator over ``frames`` inputs of ``x``: every frame
    (and the cycle-measuring phase's) received, bit-exact, none missing."""
    import json

    from accumulus.cli import main

    assert main(["build", str(proj)]) == 0
    np.save(stim_path, x[:frames])
    assert main(["sim", str(proj), "--simulator", "verilator", "--stimulus", str(stim_path),
                 "--frames", str(frames)]) == 0
    res = json.loads((Path(proj) / "sim" / "results.json").read_text())
    run = res["runs"][0]
    n = frames + run["measure_frames"]              # + the no-back-pressure phase that measures cycles
    assert res["passed"] and res["mismatches"] == 0 and res["frames"] == n, res
    assert run["frames_sent"] == run["frames_received"] == n and res["frames_missing"] == 0
    return res
