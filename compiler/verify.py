"""The golden model checked against a reference executor, tensor by tensor (DESIGN.md).

``compile`` and ``accumulus check`` run the plan's golden model beside the reference that
defines the graph's meaning -- qonnx 1.0.0 for graphs with QONNX/FINN custom ops,
onnxruntime with every optimisation off for standard (QDQ / QOperator) graphs -- and
compare the integer codes of every requantized tensor. A difference is excused only when
it is a float tie in the reference: its pre-rounding value lies within ``tie_tol`` of a
rounding boundary, where float32 evaluation order decides the code. The window is
``tie_tol`` plus 8 float32 eps of the output code range (the reference's conv, batch-norm
and scale run in float32 on values that large: a WRPN 8-bit conv output measured
199.49990 in qonnx where the exact value from its own integer inputs is 199.500033). For a
layer whose multiplier/shift requantization the compiler could not make exact (wide outputs
after a batch-norm, e.g. a 16-bit Precision Highway stream) the window also holds the
layer's recorded ``max_error_codes``: the golden model is within that of the exact value by
construction, so a difference inside it is still a tie. A sample whose first
difference is a tie is excused as a whole (the tie propagates downstream); any other
difference makes the plan wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from accumulus.errors import UserError

from . import golden
from .plan import Plan
from .types import IntType

__all__ = ["calibration_batch", "reference_name", "reference_run", "compare", "Verification", "TensorAgreement",
           "verify_plan", "DEFAULT_CALIB"]

DEFAULT_CALIB = 32
TIE_TOL = 1e-4
_QONNX_DOMAINS = ("onnx.brevitas", "qonnx.custom_op.general", "finn.custom_op.general", "qonnx.custom_op")


@dataclass
class TensorAgreement:
    layer: str
    tensor: str            # ONNX tensor name
    node: str              # ONNX node producing it
    elements: int
    mismatches: int
    ties: int              # mismatches proven to be float ties in the reference
    first: dict | None     # first non-tie (else first) difference: sample, index, golden, reference, pre-rounding


@dataclass
class Verification:
    reference: str
    samples: int
    tensors: list[TensorAgreement] = field(default_factory=list)
    bad_samples: list[int] = field(default_factory=list)        # first difference not a tie
    tie_samples: list[int] = field(default_factory=list)        # first difference a tie
    output_top1: float | None = None
    output_max_abs_err: float | None = None
    output_bad: list[int] = field(default_factory=list)         # no code differs but the output does

    @property
    def ok(self) -> bool:
        return not self.bad_samples and not self.output_bad

    def first_failure(self) -> str | None:
        """One sentence naming the first tensor and node where codes diverge, with both values."""
        for t in self.tensors:
            f = t.first
            if f is not None and not f["tie"]:
                pre = "" if f["pre"] is None else f", reference pre-rounding value {f['pre']:.6g}"
                return (f"tensor '{t.tensor}' (node '{t.node}', plan layer '{t.layer}'): sample {f['sample']} "
                        f"element {f['index']}: golden code {f['golden']}, {self.reference} code {f['reference']}"
                        f"{pre}; {t.mismatches - t.ties} of {t.elements} codes differ beyond float ties")
        if self.output_bad:
            return (f"graph output: every code agrees but the output differs from {self.reference} on sample "
                    f"{self.output_bad[0]} (max abs error {self.output_max_abs_err:.3g})")
        return None

    def to_json(self) -> dict:
        return {"reference": self.reference, "samples": self.samples, "ok": self.ok,
                "samples_differing_beyond_ties": len(self.bad_samples), "samples_with_ties": len(self.tie_samples),
                "output_top1": self.output_top1,
                "tensors": [{"layer": t.layer, "tensor": t.tensor, "node": t.node, "elements": t.elements,
                             "mismatches": t.mismatches, "ties": t.ties} for t in self.tensors],
                "first_failure": self.first_failure()}


# -- inputs ------------------------------------------------------------------------------------
def _invert_pre(spec: dict, y: np.ndarray) -> np.ndarray:
    for op in reversed(spec.get("pre") or []):
        v = np.float32(op["value"])
        y = y / v if op["op"] == "Mul" else y * v if op["op"] == "Div" else y - v
    return y.astype(np.float32)


def calibration_batch(plan: Plan, n: int = DEFAULT_CALIB, seed: int = 0) -> np.ndarray:
    """``n`` float inputs (ONNX layout) spread over the input quantizer's whole code range.

    Each element is a random code plus a random offset inside its rounding interval (away
    from the boundaries, so the batch itself makes no ties), mapped back through the
    quantizer and any float ops before it.
    """
    spec = plan.doc["input"]
    t = IntType.from_json(spec["type"])
    shape = tuple(spec.get("onnx_shape") or (1,) + plan.tensor_shape(plan.input_name))
    rng = np.random.default_rng(seed)
    full = (n,) + tuple(shape[1:])
    if spec.get("dtype") and np.issubdtype(np.dtype(spec["dtype"]), np.integer):
        return rng.integers(t.min, t.max + 1, full).astype(spec["dtype"])
    if spec.get("bipolar"):
        y = rng.choice([-1.0, 1.0], full) * rng.uniform(0.05, 1.0, full)
        return _invert_pre(spec, y.astype(np.float32))
    codes = rng.integers(t.min, t.max + 1, full).astype(np.float64)
    # a declared input type (--input-type) holds values on its grid: no offset
    jitter = rng.uniform(-0.4, 0.4, full) * (0.0 if spec.get("declared") else 1.0)
    # codes at the ends of the range saturate anyway: push them outwards too
    jitter = np.where(codes == t.min, -np.abs(jitter), np.where(codes == t.max, np.abs(jitter), jitter))
    s = np.asarray(spec["scale"], dtype=np.float64)
    z = np.asarray(spec["zero_point"], dtype=np.float64)
    y = (codes + jitter - z) * s
    return _invert_pre(spec, y.astype(np.float32))


# -- reference execution -------------------------------------------------------------------------
def reference_name(model) -> str:
    if any(n.domain in _QONNX_DOMAINS or n.domain.startswith(("finn.", "qonnx.")) for n in model.graph.node):
        return "qonnx"
    return "onnxruntime"


def _with_outputs(model, names, batch):
    """A copy exposing ``names`` as outputs, its batch dimension set to ``batch`` when given
    (qonnx checks the fed shape against the declared one)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    if batch:
        for vi in list(m.graph.input) + list(m.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.name not in inits and len(dims):
                dims[0].ClearField("dim_param")
                dims[0].dim_value = batch
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    del m.graph.value_info[:]
    have = {o.name for o in m.graph.output}
    for t in names:
        if t and t not in have and t not in inits:
            m.graph.output.append(helper.make_empty_tensor_value_info(t))
            have.add(t)
    for n in m.graph.node:
        for a in n.attribute:
            # Brevitas exports ROUND_TO_ZERO (torch.trunc), a name qonnx 1.0.0's
            # resolve_rounding_mode does not know; its DOWN is np.fix, the same function
            if a.name == "rounding_mode" and a.s.upper() == b"ROUND_TO_ZERO":
                a.s = b"DOWN"
    declared = {o.domain for o in m.opset_import}
    for d in sorted({n.domain for n in m.graph.node if n.domain} - declared):
        m.opset_import.append(helper.make_opsetid(d, 1))
    return m


def _run_once(model, feeds: dict, kind: str) -> dict:
    if kind == "qonnx":
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.transformation.infer_shapes import InferShapes

        mw = ModelWrapper(model)
        try:
            mw = mw.transform(InferShapes())
        except Exception:       # shape inference is a convenience for qonnx, not a requirement
            mw = ModelWrapper(model)
        return dict(execute_onnx(mw, feeds, return_full_exec_context=True))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def reference_run(model, x: np.ndarray, extra_feeds: dict | None = None, tensors=()) -> tuple[str, dict]:
    """Run the reference executor on a batch; (name, {tensor: value with a batch axis})."""
    from onnx import numpy_helper

    kind = reference_name(model)
    if kind == "qonnx":
        tensors = ()            # qonnx returns its whole execution context already
    inits = {i.name for i in model.graph.initializer}
    data = [i for i in model.graph.input if i.name not in inits and i.name not in (extra_feeds or {})][0]
    dims = data.type.tensor_type.shape.dim
    batch_axis = not (len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 1)
    extra = {k: np.asarray(v) for k, v in (extra_feeds or {}).items()}
    ctx: dict = {}
    try:
        if not batch_axis:
            raise ValueError("no batch axis")
        m = _with_outputs(model, tensors, batch=int(x.shape[0]))
        ctx = _run_once(m, {data.name: x, **extra}, kind)
    except Exception:
        # graphs with a fixed batch (Reshape to (1, -1), declared shapes): one sample at a time
        m = _with_outputs(model, tensors, batch=1 if batch_axis else None)
        parts = []
        for b in range(x.shape[0]):
            xb = x[b:b + 1] if batch_axis else x[b]
            try:
                parts.append(_run_once(m, {data.name: xb, **extra}, kind))
            except Exception as exc:
                raise UserError(f"the reference executor ({kind}) cannot run the model: "
                                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
                                ) from None
        for k in parts[0]:
            vals = [np.asarray(p[k]) for p in parts]
            if batch_axis and vals[0].ndim and vals[0].shape[0] == 1:
                ctx[k] = np.concatenate(vals, axis=0)
            elif all(v.shape == vals[0].shape for v in vals):
                ctx[k] = np.stack(vals)
    for i in model.graph.initializer:
        ctx.setdefault(i.name, numpy_helper.to_array(i))
    return kind, ctx


# -- comparison ---------------------------------------------------------------------------------
def _nodes_by_output(model):
    prod, cons = {}, {}
    for n in model.graph.node:
        for o in n.output:
            prod[o] = n
        for i in n.input:
            cons.setdefault(i, []).append(n)
    return prod, cons


def _const(model, ctx, name, default=0.0):
    if not name:
        return np.asarray(default)
    v = ctx.get(name)
    return np.asarray(default if v is None else v)


def _to_stream(a: np.ndarray, plan_shape) -> np.ndarray:
    """ONNX layout (B, C, H, W) -> stream order; a flattened CHW vector of an [H, W, C] image likewise."""
    if a.ndim == 2 and len(plan_shape) == 3 and a.shape[1] == int(np.prod(plan_shape)):
        h, w, c = plan_shape
        a = a.reshape(a.shape[0], c, h, w)
    if a.ndim == 4:
        a = a.transpose(0, 2, 3, 1)
    return a.reshape(a.shape[0], -1)


def _ref_codes(model, ctx, node, tensor):
    """(codes, pre-rounding values or None, kind of tie) of a quantizer output in the reference."""
    v = np.asarray(ctx[tensor])
    op = node.op_type if node is not None else ""
    if op in ("QuantizeLinear", "Clip") + _QLINEAR and np.issubdtype(v.dtype, np.integer):
        codes = v.astype(np.int64)
        pre = None
        if op == "QuantizeLinear":
            x = np.asarray(ctx[node.input[0]], dtype=np.float64)
            s = _const(model, ctx, node.input[1], 1.0).astype(np.float64)
            s = _axis(s, node, x.ndim)
            pre = x / s
        elif op in _QLINEAR:
            pre = _qlinear_pre(model, ctx, node)
        return codes, pre
    if op == "MultiThreshold":
        a = {x.name: x for x in node.attribute}
        osc = a["out_scale"].f if "out_scale" in a else 1.0
        ob = a["out_bias"].f if "out_bias" in a else 0.0
        return np.round((v - ob) / osc).astype(np.int64), None
    if op in ("Quant", "IntQuant", "BipolarQuant", "Trunc"):
        x = np.asarray(ctx[node.input[0]], dtype=np.float64)
        s = _const(model, ctx, node.input[1], 1.0).astype(np.float64)
        if op == "BipolarQuant":
            return np.where(v >= 0, 1, -1).astype(np.int64), x / s
        z = _const(model, ctx, node.input[2] if len(node.input) > 2 else "", 0.0).astype(np.float64)
        if op == "Trunc":
            return np.round(v / s + z).astype(np.int64), None
        codes = np.round(v.astype(np.float64) / s + z).astype(np.int64)
        return codes, x / s + z
    return None, None


_QLINEAR = ("QLinearMatMul", "QLinearConv", "QGemm", "QLinearAdd")


def _qlinear_pre(model, ctx, node) -> np.ndarray:
    """The exact value a QOperator node of onnxruntime rounds, over its output scale, from the
    reference's own integer inputs: ``acc · s_a·s_b / s_y`` with the integer accumulator in
    int64 (QLinearMatMul, QLinearConv, QGemm with its int32 bias and alpha) or
    ``(s_a(a - z_a) + s_b(b - z_b)) / s_c`` (QLinearAdd). onnxruntime computes the
    requantization multiplier in float32, so where this value sits within float32 rounding of
    a half-integer its code is a float tie."""
    i = list(node.input) + [""] * 9
    at = {a.name: a for a in node.attribute}

    def q(k):                                   # codes minus zero point (int64), scale (float64)
        return (_const(model, ctx, i[k]).astype(np.int64) - _const(model, ctx, i[k + 2], 0).astype(np.int64),
                _const(model, ctx, i[k + 1], 1.0).astype(np.float64))

    op = node.op_type
    if op == "QLinearAdd":
        (a, sa), (b, sb) = q(0), q(3)
        return (a * sa + b * sb) / _const(model, ctx, i[6], 1.0).astype(np.float64)
    x, sx = q(0)
    if op in ("QLinearMatMul", "QGemm"):
        wc = _const(model, ctx, i[3]).astype(np.int64)
        wz = _const(model, ctx, i[5], 0).astype(np.int64).reshape(-1)
        ws = _const(model, ctx, i[4], 1.0).astype(np.float64).reshape(-1)
        trans = op == "QGemm" and "transB" in at and at["transB"].i
        w = (wc.T if trans else wc) - wz            # per output column
        acc = x @ w
        if op == "QLinearMatMul":
            return acc * sx * ws / _const(model, ctx, i[6], 1.0).astype(np.float64)
        if i[6]:
            acc = acc + _const(model, ctx, i[6]).astype(np.int64)
        alpha = float(np.float32(at["alpha"].f)) if "alpha" in at else 1.0
        return acc * alpha * sx * ws / _const(model, ctx, i[7], 1.0).astype(np.float64)
    # QLinearConv, NCHW: the integer convolution through the golden model's window gather
    w = _const(model, ctx, i[3]).astype(np.int64)
    wz = _const(model, ctx, i[5], 0).astype(np.int64).reshape(-1)
    ws = _const(model, ctx, i[4], 1.0).astype(np.float64).reshape(-1)
    N, cg, kh, kw = w.shape
    w = w - (wz.reshape(-1, 1, 1, 1) if wz.size > 1 else wz.reshape(()))
    ints = lambda k, d: [int(v) for v in at[k].ints] if k in at else d
    pads, strides, dil = ints("pads", [0, 0, 0, 0]), ints("strides", [1, 1]), ints("dilations", [1, 1])
    group = at["group"].i if "group" in at else 1
    B, C, H, W_ = x.shape
    oh = (H + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    ow = (W_ + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    cols = golden._im2col(x.transpose(0, 2, 3, 1), {"kernel": [kh, kw], "stride": strides, "dilation": dil,
                                                    "pads": pads, "out_shape": [oh, ow], "pad_value": 0})
    per = N // group
    acc = np.concatenate([np.einsum("bhwijc,ncij->bnhw", cols[..., g * cg:(g + 1) * cg],
                                    w[g * per:(g + 1) * per]) for g in range(group)], axis=1)
    if i[8]:
        acc = acc + _const(model, ctx, i[8]).astype(np.int64).reshape(1, -1, 1, 1)
    return acc * sx * ws.reshape(1, -1, 1, 1) / _const(model, ctx, i[6], 1.0).astype(np.float64)


def _axis(s, node, ndim):
    if s.ndim == 1 and s.size > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * ndim
        shape[axis] = -1
        return s.reshape(shape)
    return s


def compare(plan: Plan, model, x: np.ndarray, extra_feeds: dict | None = None, tie_tol: float = TIE_TOL,
            env: dict | None = None) -> Verification:
    """Golden model vs reference executor on the float batch ``x`` (ONNX layout)."""
    prod, cons = _nodes_by_output(model)
    layers = [l for l in plan.layers if l.get("onnx_tensor")]
    want = []
    for l in layers:
        t = l["onnx_tensor"]
        users = cons.get(t, [])
        if len(users) == 1 and users[0].op_type == "Clip":
            t = users[0].output[0]          # QCDQ: the Clip after QuantizeLinear holds the plan's codes
        node = prod.get(t)
        want.append((l, t, node))
    names = [t for _, t, _ in want] + [i for _, _, n in want if n is not None
                                         for i in (n.input if n.op_type in _QLINEAR else n.input[:1])]
    out_name = plan.doc["output"].get("onnx_name") or model.graph.output[0].name
    kind, ctx = reference_run(model, x, extra_feeds, names + [out_name])
    if env is None:
        env = golden.run_float(plan, x)
    ver = Verification(reference="qonnx 1.0.0" if kind == "qonnx" else "onnxruntime (optimisations off)",
                       samples=int(x.shape[0]))
    B = x.shape[0]
    first_diff: dict[int, bool] = {}       # sample -> is the first difference a tie
    for l, t, node in want:
        if t not in ctx:
            continue
        codes, pre = _ref_codes(model, ctx, node, t)
        if codes is None:
            continue
        pshape = plan.tensor_shape(l["output"])
        try:
            codes = _to_stream(np.broadcast_to(codes, np.shape(ctx[t])), pshape)
        except ValueError:
            continue
        gold = env[l["output"]].reshape(B, -1)
        if codes.shape != gold.shape:
            continue
        bad = codes != gold
        tie = np.zeros_like(bad)
        if pre is not None:
            p = _to_stream(np.broadcast_to(pre, np.shape(ctx[t])).astype(np.float64), pshape)
            # the reference evaluates conv, batch-norm and scale in float32: a few eps of the
            # output code range (intermediates are of that size), 1.2e-4 codes at 8 bits,
            # ~0.03 at 16; plus the recorded deviation of an inexact multiplier/shift layer
            ot = plan.tensor(l["output"])["type"] if l.get("output") in plan.doc["tensors"] else None
            tol = tie_tol + (8 * 2.0 ** -24 * 2.0 ** int(ot["bits"]) if ot else 0.0)
            if l.get("max_error_codes"):
                tol += float(l["max_error_codes"])
            if node.op_type == "BipolarQuant" or (node.op_type == "Quant" and _one_bit_signed(model, ctx, node)):
                tie = np.abs(p) < tol
            elif _attr_s(node, "rounding_mode", "ROUND").upper() in ("FLOOR", "CEIL", "ROUND_TO_ZERO", "DOWN", "UP"):
                tie = np.abs(p - np.round(p)) < tol        # these modes step at the integers
            else:
                tie = np.abs(np.abs(p - np.floor(p)) - 0.5) < tol
        nbad, nties = int(bad.sum()), int((bad & tie).sum())
        first = None
        if nbad:
            hard = np.argwhere(bad & ~tie)
            b, i = (hard[0] if hard.size else np.argwhere(bad)[0])
            first = {"sample": int(b), "index": int(i), "golden": int(gold[b, i]), "reference": int(codes[b, i]),
                     "pre": None if pre is None else float(p[b, i]), "tie": not hard.size}
        ver.tensors.append(TensorAgreement(l["name"], t, node.name if node is not None else "?", int(bad.size),
                                           nbad, nties, first))
        for b in np.nonzero(bad.any(axis=1))[0]:
            if int(b) not in first_diff:
                first_diff[int(b)] = bool(np.all(tie[b][bad[b]]))
    ver.bad_samples = sorted(b for b, is_tie in first_diff.items() if not is_tie)
    ver.tie_samples = sorted(b for b, is_tie in first_diff.items() if is_tie)
    if out_name in ctx:
        y = golden.onnx_output(plan, env)
        ref = np.asarray(ctx[out_name])
        if y.shape == ref.shape:
            yf, rf = y.reshape(B, -1).astype(np.float64), ref.reshape(B, -1).astype(np.float64)
            err = np.abs(yf - rf)
            ver.output_max_abs_err = float(err.max(initial=0))
            if yf.shape[1] > 1:
                ver.output_top1 = float((yf.argmax(1) == rf.argmax(1)).mean())
            tol = 1e-3 * np.maximum(np.abs(rf).max(axis=1, keepdims=True), 1e-6) + 1e-6
            clean = np.setdiff1d(np.arange(B), list(first_diff))
            ver.output_bad = [int(b) for b in clean if np.any(err[b] > tol[b])]
    return ver


def _attr_s(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.s.decode() if isinstance(a.s, bytes) else str(a.s)
    return default


def _one_bit_signed(model, ctx, node) -> bool:
    bits = _const(model, ctx, node.input[3] if len(node.input) > 3 else "", 8).reshape(-1)
    signed = next((a.i for a in node.attribute if a.name == "signed"), 1)
    return bits.size == 1 and int(bits[0]) == 1 and bool(signed)


def verify_plan(plan: Plan, model_path, x: np.ndarray | None = None, n: int = DEFAULT_CALIB,
                binds: dict | None = None) -> Verification:
    """Compare on ``n`` calibration inputs (plus ``x`` when given); the model read from ``model_path``."""
    import onnx
    from pathlib import Path

    p = Path(model_path)
    model = onnx.load(str(p / "model.onnx" if p.is_dir() else p))
    batch = calibration_batch(plan, n)
    if x is not None:
        x = np.asarray(x)
        want = tuple(plan.doc["input"].get("onnx_shape") or ())[1:]
        if want and tuple(x.shape[1:]) != want:
            raise UserError(f"--calib: array of shape {x.shape}, the model expects (B, {', '.join(map(str, want))})")
        batch = np.concatenate([batch, x.astype(batch.dtype)], axis=0)
    return compare(plan, model, batch, binds)
