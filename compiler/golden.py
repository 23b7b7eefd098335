"""The golden model: runs a plan on numpy int64 and defines every bit (DESIGN.md).

The only float step is the input quantizer (:func:`quantize_input`), done in float32
exactly as qonnx executes a Quant node. Everything after is integer arithmetic; every
intermediate tensor is returned, in stream order (docs/plan.md), with a leading batch
axis. Every accumulator is checked against the width the plan declares for its PE.
"""
from __future__ import annotations

import numpy as np

from accumulus.errors import UserError

from .plan import Plan
from .types import IntType, signed_bits


class AccumulatorOverflow(UserError):
    """An accumulator left the width the plan declared for it."""


# -- rounding -------------------------------------------------------------------------------
def round_float(x: np.ndarray, mode: str = "ROUND") -> np.ndarray:
    """qonnx's rounding modes on a float array (ROUND is half-to-even)."""
    mode = mode.upper()
    if mode in ("ROUND", "HALF_EVEN"):
        return np.round(x)
    if mode == "FLOOR":
        return np.floor(x)
    if mode == "CEIL":
        return np.ceil(x)
    if mode in ("ROUND_TO_ZERO", "DOWN"):
        return np.trunc(x)
    if mode == "UP":
        return np.sign(x) * np.ceil(np.abs(x))
    if mode == "HALF_UP":
        return np.sign(x) * np.floor(np.abs(x) + 0.5)
    if mode == "HALF_DOWN":
        return np.sign(x) * np.ceil(np.abs(x) - 0.5)
    raise UserError(f"unknown rounding_mode '{mode}' (expected ROUND, HALF_EVEN, FLOOR, CEIL, DOWN, ROUND_TO_ZERO, UP, HALF_UP, HALF_DOWN)")


def rshift_round_half_even(v: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``round_half_even(v / 2**shift)`` exactly, for integer arrays (object or int64)."""
    v = np.asarray(v)
    shift = np.broadcast_to(np.asarray(shift), v.shape)
    out = np.empty(v.shape, dtype=v.dtype)
    flat_v, flat_s, flat_o = v.reshape(-1), shift.reshape(-1), out.reshape(-1)
    for i in range(flat_v.size):  # object ints: exact at any width
        x, s = int(flat_v[i]), int(flat_s[i])
        if s <= 0:
            flat_o[i] = x << -s
            continue
        q = x >> s
        r = x - (q << s)
        half = 1 << (s - 1)
        if r > half or (r == half and q & 1):
            q += 1
        flat_o[i] = q
    return out


def _rshift_vec(v: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Vectorised int64 ``round_half_even(v / 2**shift)`` for shift >= 0."""
    shift = np.asarray(shift, dtype=np.int64)
    s = np.maximum(shift, 1)
    q = v >> shift
    r = v - (q << shift)
    half = np.where(shift > 0, np.int64(1) << (s - 1), np.int64(1) << 62)
    up = (r > half) | ((r == half) & ((q & 1) == 1))
    return q + up.astype(np.int64)


# -- input ----------------------------------------------------------------------------------
def quantize_input(plan: Plan, x: np.ndarray) -> np.ndarray:
    """Float input in the ONNX layout -> integer codes in stream order (the one float step)."""
    spec = plan.doc["input"]
    itype = IntType.from_json(spec["type"])
    want = tuple(spec.get("onnx_shape") or ())
    x = np.asarray(x, dtype=np.float32)
    if want and x.shape[1:] != tuple(want[1:]):
        raise UserError(f"input has shape {x.shape}, the model expects (B, {', '.join(map(str, want[1:]))})")
    # scalar, or (per-axis / blocked QuantizeLinear) an array in the ONNX layout without batch
    scale = np.asarray(spec["scale"], dtype=np.float32)
    zp = np.asarray(spec["zero_point"], dtype=np.float32)
    for op in spec.get("pre") or ():   # the graph's float ops before its quantizer, in float32 order
        v = np.float32(op["value"])
        x = (x * v if op["op"] == "Mul" else x / v if op["op"] == "Div" else x + v).astype(np.float32)
    if spec.get("bipolar"):
        # qonnx BipolarQuant: +1 where x >= 0, else -1 (NaN -> -1), the scale plays no part
        return codes_to_stream(plan, np.where(x >= 0, 1, -1).astype(np.int64))
    if spec.get("qlinear"):
        # ONNX QuantizeLinear rounds before adding the zero point (differs on ties when zp is odd)
        q = round_float(x / scale, "ROUND") + zp
    else:
        q = round_float(x / scale + zp, spec.get("rounding_mode", "ROUND"))
    q = np.clip(q, itype.min, itype.max).astype(np.int64)
    return codes_to_stream(plan, q)


def codes_to_stream(plan: Plan, codes: np.ndarray) -> np.ndarray:
    """Integer codes in the ONNX layout (B, C, H, W) or (B, K) -> stream order (B, *shape)."""
    shape = plan.tensor_shape(plan.input_name)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim == 4:  # NCHW -> NHWC
        codes = codes.transpose(0, 2, 3, 1)
    return codes.reshape((codes.shape[0],) + shape)


# -- layers ---------------------------------------------------------------------------------
def _im2col(x: np.ndarray, conv: dict) -> np.ndarray:
    """(B, H, W, C) -> (B, OH, OW, kh, kw, C) windows, padded with the pad value."""
    kh, kw = conv["kernel"]
    sh, sw = conv["stride"]
    dh, dw = conv.get("dilation", [1, 1])
    top, left, bottom, right = conv["pads"]
    oh, ow = conv["out_shape"][:2]
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=conv["pad_value"])
    b, c = x.shape[0], x.shape[3]
    cols = np.empty((b, oh, ow, kh, kw, c), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw, :]
    return cols


def mac(plan: Plan, layer: dict, x: np.ndarray) -> np.ndarray:
    """Accumulators of a matvec/conv layer, (B, N) or (B, OH, OW, N)."""
    w = plan.array(layer["weight"]).astype(np.int64)
    if layer["kind"] == "matvec":
        return x.reshape(x.shape[0], -1) @ w.T
    conv = layer["conv"]
    cols = _im2col(x, conv)
    groups = conv["groups"]
    n = w.shape[0]
    c_in = x.shape[3]
    cg, ng = c_in // groups, n // groups
    b, oh, ow = cols.shape[:3]
    out = np.empty((b, oh, ow, n), dtype=np.int64)
    for g in range(groups):
        patch = cols[..., g * cg:(g + 1) * cg].reshape(b, oh, ow, -1)
        out[..., g * ng:(g + 1) * ng] = patch @ w[g * ng:(g + 1) * ng].T
    return out


def check_accumulators(plan: Plan, layer: dict, acc: np.ndarray) -> None:
    """Every accumulator inside its channel's exact range and its PE's declared width."""
    fold = layer["folding"]
    pe = fold["pe"]
    order = np.asarray(fold["channel_order"])
    width = np.empty(order.size, dtype=np.int64)
    for p in range(pe):
        width[order[p::pe]] = fold["pe_acc_bits"][p]
    flat = acc.reshape(-1, acc.shape[-1])
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    bound_lo, bound_hi = -(np.int64(1) << (width - 1)), (np.int64(1) << (width - 1)) - 1
    bad = np.nonzero((lo < bound_lo) | (hi > bound_hi))[0]
    if bad.size:
        c = int(bad[0])
        raise AccumulatorOverflow(
            f"layer '{layer['name']}' channel {c}: accumulator reached [{lo[c]}, {hi[c]}] "
            f"({signed_bits(lo[c], hi[c])} bits) but the plan declares {width[c]} bits"
        )
    rng = np.asarray(layer["acc"]["range"], dtype=np.int64)
    bad = np.nonzero((lo < rng[:, 0]) | (hi > rng[:, 1]))[0]
    if bad.size:
        c = int(bad[0])
        raise AccumulatorOverflow(
            f"layer '{layer['name']}' channel {c}: accumulator [{lo[c]}, {hi[c]}] is outside the "
            f"exact range [{rng[c, 0]}, {rng[c, 1]}] (the input left its type's range)"
        )


def requantize(plan: Plan, requant: dict, acc: np.ndarray) -> np.ndarray:
    """Apply a Requant (docs/plan.md) along the channel (last) axis."""
    if requant["kind"] == "thresholds":
        t = plan.array(requant["thresholds"]).astype(np.int64)          # (N, T)
        desc = plan.array(requant["descending"]).astype(bool)           # (N,)
        a = acc[..., None]
        count = np.where(desc[:, None], t >= a, t <= a).sum(axis=-1)
        return requant["out_bias"] + requant["out_scale"] * count.astype(np.int64)
    bias = plan.array(requant["bias"]).astype(np.int64)
    mult = plan.array(requant["mult"]).astype(np.int64)
    shift = plan.array(requant["shift"]).astype(np.int64)
    # python ints: the bound itself must not wrap in int64
    prod_bound = (int(np.abs(acc).max(initial=0)) + int(np.abs(bias).max(initial=0))) * int(np.abs(mult).max(initial=0))
    if int(prod_bound) < (1 << 62) and shift.min(initial=0) >= 0:
        y = _rshift_vec((acc + bias) * mult, shift)
    else:  # exact wide arithmetic with Python ints
        v = (acc.astype(object) + bias.astype(object)) * mult.astype(object)
        y = rshift_round_half_even(v, np.broadcast_to(shift, acc.shape))
    y = y + requant["zero_point"]
    if requant["clip"]:
        out = IntType.from_json(requant["out_type"])
        y = np.clip(y, out.min, out.max)
    return np.asarray(y).astype(np.int64)


def _pool_windows(x: np.ndarray, layer: dict, pad_value: int) -> np.ndarray:
    conv = {"kernel": layer["kernel"], "stride": layer["stride"], "pads": layer["pads"],
            "out_shape": layer["out_shape"], "pad_value": pad_value}
    return _im2col(x, conv)


def reorder(layer: dict, x: np.ndarray) -> np.ndarray:
    """``y[oh, ow, c] = x[rows[oh], cols[ow], channels[(oh % ph)·pw + ow % pw][c]]`` (docs/plan.md)."""
    ph, pw = layer["phase"]
    rows, cols = np.asarray(layer["rows"]), np.asarray(layer["cols"])
    chans = np.asarray(layer["channels"])
    oh, ow = np.arange(rows.size)[:, None], np.arange(cols.size)[None, :]
    c = chans[(oh % ph) * pw + ow % pw]                                   # (OH, OW, OC)
    x = x.reshape((x.shape[0],) + tuple(layer["in_shape"]))
    return x[:, rows[:, None, None], cols[None, :, None], c]


def run_layer(plan: Plan, layer: dict, env: dict[str, np.ndarray], check: bool = True) -> np.ndarray:
    kind = layer["kind"]
    x = env[layer["inputs"][0]]
    if kind in ("matvec", "conv"):
        itype = IntType.from_json(layer["input_type"])
        if check and x.size and (x.min() < itype.min or x.max() > itype.max):
            raise AccumulatorOverflow(f"layer '{layer['name']}': input codes leave {itype}")
        acc = mac(plan, layer, x)
        if check:
            check_accumulators(plan, layer, acc)
        env[layer["name"] + ".acc"] = acc
        return acc if layer["requant"] is None else requantize(plan, layer["requant"], acc)
    if kind == "requant":
        return requantize(plan, layer["requant"], x)
    if kind == "maxpool":
        itype = plan.tensor_type(layer["inputs"][0])
        return _pool_windows(x, layer, itype.min).max(axis=(3, 4))
    if kind == "avgpool":
        s = _pool_windows(x, layer, layer.get("pad_value", 0)).sum(axis=(3, 4))
        env[layer["name"] + ".acc"] = s
        return requantize(plan, layer["requant"], s)
    if kind == "add":
        b = env[layer["inputs"][1]]
        (fa, fb) = layer["align"]
        return (((x - fa["zero_point"]) * fa["mult"]) << fa["shift"]) + (((b - fb["zero_point"]) * fb["mult"]) << fb["shift"])
    if kind == "reorder":
        return reorder(layer, x)
    if kind == "argmax":
        flat = x.reshape(x.shape[0], -1)
        return np.argmax(flat, axis=1).astype(np.int64)[:, None]  # np.argmax: first maximum
    raise UserError(f"golden model: unknown layer kind '{kind}' in layer '{layer['name']}'")


def run(plan: Plan, codes: np.ndarray, check: bool = True) -> dict[str, np.ndarray]:
    """Run the plan on input codes (stream order, (B, *shape)); every tensor by name.

    Also holds ``<layer>.acc`` for every MAC and avgpool layer.
    """
    env: dict[str, np.ndarray] = {plan.input_name: np.asarray(codes, dtype=np.int64)}
    for layer in plan.layers:
        y = run_layer(plan, layer, env, check)
        shape = plan.tensor_shape(layer["output"])
        env[layer["output"]] = y.reshape((y.shape[0],) + shape)
    return env


def run_float(plan: Plan, x: np.ndarray, check: bool = True) -> dict[str, np.ndarray]:
    """Quantize a float input (ONNX layout) and run the plan."""
    return run(plan, quantize_input(plan, x), check)


def output_codes(plan: Plan, env: dict[str, np.ndarray]) -> np.ndarray:
    return env[plan.output_name]


def qlinear_softmax_ort(codes: np.ndarray, t: dict) -> np.ndarray:
    """onnxruntime's CPU kernel of com.microsoft QLinearSoftmax (contrib_ops/cpu/quantization/
    qlinear_softmax.cc), in its float32 steps: an exp table over code differences from the
    row maximum, scaled so the row sum cannot overflow; the output scale is taken as
    ``floor(1 / y_scale)``; ``y = nearbyint(e·Y / sum) + y_zp`` (uint8: capped at 255; int8:
    the kernel's narrowing cast, i.e. wrap-around)."""
    x = np.asarray(codes, dtype=np.int64)
    D = x.shape[-1]
    xs = np.float32(t["x_scale"])
    bit_shift = np.log(np.float64(np.float32(np.finfo(np.float32).max) / np.float32(D)))
    bit_shift = max(0.0, bit_shift - 5.0) / np.float64(xs)
    table = np.exp((np.arange(256, dtype=np.float64) - 255 + bit_shift) * np.float64(xs)).astype(np.float32)
    e = table[x - x.max(axis=-1, keepdims=True) + 255]
    vsum = np.zeros(x.shape[:-1] + (1,), dtype=np.float32)
    for k in range(D):                        # the kernel's sequential float32 sum
        vsum = (vsum + e[..., k:k + 1]).astype(np.float32)
    y_scale = np.floor(np.float32(1.0) / np.float32(t["y_scale"])).astype(np.float32)
    q = np.rint(((e * y_scale).astype(np.float32) / vsum).astype(np.float32)).astype(np.int64) + int(t["y_zero_point"])
    if t.get("signed"):
        return np.where(q > 255, -1, ((q + 128) & 255) - 128)
    return np.minimum(q, 255)


def onnx_output(plan, env):
    """The ONNX graph's first output from the golden model's tensors (dequant + trailing ops)."""
    out = plan.doc["output"]
    codes = env[out["tensor"]]
    B = codes.shape[0]
    flat = codes.reshape(B, -1)
    C = plan.tensor_shape(out["tensor"])[-1]
    dq = out.get("dequant")
    if dq is not None and dq.get("layout") == "onnx":
        # per-element (blocked) dequantization, given in the ONNX layout
        index = plan.array(out["index"]) if isinstance(out.get("index"), str) else np.arange(flat.shape[1])
        shape = tuple(out.get("onnx_shape") or (1, flat.shape[1]))[1:]
        codes_onnx = flat[:, index].reshape((B,) + shape)
        s = np.asarray(dq["scale"], dtype=np.float32)
        z = np.asarray(dq["zero_point"], dtype=np.float32)
        return ((codes_onnx.astype(np.float32) - z) * s).astype(np.dtype(out.get("onnx_dtype") or "float32"))
    if dq is not None:
        a = np.asarray(dq["scale"], dtype=np.float64)
        b = np.asarray(dq.get("offset", -a * np.asarray(dq["zero_point"], dtype=np.float64)), dtype=np.float64)
        ch = np.arange(flat.shape[1]) % C
        val = flat.astype(np.float64) * a[ch] + b[ch]
    else:
        val = flat
    for t in out.get("trailing") or []:
        if t["op"] == "Relu":
            val = np.maximum(val, 0)
        elif t["op"] == "Clip":
            val = np.clip(val, -np.inf if t["min"] is None else t["min"], np.inf if t["max"] is None else t["max"])
        elif t["op"] == "Affine":
            ch = np.arange(flat.shape[1]) % C
            val = val * np.asarray(t["a"])[ch] + np.asarray(t["b"])[ch]
    index = plan.array(out["index"]) if isinstance(out.get("index"), str) else np.arange(flat.shape[1])
    shape = tuple(out.get("onnx_shape") or (1, flat.shape[1]))[1:]
    val = val[:, index].reshape((B,) + shape)
    for t in out.get("trailing") or []:
        if t["op"] == "Softmax":
            v = val.astype(np.float32)
            e = np.exp(v - v.max(axis=t["axis"], keepdims=True))
            val = e / e.sum(axis=t["axis"], keepdims=True)
        elif t["op"] == "QuantizeLinear":
            # ONNX QuantizeLinear in float32: saturate(round_half_even(v / s) + zp)
            q = np.rint(val.astype(np.float32) / np.float32(t["scale"])) + np.float32(t["zero_point"])
            val = np.clip(q, t["min"], t["max"])
        elif t["op"] == "QLinearSoftmax":
            val = qlinear_softmax_ort(np.asarray(val), t)
        elif t["op"] == "DequantizeLinear":
            val = ((val.astype(np.float32) - np.float32(t["zero_point"])) * np.float32(t["scale"])).astype(np.float32)
    dtype = np.dtype(out.get("onnx_dtype") or ("float32" if dq is not None else "int64"))
    if np.issubdtype(dtype, np.integer):
        return np.asarray(np.rint(val)).astype(dtype)
    return np.asarray(val).astype(dtype)


# -- MLS plans (compiler/frontend/mls_load.py, docs/mls.md) --------------------------------
def mls_input_codes(plan, x: np.ndarray) -> np.ndarray:
    """The graph input's integer codes: ``clip(rint(x / scale))`` in float32 (the one float step)."""
    spec = plan.doc["input"]
    x = np.asarray(x, dtype=np.float32)
    want = tuple(spec["shape"])
    if x.shape[1:] != want:
        raise UserError(f"input has shape {x.shape}, the MLS model expects (B, {', '.join(map(str, want))})")
    lo = -(1 << (spec["bits"] - 1)) if spec["signed"] else 0
    hi = (1 << (spec["bits"] - 1)) - 1 if spec["signed"] else (1 << spec["bits"]) - 1
    return np.clip(np.rint(x / np.float32(spec["scale"])), lo, hi).astype(np.int64)


def _rne_shift(v, r: int):
    """``v / 2^r`` rounded half to even, for an object array of Python ints."""
    if r == 0:
        return v
    half, mask = 1 << (r - 1), (1 << r) - 1

    def one(t):
        q, rem = t >> r, t & mask
        return q + (1 if rem > half or (rem == half and q & 1) else 0)

    return np.frompyfunc(one, 1, 1)(v)


def mls_requant(layer: dict, acc: np.ndarray, frame_max: np.ndarray) -> np.ndarray:
    """``Y = relu(rne(T * S * A_c, r) + B_c)`` (int64): ``acc`` the dot accumulators
    (B, N[, OH, OW]), ``frame_max`` the per-sample input tensor scale ``S`` (B,)."""
    rq = layer["requant"]
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    a = np.asarray([int(v) for v in rq["A"]], dtype=object).reshape(shape)
    b = np.asarray([int(v) for v in rq["B"]], dtype=object).reshape(shape)
    s = np.asarray([int(v) for v in frame_max], dtype=object).reshape((-1,) + (1,) * (acc.ndim - 1))
    y = _rne_shift(acc.astype(object) * s * a, int(rq["shift"])) + b
    if rq["relu"]:
        y = np.maximum(y, 0)
    lim = 1 << (int(rq["out_bits"]) - 1)
    y = y.astype(np.int64)
    if y.size and (y.min() < -lim or y.max() >= lim):
        raise AssertionError(f"MLS layer '{layer['name']}': an output left its {rq['out_bits']}-bit range")
    return y


def run_mls(plan, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run an :class:`~accumulus.compiler.frontend.mls_load.MLSPlan` on float inputs (ONNX
    layout), integers only after the input quantizer (docs/mls.md, "Integer semantics").

    The graph input becomes its integer codes (:func:`mls_input_codes`); each MLS layer
    quantizes its integer input per sample with integer comparisons
    (:func:`~accumulus.compiler.mls.quantize_int`, tensor scale ``S = max|X|``), computes the
    integer MLS dot products (:func:`~accumulus.compiler.mls.mls_conv2d`, accumulators
    checked against their widths) and requantizes to the next fixed-point tensor
    (:func:`mls_requant`); max-pooling and flatten act on the integers. Returns, per tensor
    name, its value ``X * sigma`` as float32 and ``<name>.int`` (the integers), and per MLS
    layer ``<layer>.acc`` (dot accumulators) and ``<layer>.frame_max`` (``S`` per sample).
    """
    from . import mls as _mls

    xi = mls_input_codes(plan, x)
    tensors = plan.doc["tensors"]
    ints = {plan.doc["input"]["name"]: xi}
    env = {}
    for layer in plan.layers:
        a = ints[layer["input"]]
        if layer["kind"] == "flatten":
            ints[layer["output"]] = a.reshape(a.shape[0], -1)
            continue
        if layer["kind"] == "maxpool":
            (kh, kw), (sh, sw) = layer["kernel"], layer["stride"]
            b, c, h, w = a.shape
            oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
            win = np.stack([a[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] for i in range(kh) for j in range(kw)])
            ints[layer["output"]] = win.max(axis=0)
            continue
        wc = plan.weight_codes(layer)
        fmt = plan.format(layer)
        if layer["kind"] == "mls_matvec" and a.ndim == 2 and len(wc.shape) != 2:
            raise UserError(f"MLS layer '{layer['name']}': weight {wc.shape} needs an unflattened input")
        accs, smax = [], []
        for i in range(a.shape[0]):            # one tensor scale per sample
            xc = _mls.quantize_int(a[i:i + 1], fmt)
            if layer["kind"] == "mls_conv":
                r = _mls.mls_conv2d(wc, xc, stride=layer["stride"], padding=layer["padding"])
            elif len(wc.shape) == 2:
                r = _mls.mls_linear(wc, xc)
            else:                               # (N, C, H, W) weight over an unflattened (C, H, W) input
                r = _mls.mls_conv2d(wc, xc)
                r.acc = r.acc.reshape(1, -1)
            accs.append(r.acc[0])
            smax.append(xc.tensor_scale)
        acc = np.stack(accs)
        env[layer["name"] + ".acc"] = acc
        env[layer["name"] + ".frame_max"] = np.asarray(smax, np.int64)
        ints[layer["output"]] = mls_requant(layer, acc, smax)
    for name, v in ints.items():
        env[name + ".int"] = v
        env[name] = (v.astype(np.float64) * tensors[name]["scale"]).astype(np.float32)
    return env
