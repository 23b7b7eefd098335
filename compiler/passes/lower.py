"""Pass ``lower``: ONNX-level :class:`Graph` -> integer :class:`IntGraph`.

requires: a verified front-end Graph (supported ops only, shapes known, constants folded).
ensures:  an IntGraph whose MAC layers hold integer weights ``w_q - z_w`` in stream order,
          whose requantizations are exact thresholds derived in rational arithmetic, and
          whose output block says how to get the ONNX output back (dequant + trailing ops).

Every ONNX tensor is tracked symbolically as one of
  * ``Const``   -- a constant array;
  * ``QConst``  -- a quantized constant (weights): integer codes + scale/zero point;
  * ``Raw``     -- the float graph input (before its quantizer), with its layout;
  * ``Val``     -- ``chain(code)`` where ``code`` is an integer plan tensor, read through a
                   layout index (``onnx.flat = plan.flat[idx]``) so that Flatten/Reshape/
                   Transpose/Squeeze/Unsqueeze are pure index bookkeeping, and ``chain``
                   is the per-channel sequence of float ops (affine, ReLU, Clip) applied
                   since the last quantizer;
  * ``Tail``    -- the output of a Softmax (not built in hardware) and the float ops after
                   it (QuantizeLinear/DequantizeLinear, as onnxruntime's quantize_static puts
                   around it): ``predict`` applies them in float to the plan's output.
A quantizer on a ``Val`` becomes a requant layer; MatMul/Gemm/Conv become MAC layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from accumulus.errors import UserError

from ..accumulators import exact_range
from ..frontend.shapes import conv_geometry, pool_geometry
from ..ir import Graph, IntGraph, IntKind, IntLayer, IntTensor, Node, Op
from ..types import IntType, signed_bits
from .quantizers import (Affine, Clip, Quantizer, Relu, chain_append, chain_direction, derive_thresholds, frac,
                         is_linear, linear_of)

__all__ = ["lower", "clip_type", "MAX_THRESHOLD_LEVELS"]

MAX_THRESHOLD_LEVELS = 4096
MAX_THRESHOLD_LEVELS_PREFERRED = 255     # wider outputs use multiplier/shift when the chain is affine
MULT_BITS = 30
PRESCALE_BITS = 16
ROUNDING_MODES = ("ROUND", "HALF_EVEN", "FLOOR", "CEIL", "ROUND_TO_ZERO", "DOWN", "UP", "HALF_UP", "HALF_DOWN")


@dataclass(frozen=True)
class Const:
    value: np.ndarray


@dataclass(frozen=True)
class QConst:
    codes: np.ndarray          # integer codes, the constant's own shape
    scale: np.ndarray          # broadcastable to codes
    zero_point: np.ndarray
    type: IntType
    value: np.ndarray          # the ONNX value (float dequantized, or the codes themselves)


@dataclass(frozen=True)
class Raw:
    idx: np.ndarray            # onnx shape without batch -> flat index into the plan input
    chain: tuple = ()
    pre: tuple = ()            # float32 ops on the raw input, in graph order: ("Mul"|"Add"|"Div", value)


@dataclass(frozen=True)
class Val:
    src: str
    idx: np.ndarray
    chain: tuple = ()


@dataclass(frozen=True)
class Tail:
    val: Val                   # the integer-derived tensor the Softmax reads
    ops: tuple                 # output.trailing entries after the Softmax, in graph order


# ops that may read a Tail (everything else refuses: a Softmax output is float, not codes)
TAIL_OPS = {Op.QUANTIZE_LINEAR, Op.DEQUANTIZE_LINEAR, Op.IDENTITY, Op.ARGMAX, Op.TOPK}


class _Lowering:
    def __init__(self, g: Graph):
        self.g = g
        self.env: dict[str, object] = {k: Const(np.asarray(v)) for k, v in g.constants.items()}
        self.tensors: dict[str, IntTensor] = {}
        self.layers: list[IntLayer] = []
        self.ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}   # per-channel code range
        self.notes: list[str] = list(g.notes)
        self.input_spec: dict | None = None
        self.output_override = None
        self.names: set[str] = set()
        self.consumers: dict[str, list[Node]] = {}
        for n in g.nodes:
            for i in n.inputs:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.code_clips: set[str] = set()    # Clip nodes folded into a QuantizeLinear's type

    # -- helpers ----------------------------------------------------------------------------
    def err(self, node: Node, msg: str):
        raise UserError(f"{node.op.value} '{node.name}': {msg}")

    def uniq(self, base: str) -> str:
        base = base.replace("/", "_").replace(":", "_") or "t"
        name, k = base, 1
        while name in self.names or name in self.tensors:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def channels(self, tensor: str) -> int:
        return self.tensors[tensor].shape[-1]

    def full(self, sample_shape) -> tuple[int, ...]:
        """The ONNX shape of a tensor whose per-sample index has ``sample_shape``."""
        return ((1,) if self.g.batch_axis else ()) + tuple(sample_shape)

    def add_tensor(self, name, shape, itype, lo, hi, scale=(1.0,), zp=(0.0,)):
        self.tensors[name] = IntTensor(tuple(int(s) for s in shape), itype, tuple(scale), tuple(zp))
        self.ranges[name] = (np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64))

    def per_channel(self, node: Node, v: Val, const, what: str) -> tuple[Fraction, ...]:
        """Broadcast a constant over the ONNX tensor and reduce it to one value per plan channel."""
        arr = np.asarray(const, dtype=np.float64)
        full_shape = self.full(v.idx.shape)
        try:
            b = np.broadcast_to(arr, np.broadcast_shapes(arr.shape, full_shape))
        except ValueError:
            self.err(node, f"{what} of shape {arr.shape} does not broadcast to {full_shape}")
        if b.shape != full_shape:
            self.err(node, f"{what} of shape {arr.shape} changes the tensor shape {full_shape}")
        C = self.channels(v.src)
        size = int(np.prod(self.tensors[v.src].shape))
        if v.idx.size != size:
            self.err(node, "operates on a partial view of a tensor (unsupported)")
        plan = np.empty(size)
        plan[v.idx.reshape(-1)] = b.reshape(-1)
        plan = plan.reshape(-1, C)
        if not np.all(plan == plan[:1]):
            self.err(node, f"{what} varies inside a channel; only per-tensor or per-channel constants are supported")
        return tuple(frac(x) for x in plan[0])

    def const_of(self, node: Node, name: str, what: str) -> np.ndarray:
        v = self.env.get(name)
        if isinstance(v, Const):
            return v.value
        if isinstance(v, QConst):
            return v.value
        self.err(node, f"{what} '{name}' must be a constant")

    # -- node dispatch ---------------------------------------------------------------------
    def run(self):
        g = self.g
        inp = g.inputs[0]
        shape = g.shapes[inp][1:] if g.batch_axis else g.shapes[inp]
        if len(shape) == 3:
            c, h, w = shape
            idx = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1)
            plan_shape = (h, w, c)
        else:
            idx = np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)
            plan_shape = (int(np.prod(shape, dtype=np.int64)),) if len(shape) != 1 else tuple(shape)
            if len(shape) > 1:
                plan_shape = tuple(shape)
        self.plan_input_shape = plan_shape
        self.env[inp] = Raw(idx)
        ft = finn_type(g.annotations.get(inp))
        if self.declared_input is not None:
            # --input-type: the float input holds values of a declared fixed-point type (as
            # hls4ml's input precision); quantized once, on the host, like any input quantizer
            t, s = self.declared_input
            self.env[inp] = self.input_quant(Node(Op.IDENTITY, "input", (inp,), (inp,)), Raw(idx), np.float32(s),
                                             np.float32(0), t, "ROUND")
            self.input_spec["declared"] = True
        elif ft is not None:
            # FINN convention: an input annotated with an integer datatype already holds codes
            self.env[inp] = self.input_quant(Node(Op.IDENTITY, "input", (inp,), (inp,)), Raw(idx), np.float32(1),
                                             np.float32(0), ft, "ROUND")
            self.input_spec["declared"] = True
        for node in g.nodes:
            handler = getattr(self, "op_" + node.op.value.lower())
            tail_in = next((i for i in node.inputs if isinstance(self.env.get(i), Tail)), None)
            if tail_in is not None and node.op not in TAIL_OPS:
                self.err(node, f"reads the Softmax output '{tail_in}'; only QuantizeLinear/DequantizeLinear (applied "
                               "in float by predict) or ArgMax may follow a Softmax, which must end the graph")
            try:
                outs = handler(node)
            except UserError:
                raise
            except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError, OverflowError) as exc:
                # malformed constants (shapes, dtypes, values) surface here; name the node
                raise UserError(f"{node.op.value} '{node.name}': cannot lower this node "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                                "check the shapes and values of its inputs") from None
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for name, val in zip(node.outputs, outs):
                if name:
                    self.env[name] = val
        if self.input_spec is None:
            raise UserError(f"{g.source}: the data input '{inp}' is never quantized (no Quant/QuantizeLinear/"
                            "MultiThreshold on it); accumulus needs an integer input")
        return self.finish()

    # layout ----------------------------------------------------------------------------------
    def _layout(self, node: Node, fn):
        x = self.env[node.inputs[0]]
        if isinstance(x, Const):
            return Const(fn(np.asarray(x.value)))
        if isinstance(x, QConst):
            shape = np.shape(x.codes)
            return QConst(fn(x.codes), fn(np.broadcast_to(x.scale, shape)), fn(np.broadcast_to(x.zero_point, shape)),
                          x.type, fn(np.asarray(x.value)))
        if not self.g.batch_axis:
            return type(x)(**{**x.__dict__, "idx": fn(x.idx)})
        full = fn(x.idx[None])
        if full.ndim == 0 or full.shape[0] != 1:
            self.err(node, f"moves the batch axis (result shape {full.shape}); unsupported")
        return type(x)(**{**x.__dict__, "idx": full[0]})

    def op_identity(self, node):
        return self.env[node.inputs[0]]

    def op_flatten(self, node):
        axis = node.attr("axis", 1)
        def f(a):
            ax = axis + a.ndim if axis < 0 else axis
            return a.reshape(int(np.prod(a.shape[:ax], dtype=np.int64)), -1)
        return self._layout(node, f)

    def op_reshape(self, node):
        target = [int(v) for v in np.asarray(self.const_of(node, node.inputs[1], "shape")).reshape(-1)]
        def f(a):
            t = [a.shape[i] if v == 0 and not node.attr("allowzero", 0) else v for i, v in enumerate(target)]
            if t and t[0] not in (1, -1):
                t = [1] + t if int(np.prod([d for d in t if d > 0])) == a.size and -1 not in t else t
            return a.reshape(t)
        return self._layout(node, f)

    def op_transpose(self, node):
        perm = node.attr("perm")
        return self._layout(node, lambda a: a.transpose(perm) if perm is not None else a.transpose())

    def _axes(self, node):
        axes = node.attr("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            axes = [int(v) for v in np.asarray(self.const_of(node, node.inputs[1], "axes")).reshape(-1)]
        return axes

    def op_squeeze(self, node):
        axes = self._axes(node)
        def f(a):
            if axes is None:
                keep = [0] + [i for i in range(1, a.ndim) if a.shape[i] != 1]
                return a.reshape([a.shape[i] for i in keep])
            return np.squeeze(a, axis=tuple(axes))
        return self._layout(node, f)

    def op_unsqueeze(self, node):
        axes = self._axes(node)
        return self._layout(node, lambda a: np.expand_dims(a, tuple(axes)))

    # elementwise float ops ---------------------------------------------------------------------
    def _affine(self, node, x, mul, add):
        """x * mul + add with constants mul/add (None = 1/0)."""
        if isinstance(x, Raw):
            return self._raw_op(node, x, mul, add)
        if not isinstance(x, Val):
            self.err(node, "unsupported operand")
        C = self.channels(x.src)
        one, zero = (Fraction(1),) * C, (Fraction(0),) * C
        a = one if mul is None else self.per_channel(node, x, mul, "multiplier")
        b = zero if add is None else self.per_channel(node, x, add, "addend")
        return Val(x.src, x.idx, chain_append(x.chain, Affine(a, b)))

    def _raw_op(self, node, x: Raw, mul, add, div=None):
        """Float arithmetic on the graph input before its quantizer: recorded op by op and
        replayed in float32 by the golden model's input step (``input.pre``), so that the
        input codes equal the reference executor's bit for bit."""
        if x.chain:
            self.err(node, "float arithmetic after a ReLU on the graph input is not supported")
        pre = list(x.pre)
        for op, v in (("Mul", mul), ("Div", div), ("Add", add)):
            if v is None:
                continue
            v = np.asarray(v, dtype=np.float32)
            if v.size != 1:
                self.err(node, "only scalar arithmetic is supported before the input quantizer")
            pre.append((op, float(np.ravel(v)[0])))
        return Raw(x.idx, x.chain, tuple(pre))

    def _binary(self, node):
        a, b = (self.env[i] for i in node.inputs[:2])
        a_c, b_c = isinstance(a, (Const, QConst)), isinstance(b, (Const, QConst))
        if a_c and b_c:
            self.err(node, "constant arithmetic that was not folded")
        return a, b, a_c, b_c

    def op_add(self, node):
        a, b, a_c, b_c = self._binary(node)
        if a_c or b_c:
            x, c = (b, a) if a_c else (a, b)
            return self._affine(node, x, None, c.value)
        return self.residual(node, a, b, 1)

    def op_sub(self, node):
        a, b, a_c, b_c = self._binary(node)
        if b_c:
            return self._affine(node, a, None, -np.asarray(b.value, dtype=np.float64))
        if a_c:
            return self._affine(node, b, -1.0, a.value)
        return self.residual(node, a, b, -1)

    def op_mul(self, node):
        a, b, a_c, b_c = self._binary(node)
        if not (a_c or b_c):
            self.err(node, "multiplies two non-constant tensors; only products with constants are supported")
        x, c = (b, a) if a_c else (a, b)
        return self._affine(node, x, c.value, None)

    def op_div(self, node):
        a, b, a_c, b_c = self._binary(node)
        if not b_c:
            self.err(node, "divides by a non-constant tensor; only division by constants is supported")
        d = np.asarray(b.value, dtype=np.float64)
        if np.any(d == 0):
            self.err(node, "divides by zero")
        x = a
        if isinstance(x, Raw):
            return self._raw_op(node, x, None, None, div=d)
        C = self.channels(x.src)
        dv = self.per_channel(node, x, d, "divisor")
        return Val(x.src, x.idx, chain_append(x.chain, Affine(tuple(1 / v for v in dv), (Fraction(0),) * C)))

    def op_batchnormalization(self, node):
        x = self.env[node.inputs[0]]
        if not isinstance(x, Val):
            self.err(node, "batch-norm needs a quantized input")
        gamma, beta, mean, var = (np.asarray(self.const_of(node, i, "parameter"), dtype=np.float32)
                                  for i in node.inputs[1:5])
        eps = np.float32(node.attr("epsilon", 1e-5))
        # the reference computes sqrt(var + eps) in float32: take that float32 value exactly
        std = np.sqrt(var + eps).astype(np.float32)
        shape = [1] * len(self.full(x.idx.shape))
        shape[1] = -1
        C = self.channels(x.src)
        g_ = self.per_channel(node, x, gamma.reshape(shape), "gamma")
        s_ = self.per_channel(node, x, std.reshape(shape), "std")
        m_ = self.per_channel(node, x, mean.reshape(shape), "mean")
        b_ = self.per_channel(node, x, beta.reshape(shape), "beta")
        a = tuple(g / s for g, s in zip(g_, s_))
        b = tuple(bb - m * aa for bb, m, aa in zip(b_, m_, a))
        del C
        return Val(x.src, x.idx, chain_append(x.chain, Affine(a, b)))

    def op_relu(self, node):
        x = self.env[node.inputs[0]]
        if isinstance(x, Raw):
            # checked at the quantizer: only one whose clip already starts at the code of 0.0
            return Raw(x.idx, x.chain + (Relu(),), x.pre)
        if not isinstance(x, Val):
            self.err(node, "ReLU before the input quantizer is not supported")
        return Val(x.src, x.idx, x.chain + (Relu(),))

    def op_clip(self, node):
        x = self.env[node.inputs[0]]
        if node.name in self.code_clips:
            return x        # folded into the QuantizeLinear's output type (QCDQ)
        if isinstance(x, Const):
            return self._const_clip(node, x)
        if isinstance(x, Val) and not x.chain and node.inputs[0] in self.onnx_dtypes \
                and np.issubdtype(np.dtype(self.onnx_dtypes[node.inputs[0]]), np.integer):
            self.err(node, "clips integer codes to a range that is not a whole integer type (uintN, intN or "
                           "narrow intN); re-export with a standard bit width")
        if not isinstance(x, Val):
            self.err(node, "Clip before the input quantizer is not supported")
        lo, hi = node.attr("min"), node.attr("max")
        if len(node.inputs) > 1 and node.inputs[1]:
            lo = float(np.asarray(self.const_of(node, node.inputs[1], "min")).reshape(-1)[0])
        if len(node.inputs) > 2 and node.inputs[2]:
            hi = float(np.asarray(self.const_of(node, node.inputs[2], "max")).reshape(-1)[0])
        lo_f = None if lo is None else frac(np.float32(lo))
        hi_f = None if hi is None else frac(np.float32(hi))
        return Val(x.src, x.idx, x.chain + (Clip(lo_f, hi_f),))

    # quantizers -------------------------------------------------------------------------------
    def _bits(self, node, name) -> int:
        b = np.asarray(self.const_of(node, name, "bit width")).reshape(-1)
        if b.size != 1 or not np.isfinite(b[0]) or b[0] != np.round(b[0]) or not 1 <= b[0] <= 32:
            self.err(node, f"bit width {b.tolist()} must be one integer in 1..32")
        return int(b[0])

    def op_quant(self, node):
        x = self.env[node.inputs[0]]
        s = np.asarray(self.const_of(node, node.inputs[1], "scale"), dtype=np.float32)
        z = np.asarray(self.const_of(node, node.inputs[2], "zero point"), dtype=np.float32)
        bits = self._bits(node, node.inputs[3])
        if np.any(s <= 0) or not np.all(np.isfinite(s)):
            self.err(node, f"scale must be positive and finite, got {s.reshape(-1)[:4].tolist()}")
        signed, narrow = bool(node.attr("signed", 1)), bool(node.attr("narrow", 0))
        mode = str(node.attr("rounding_mode", "ROUND"))
        if mode.upper() not in ROUNDING_MODES:
            self.err(node, f"rounding_mode '{mode}' is not one of {', '.join(ROUNDING_MODES)}")
        if narrow and bits == 1 and not signed:
            self.err(node, "1-bit unsigned narrow quantizer has no codes")
        t = IntType(bits, signed, narrow and bits > 1)
        if isinstance(x, (Const, QConst)):
            v = np.asarray(x.value, dtype=np.float32)
            y = v / s + z
            if bits == 1 and signed:
                q = np.where(y >= 0, 1.0, -1.0)
            else:
                from ..golden import round_float
                q = round_float(np.clip(y, t.min, t.max), mode)
            q = q.astype(np.int64)
            return QConst(q, s, z, t, ((q - z) * s).astype(np.float32))
        if isinstance(x, Raw):
            return self.input_quant(node, x, s, z, t, mode)
        C = self.channels(x.src)
        sc = self.per_channel(node, x, s, "scale")
        zc = self.per_channel(node, x, z, "zero point")
        if any(v != round(v) for v in zc):
            self.err(node, "zero point must be an integer")
        out = Affine(sc, tuple(-a * b for a, b in zip(sc, zc)))
        step = 2 if (bits == 1 and signed) else 1
        if step == 2:
            t = IntType(2, True, True)
        q = Quantizer("quant", t, step, (out,), sc, zc, mode, bits=bits)
        del C
        return self.requant(node, x, q)

    op_intquant = op_quant

    def op_bipolarquant(self, node):
        x = self.env[node.inputs[0]]
        s = np.asarray(self.const_of(node, node.inputs[1], "scale"), dtype=np.float32)
        if not np.all(np.isfinite(s)) or np.any(s == 0):
            # e.g. Brevitas' 1-bit narrow signed quantizer: max / (2^0 - 1) = inf
            self.err(node, f"scale must be nonzero and finite, got {np.ravel(s)[:4].tolist()}; "
                           "a 1-bit narrow-range signed quantizer has no codes, export it without narrow_range")
        if isinstance(x, (Const, QConst)):
            q = np.where(np.asarray(x.value) >= 0, 1, -1).astype(np.int64)
            return QConst(q, s, np.zeros(1, np.float32), IntType(2, True, True), (q * s).astype(np.float32))
        if isinstance(x, Raw):
            return self.bipolar_input(node, x, s)
        sc = self.per_channel(node, x, s, "scale")
        C = len(sc)
        q = Quantizer("bipolar", IntType(2, True, True), 2, (Affine(sc, (Fraction(0),) * C),))
        return self.requant(node, x, q)

    def bipolar_input(self, node, x: Raw, s) -> Val:
        """BipolarQuant on the graph input (FINN BNN-PYNQ style): code +1 where the raw float
        input (after any float ops before it) is >= 0, else -1, exactly as qonnx's
        ``binary_quant`` executes it (the scale only dequantizes). The codes are a 2-bit
        signed narrow type; the golden input step reads ``input.bipolar``."""
        if x.chain:
            self.err(node, "a ReLU/Clip before the bipolar input quantizer makes every code +1; remove it")
        v = self.input_quant(node, x, s, np.zeros((), np.float32), IntType(2, True, True), "ROUND")
        self.input_spec["bipolar"] = True
        return v

    def op_trunc(self, node):
        x = self.env[node.inputs[0]]
        if not isinstance(x, Val):
            self.err(node, "Trunc needs a quantized (non-constant) input")
        s = np.asarray(self.const_of(node, node.inputs[1], "scale"), dtype=np.float32)
        z = np.asarray(self.const_of(node, node.inputs[2], "zero point"), dtype=np.float32)
        in_bits = self._bits(node, node.inputs[3])
        mode = str(node.attr("rounding_mode", "FLOOR"))
        if mode.upper() not in ROUNDING_MODES:
            self.err(node, f"rounding_mode '{mode}' is not one of {', '.join(ROUNDING_MODES)}")
        sc = self.per_channel(node, x, s, "scale")
        zc = self.per_channel(node, x, z, "zero point")
        v2 = node.domain_opset >= 2 or len(node.inputs) >= 6
        if v2:
            out_scale = np.asarray(self.const_of(node, node.inputs[4], "output scale"), dtype=np.float32)
            out_bits = self._bits(node, node.inputs[5])
            ratio = out_scale.astype(np.float64) / s.astype(np.float64)
            ts = np.round(np.log2(ratio))
            if np.size(ts) != 1:
                self.err(node, "per-channel truncation scale is not supported")
            tsi = 1 << int(np.ravel(ts)[0]) if np.ravel(ts)[0] >= 0 else None
            if tsi is None:
                self.err(node, "output scale smaller than the input scale")
            t = IntType(out_bits, bool(node.attr("signed", 1)), bool(node.attr("narrow", 0)))
            osc = self.per_channel(node, x, out_scale, "output scale")
            out = Affine(osc, tuple(-o * zz / tsi for o, zz in zip(osc, zc)))
            q = Quantizer("trunc2", t, 1, (out,), sc, zc, mode, trunc_scale=tsi)
        else:
            out_bits = self._bits(node, node.inputs[4])
            tsi = 1 << max(0, in_bits - out_bits)
            # v1 does not clamp: the code range follows from the input's value range
            t = IntType(min(64, out_bits + 2), True)
            out = Affine(sc, tuple(-a * b for a, b in zip(sc, zc)))
            q = Quantizer("trunc1", t, 1, (out,), sc, zc, mode, trunc_scale=tsi)
        return self.requant(node, x, q, narrow_to_range=not v2)

    def op_multithreshold(self, node):
        x = self.env[node.inputs[0]]
        th = np.asarray(self.const_of(node, node.inputs[1], "thresholds"), dtype=np.float32)
        if th.ndim != 2:
            self.err(node, f"thresholds must be 2-D (channels, steps), got shape {th.shape}")
        if not isinstance(x, Val):
            self.err(node, "MultiThreshold needs a quantized (integer-derived) input")
        out_scale = float(node.attr("out_scale", 1.0))
        out_bias = float(node.attr("out_bias", 0.0))
        layout = str(node.attr("data_layout", "NCHW"))
        nd = len(self.full(x.idx.shape))
        axis = nd - 1 if layout in ("NHWC", "NC", "NWC") or nd == 2 else 1
        n_th = th.shape[1]
        C = self.channels(x.src)
        rows = []
        # each threshold row j applies along the channel axis: build one per plan channel
        for j in range(n_th):
            col = th[:, j]
            shape = [1] * nd
            shape[axis] = col.size
            rows.append(self.per_channel(node, x, col.reshape(shape), "thresholds"))
        per_ch = tuple(tuple(sorted(rows[j][c] for j in range(n_th))) for c in range(C))
        bits = max(1, int(n_th).bit_length())
        t = IntType(bits, False)
        if t.max > n_th:     # codes 0..n_th only
            pass
        out = Affine((frac(np.float32(out_scale)),) * C, (frac(np.float32(out_bias)),) * C)
        q = Quantizer("multithreshold", IntType(bits, False), 1, (out,), thresholds=per_ch)
        return self.requant(node, x, q, levels=n_th)

    def op_quantizelinear(self, node):
        x = self.env[node.inputs[0]]
        if isinstance(x, Tail):
            return self._tail_qdq(node, x, True)
        s = np.asarray(self.const_of(node, node.inputs[1], "scale"), dtype=np.float32)
        if len(node.inputs) > 2 and node.inputs[2]:
            zp = np.asarray(self.const_of(node, node.inputs[2], "zero point"))
        else:
            from onnx import helper
            od = node.attr("output_dtype", 0)
            zp = np.zeros((), helper.tensor_dtype_to_np_dtype(od) if od else np.uint8)
        t = _dtype_type(node, zp.dtype, self)
        if not isinstance(x, (Const, QConst)):
            t = self._code_clip(node, t)
        s, zpf = self._qdq_broadcast(node, x, s, zp.astype(np.float64))
        if isinstance(x, (Const, QConst)):
            v = np.asarray(x.value, dtype=np.float32)
            q = np.clip(np.round(v / s) + zpf, t.min, t.max).astype(np.int64)
            return QConst(q, s, zpf, t, q.astype(zp.dtype))
        if isinstance(x, Raw):
            return self.input_quant(node, x, s, zpf, t, "ROUND", qlinear=True, onnx_dtype=str(zp.dtype))
        sc = self.per_channel(node, x, s, "scale")
        zc = self.per_channel(node, x, zpf, "zero point")
        C = len(sc)
        q = Quantizer("qlinear", t, 1, (), sc, tuple(int(v) for v in zc))
        del C
        out = self.requant(node, x, q)
        self.onnx_dtypes[node.outputs[0]] = str(zp.dtype)
        return out

    def _clip_bounds(self, clip: Node):
        """(lo, hi) of a Clip: numpy scalars, None where a bound is absent. A bound that is not
        one constant raises :class:`UserError` naming the Clip."""
        lo, hi = clip.attr("min"), clip.attr("max")
        if len(clip.inputs) > 1 and clip.inputs[1]:
            lo = np.asarray(self.const_of(clip, clip.inputs[1], "min"))
        if len(clip.inputs) > 2 and clip.inputs[2]:
            hi = np.asarray(self.const_of(clip, clip.inputs[2], "max"))
        for b in (lo, hi):
            if b is not None and np.size(b) != 1:
                self.err(clip, f"bound of shape {np.shape(b)} must be a scalar")
        return (None if lo is None else np.asarray(lo).reshape(-1)[0],
                None if hi is None else np.asarray(hi).reshape(-1)[0])

    def _code_clip(self, node, t: IntType) -> IntType:
        """QCDQ (Brevitas ``export_onnx_qcdq``): ``QuantizeLinear -> Clip -> DequantizeLinear``
        quantizes to a narrower integer than the 8-bit storage type. When the QuantizeLinear's
        only consumer is a Clip to the range of an integer type inside ``t``, that type is
        the output type and the Clip is folded away (clipping a saturated code again to a
        sub-range equals saturating to the sub-range once)."""
        out = node.outputs[0]
        users = self.consumers.get(out, [])
        if len(users) != 1 or users[0].op != Op.CLIP or out in self.g.outputs:
            return t
        clip = users[0]
        try:
            lo, hi = self._clip_bounds(clip)
        except UserError:
            return t
        c = clip_type(lo, hi, t)
        if c is None:
            return t
        self.code_clips.add(clip.name)
        return c

    def _const_clip(self, node, x: Const):
        """A Clip of constant integer codes: QCDQ weights are ``int8 initializer -> Clip(-7, 7)
        -> DequantizeLinear`` (the front end leaves that Clip for here). The clipped codes are
        typed by the clip range when it is a whole integer type (int4 narrow, not the int8
        storage type), so that weight ROMs and the data-type accumulator bound use the
        trained bit width; otherwise they keep the storage type."""
        c = np.asarray(x.value)
        lo, hi = self._clip_bounds(node)
        clipped = c
        if lo is not None:
            clipped = np.maximum(clipped, np.asarray(lo, dtype=c.dtype))
        if hi is not None:
            clipped = np.minimum(clipped, np.asarray(hi, dtype=c.dtype))
        clipped = np.asarray(clipped, dtype=c.dtype)
        if not np.issubdtype(c.dtype, np.integer):
            return Const(clipped)
        t = clip_type(lo, hi, _dtype_type(node, c.dtype, self))
        if t is None:
            return Const(clipped)
        return QConst(clipped.astype(np.int64), np.ones((), np.float32), np.zeros(()), t, clipped)

    def _qdq_broadcast(self, node, x, s, zp):
        """Per-axis / blocked scale and zero point -> arrays broadcastable to the tensor."""
        shape = self.g.shapes.get(node.inputs[0])
        if shape is None:
            shape = np.asarray(x.value).shape if isinstance(x, (Const, QConst)) else None
        axis = node.attr("axis", 1)
        block = node.attr("block_size", 0)
        if s.ndim == 0 or s.size == 1:
            return s.reshape(()) if s.ndim else s, zp.reshape(()) if zp.ndim else zp
        nd = len(shape)
        axis = axis + nd if axis < 0 else axis
        if block:
            s = np.repeat(s, block, axis=axis)
            zp = np.repeat(zp, block, axis=axis) if zp.ndim else zp
            sl = [slice(None)] * nd
            sl[axis] = slice(0, shape[axis])
            return s[tuple(sl)], (zp[tuple(sl)] if zp.ndim else zp)
        bshape = [1] * nd
        bshape[axis] = -1
        return s.reshape(bshape), (zp.reshape(bshape) if zp.ndim else zp)

    def op_dequantizelinear(self, node):
        x = self.env[node.inputs[0]]
        if isinstance(x, Tail):
            return self._tail_qdq(node, x, False)
        s = np.asarray(self.const_of(node, node.inputs[1], "scale"), dtype=np.float32)
        zp = (np.asarray(self.const_of(node, node.inputs[2], "zero point"))
              if len(node.inputs) > 2 and node.inputs[2] else np.zeros((), np.int64))
        s, zpf = self._qdq_broadcast(node, x, s, zp.astype(np.float64))
        if isinstance(x, Const):
            c = np.asarray(x.value)
            if not np.issubdtype(c.dtype, np.integer):
                self.err(node, "dequantizes a float constant")
            t = _dtype_type(node, c.dtype, self)
            return QConst(c.astype(np.int64), s, zpf, t, ((c.astype(np.float32) - zpf) * s).astype(np.float32))
        if isinstance(x, QConst):
            return QConst(x.codes, s, zpf, x.type, ((x.codes - zpf) * s).astype(np.float32))
        if isinstance(x, Raw):
            # an integer graph input: its codes are the plan input as they are
            dt = self.g_input_dtype
            if not np.issubdtype(dt, np.integer):
                self.err(node, "dequantizes a float graph input")
            x = self.input_quant(node, x, np.float32(1), np.float32(0), _dtype_type(node, dt, self), "ROUND",
                                 qlinear=True)
        if x.chain:
            self.err(node, "input is not an integer tensor")
        try:
            return self._affine(node, x, s, -(zpf * s))
        except UserError:
            if node.outputs[0] not in self.g.outputs:
                raise
        # a blocked/per-element dequantization of the graph output: predict applies it in float
        full = self.full(x.idx.shape)
        self.output_dequant[node.outputs[0]] = (np.broadcast_to(s, full).astype(np.float32),
                                                np.broadcast_to(zpf, full).astype(np.float64))
        return x

    # MAC layers --------------------------------------------------------------------------------
    def _weights(self, node, w, what="weights", name=None):
        """(codes, zero point, scale) of a weight operand."""
        if isinstance(w, QConst):
            return w
        if isinstance(w, Const):
            c = np.asarray(w.value)
            if np.issubdtype(c.dtype, np.integer):
                t = _dtype_type(node, c.dtype, self)
                return QConst(c.astype(np.int64), np.ones((), np.float32), np.zeros(()), t, c)
            ft = finn_type(self.g.annotations.get(name)) if name else None
            if np.all(np.isfinite(c)) and np.all(c == np.round(c)):
                # integer-valued float weights (FINN streamlined graphs): codes with unit scale
                if ft is None:
                    lo, hi = int(c.min(initial=0)), int(c.max(initial=0))
                    ft = IntType(signed_bits(lo, hi), True) if lo < 0 else IntType(max(1, hi.bit_length()), False)
                if c.size and (c.min() < ft.min or c.max() > ft.max):
                    self.err(node, f"{what} leave their annotated type {ft}")
                return QConst(c.astype(np.int64), np.ones((), np.float32), np.zeros(()), ft, c)
            self.err(node, f"{what} are float, not quantized: quantize them (Quant / QuantizeLinear) or "
                           "export with a weight quantizer")
        self.err(node, f"{what} must be constant (a second activation input is not supported)")

    def _mac_input(self, node, x, what="input"):
        if isinstance(x, Raw):
            self.err(node, f"{what} is the float graph input: quantize it in the graph, or declare its "
                           "fixed-point type with --input-type (e.g. int8, uint8, fixed<8,3>) and --input-scale")
        if not isinstance(x, Val):
            self.err(node, f"{what} must be an activation")
        if not is_linear(x.chain):
            self.err(node, f"{what} passes through ReLU/Clip without a quantizer; quantize it before this layer")
        C = self.channels(x.src)
        lin = linear_of(x.chain, C)
        if len(set(lin.a)) != 1:
            self.err(node, f"{what} has per-channel scales; a MAC needs a per-tensor input scale")
        return lin

    def op_matmul(self, node, w_override=None, bias=None, alpha=1.0):
        x = self.env[node.inputs[0]]
        w = w_override if w_override is not None else self._weights(node, self.env[node.inputs[1]],
                                                                     name=node.inputs[1])
        return self.matvec(node, x, w, bias, alpha)

    def matvec(self, node, x, w: QConst, bias, alpha, transposed=False):
        lin = self._mac_input(node, x)
        codes = np.asarray(w.codes)
        if codes.ndim < 2:
            self.err(node, f"weights must be at least 2-D, got shape {codes.shape}")
        K, N = codes.shape[-2:]
        scale = np.broadcast_to(np.asarray(w.scale, dtype=np.float64), codes.shape)
        zp = np.broadcast_to(np.asarray(w.zero_point, dtype=np.float64), codes.shape)
        if not (np.all(scale == scale[..., :1, :]) and np.all(zp == zp[..., :1, :])):
            self.err(node, "weight scale/zero point varies along the reduction axis (blocked weights): unsupported")
        if np.any(zp != np.round(zp)):
            self.err(node, "weight zero point must be an integer")
        if x.idx.shape[-1] != K:
            self.err(node, f"input has {x.idx.shape[-1]} features, weights expect {K}")
        in_size = int(np.prod(self.tensors[x.src].shape))
        if x.idx.size != in_size:
            self.err(node, "input is a partial view of a tensor (unsupported)")
        try:
            lead = np.broadcast_shapes(x.idx.shape[:-1], codes.shape[:-2])
        except ValueError:
            self.err(node, f"input {x.idx.shape} and weights {codes.shape} do not broadcast")
        L = int(np.prod(lead, dtype=np.int64))
        wq = (codes - zp.astype(np.int64))                                    # (*wlead, K, N)
        wq_b = np.broadcast_to(wq, tuple(lead) + (K, N)).reshape(L, K, N)
        sw_b = np.broadcast_to(scale[..., 0, :], tuple(lead) + (N,)).reshape(L * N)
        xi = np.broadcast_to(x.idx, tuple(lead) + (K,)).reshape(L, K)
        Nt = L * N
        # dense (block-diagonal when there are leading axes) weight matrix in plan input order
        weight = np.zeros((Nt, in_size), dtype=np.int64)
        for l in range(L):
            weight[l * N:(l + 1) * N][:, xi[l]] = wq_b[l].T
        wt = _weight_type(w, None, weight)
        # value = alpha * sw_o * (a * acc + sum_j weight_oj * b_j)  (+ bias)
        C_in = self.channels(x.src)
        if len(set(lin.b)) == 1:
            corr = [lin.b[0] * int(v) for v in weight.sum(axis=1)]
        else:
            b_pos = [lin.b[j % C_in] for j in range(in_size)]
            corr = [sum((Fraction(int(v)) * b_pos[j] for j, v in enumerate(row) if v), Fraction(0)) for row in weight]
        al = frac(alpha)
        a_out = tuple(al * frac(s) * lin.a[0] for s in sw_b)
        b_out = tuple(al * frac(s) * cc for s, cc in zip(sw_b, corr))
        if bias is not None:
            bv = np.broadcast_to(np.asarray(bias, dtype=np.float64), tuple(lead) + (N,)).reshape(-1)
            b_out = tuple(bo + frac(v) for bo, v in zip(b_out, bv))
        itype = self.tensors[x.src].type
        name = self.uniq(node.name or "matvec")
        out = name + "_acc"
        self.names.add(out)
        lo, hi = exact_range(weight, itype)
        self.add_tensor(out, (Nt,), IntType(signed_bits(min(lo.min(), 0), max(hi.max(), 0)), True), lo, hi)
        self.layers.append(IntLayer(IntKind.MATVEC, name, (x.src,), out, (node.name,), {
            "weight": weight, "weight_type": wt, "input_type": itype, "fan_in": in_size, "channels": Nt,
            "conv": None, "requant": None, "onnx_op": node.op.value,
        }))
        return Val(out, np.arange(Nt).reshape(tuple(lead) + (N,)), (Affine(a_out, b_out),))

    def op_gemm(self, node):
        x = self.env[node.inputs[0]]
        if node.attr("transA", 0):
            self.err(node, "transA=1 is not supported")
        w = self._weights(node, self.env[node.inputs[1]], name=node.inputs[1])
        if node.attr("transB", 0):
            w = QConst(w.codes.T, np.asarray(w.scale).T if np.ndim(w.scale) == 2 else _t1(w.scale),
                       np.asarray(w.zero_point).T if np.ndim(w.zero_point) == 2 else _t1(w.zero_point),
                       w.type, np.asarray(w.value).T)
        bias = None
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = np.asarray(self.const_of(node, node.inputs[2], "bias"), dtype=np.float64) * node.attr("beta", 1.0)
        return self.matvec(node, x, w, bias, node.attr("alpha", 1.0))

    def op_conv(self, node, w=None, bias=None, x=None):
        x = x if x is not None else self.env[node.inputs[0]]
        w = w if w is not None else self._weights(node, self.env[node.inputs[1]], name=node.inputs[1])
        if bias is None and node.op is Op.CONV and len(node.inputs) > 2 and node.inputs[2]:
            bias = np.asarray(self.const_of(node, node.inputs[2], "bias"), dtype=np.float64)
        lin = self._mac_input(node, x)
        codes = np.asarray(w.codes)
        N, Cg, kh, kw = codes.shape
        scale = np.broadcast_to(np.asarray(w.scale, dtype=np.float64), codes.shape).reshape(N, -1)
        zp = np.broadcast_to(np.asarray(w.zero_point, dtype=np.float64), codes.shape).reshape(N, -1)
        if not (np.all(scale == scale[:, :1]) and np.all(zp == zp[:, :1])):
            self.err(node, "weight scale/zero point must be per output channel")
        sw, zw = scale[:, 0], zp[:, 0]
        if np.any(zw != np.round(zw)):
            self.err(node, "weight zero point must be an integer")
        H, W, C = self._image(node, x, "convolution")
        in_shape = (1, C, H, W)
        kernel, strides, pads, dil, groups = conv_geometry(node, in_shape, codes.shape)
        oh = (H + pads[0] + pads[2] - ((kernel[0] - 1) * dil[0] + 1)) // strides[0] + 1
        ow = (W + pads[1] + pads[3] - ((kernel[1] - 1) * dil[1] + 1)) // strides[1] + 1
        wq = (codes - zw.astype(np.int64)[:, None, None, None]).transpose(0, 2, 3, 1).reshape(N, -1)
        conv = {"in_shape": [H, W, C], "out_shape": [oh, ow, N], "kernel": list(kernel), "stride": list(strides),
                "pads": [pads[0], pads[1], pads[2], pads[3]], "dilation": list(dil), "groups": groups}
        idx_out = np.arange(oh * ow * N).reshape(oh, ow, N).transpose(2, 0, 1)
        return self._conv_common(node, x, wq, sw, w, lin, bias, 1.0, conv, (oh, ow, N), idx_out)

    def _conv_common(self, node, x, wq, sw, w, lin, bias, alpha, conv, out_shape, idx_out):
        N = wq.shape[0]
        itype = self.tensors[x.src].type
        a_in, b_in = lin.a[0], lin.b[0]
        if len(set(lin.b)) != 1:
            self.err(node, "per-channel input zero points are not supported in convolutions")
        pad_value = 0
        if any(conv["pads"]):
            pv = -b_in / a_in            # the code whose value is 0: what zero padding means
            if pv.denominator != 1 or not itype.min <= pv <= itype.max:
                self.err(node, f"zero padding has no input code (zero point {pv}); pad explicitly")
            pad_value = int(pv)
        conv["pad_value"] = pad_value
        wt = _weight_type(w, None, wq)
        # value = alpha * sw_n * (a * acc + b * sum_k wq_nk)
        wsum = wq.sum(axis=1)
        al = frac(alpha)
        a_out = tuple(al * frac(s) * a_in for s in sw)
        b_out = tuple(al * frac(s) * b_in * int(ws) for s, ws in zip(sw, wsum))
        if bias is not None:
            bv = np.broadcast_to(np.asarray(bias, dtype=np.float64).reshape(-1), (N,))
            b_out = tuple(bo + frac(v) for bo, v in zip(b_out, bv))
        name = self.uniq(node.name or "conv")
        out = name + "_acc"
        self.names.add(out)
        # window sums: with padding the pad code is inside the input range, so the range holds
        ig = IntType(itype.bits, itype.signed, itype.narrow)
        lo, hi = exact_range(wq, ig)
        self.add_tensor(out, out_shape, IntType(signed_bits(min(lo.min(), 0), max(hi.max(), 0)), True), lo, hi)
        self.layers.append(IntLayer(IntKind.CONV, name, (x.src,), out, (node.name,), {
            "weight": wq, "weight_type": wt, "input_type": itype, "fan_in": int(wq.shape[1]), "channels": N,
            "conv": conv, "requant": None, "onnx_op": node.op.value,
        }))
        return Val(out, idx_out, (Affine(a_out, b_out),))

    def op_matmulinteger(self, node):
        x = self.env[node.inputs[0]]
        x = self._int_input(node, x, node.inputs[2] if len(node.inputs) > 2 else "")
        w = self._int_weights(node, node.inputs[1], node.inputs[3] if len(node.inputs) > 3 else "", axis=-1)
        out = self.matvec(node, x, w, None, 1.0)
        self.onnx_dtypes[node.outputs[0]] = "int32"
        return out

    def op_convinteger(self, node):
        x = self._int_input(node, self.env[node.inputs[0]], node.inputs[2] if len(node.inputs) > 2 else "")
        w = self._int_weights(node, node.inputs[1], node.inputs[3] if len(node.inputs) > 3 else "", axis=0)
        out = self.op_conv(node, w=w, x=x)
        self.onnx_dtypes[node.outputs[0]] = "int32"
        return out

    def _integer_val(self, node, x):
        """``x`` as integer codes: a raw integer graph input is taken as codes (scale 1)."""
        if isinstance(x, Raw):
            dt = self.g_input_dtype
            x = self.input_quant(node, x, np.float32(1), np.float32(0), _dtype_type(node, dt, self), "ROUND",
                                 qlinear=True)
        if not isinstance(x, Val) or x.chain:
            self.err(node, "input must be an integer tensor")
        return x

    def _int_input(self, node, x, zp_name):
        """An integer activation input with an optional zero point -> Val of (code - zp)."""
        x = self._integer_val(node, x)
        zp = np.asarray(self.const_of(node, zp_name, "zero point")).astype(np.float64) if zp_name else 0.0
        return self._affine(node, x, None, -zp)

    def _int_weights(self, node, w_name, zp_name, axis):
        w = self.env[w_name]
        if not isinstance(w, Const) or not np.issubdtype(np.asarray(w.value).dtype, np.integer):
            self.err(node, "weights must be a constant integer tensor")
        c = np.asarray(w.value)
        zp = np.asarray(self.const_of(node, zp_name, "zero point")).astype(np.int64) if zp_name else np.zeros((), np.int64)
        if zp.ndim == 1 and zp.size > 1:
            shape = [1] * c.ndim
            shape[axis] = -1
            zp = zp.reshape(shape)
        t = _dtype_type(node, c.dtype, self)
        return QConst(c.astype(np.int64), np.ones((), np.float32), zp, t, c)

    def op_qlinearmatmul(self, node):
        a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = node.inputs
        x = self._qlinear_input(node, a, a_s, a_zp)
        w = self._qlinear_weights(node, b, b_s, b_zp, axis=-1)
        acc = self.matvec(node, x, w, None, 1.0)
        return self._qlinear_output(node, acc, y_s, y_zp)

    def op_qlinearconv(self, node):
        ins = list(node.inputs) + [""] * (9 - len(node.inputs))
        x_, x_s, x_zp, w_, w_s, w_zp, y_s, y_zp, b_ = ins
        x = self._qlinear_input(node, x_, x_s, x_zp)
        w = self._qlinear_weights(node, w_, w_s, w_zp, axis=0)
        bias = None
        if b_:
            bq = np.asarray(self.const_of(node, b_, "bias")).astype(np.float64)
            xs = float(np.asarray(self.const_of(node, x_s, "scale")).reshape(-1)[0])
            ws = np.asarray(self.const_of(node, w_s, "scale"), dtype=np.float64).reshape(-1)
            bias = bq * np.float64(xs) * np.broadcast_to(ws, bq.shape)  # exact for the checker below
            self._qconv_bias = (bq, xs, ws)
        acc = self.op_conv(node, w=w, bias=None, x=x)
        if b_:
            C = len(acc.chain[0].a)
            add = tuple(Fraction(int(v)) * frac(np.float32(xs)) * frac(np.float32(ws[n % ws.size]))
                        for n, v in zip(range(C), np.broadcast_to(bq, (C,))))
            acc = Val(acc.src, acc.idx, chain_append(acc.chain, Affine((Fraction(1),) * C, add)))
        del bias
        return self._qlinear_output(node, acc, y_s, y_zp)

    def op_qgemm(self, node):
        """com.microsoft QGemm (onnxruntime): ``acc = C + (A - z_a)(B - z_b)`` in int32, the
        int32 bias ``C`` in units of ``alpha·s_a·s_b``; requantized to ``y`` when ``y_scale`` is
        given, else a float output ``alpha·s_a·s_b·acc``."""
        ins = list(node.inputs) + [""] * (9 - len(node.inputs))
        a_, a_s, a_zp, b_, b_s, b_zp, c_, y_s, y_zp = ins
        if node.attr("transA", 0):
            self.err(node, "transA=1 is not supported")
        trans_b = bool(node.attr("transB", 0))
        alpha = float(np.float32(node.attr("alpha", 1.0)))
        x = self._qlinear_input(node, a_, a_s, a_zp)
        w = self._qlinear_weights(node, b_, b_s, b_zp, axis=0 if trans_b else 1)
        if trans_b:
            w = QConst(w.codes.T, np.asarray(w.scale).T, np.asarray(w.zero_point).T, w.type, np.asarray(w.value).T)
        acc = self.matvec(node, x, w, None, alpha)
        if c_:
            cq = np.asarray(self.const_of(node, c_, "bias"))
            if not np.issubdtype(cq.dtype, np.integer):
                self.err(node, f"bias C must be int32 codes, got {cq.dtype}")
            C = len(acc.chain[0].a)
            cq = np.broadcast_to(cq.reshape(-1) if cq.ndim <= 1 else cq, (C,) if cq.ndim <= 1 else cq.shape)
            if cq.ndim > 1:
                if cq.shape[0] != 1:
                    self.err(node, f"bias C of shape {cq.shape} varies along the batch axis; unsupported")
                cq = cq.reshape(-1)
            ws = np.broadcast_to(np.asarray(self.const_of(node, b_s, "scale"), dtype=np.float32).reshape(-1), (C,))
            xs = frac(np.asarray(self.const_of(node, a_s, "scale"), dtype=np.float32).reshape(-1)[0])
            add = tuple(frac(alpha) * xs * frac(ws[n]) * int(cq[n]) for n in range(C))
            acc = Val(acc.src, acc.idx, chain_append(acc.chain, Affine((Fraction(1),) * C, add)))
        if not y_s:
            self.onnx_dtypes[node.outputs[0]] = "float32"
            return acc
        if not y_zp:
            self.err(node, "y_scale without y_zero_point: give both (quantized output) or neither (float output)")
        return self._qlinear_output(node, acc, y_s, y_zp)

    def op_qlinearadd(self, node):
        """com.microsoft QLinearAdd: ``C = saturate(round((s_a(a - z_a) + s_b(b - z_b)) / s_c) + z_c)``.
        A constant operand (onnxruntime's quantized bias) is an exact affine offset; two
        activations are a residual add."""
        ins = list(node.inputs) + [""] * (8 - len(node.inputs))
        a_, a_s, a_zp, b_, b_s, b_zp, c_s, c_zp = ins
        if not c_s:
            self.err(node, "missing C_scale")
        consts = [isinstance(self.env[t], (Const, QConst)) for t in (a_, b_)]
        if all(consts):
            self.err(node, "adds two constants (not folded)")
        if any(consts):
            (k_, k_s, k_zp), (v_, v_s, v_zp) = ((a_, a_s, a_zp), (b_, b_s, b_zp)) if consts[0] else \
                ((b_, b_s, b_zp), (a_, a_s, a_zp))
            x = self._qlinear_input(node, v_, v_s, v_zp)
            kc = np.asarray(self.const_of(node, k_, "operand"))
            if not np.issubdtype(kc.dtype, np.integer):
                self.err(node, f"constant operand '{k_}' must hold integer codes, got {kc.dtype}")
            ks = np.asarray(self.const_of(node, k_s, "scale"), dtype=np.float32)
            kz = np.asarray(self.const_of(node, k_zp, "zero point")).astype(np.float64) if k_zp else np.zeros(())
            if ks.size != 1 or kz.size != 1:
                self.err(node, "per-axis scale/zero point of the constant operand is not supported")
            # (code - zp)·s of small integers and a float32 scale: exact in float64
            val = (kc.astype(np.float64) - kz.reshape(())) * np.float64(ks.reshape(()))
            s = self._affine(node, x, None, val)
        else:
            xa = self._qlinear_input(node, a_, a_s, a_zp)
            xb = self._qlinear_input(node, b_, b_s, b_zp)
            s = self.residual(node, xa, xb, 1)
        return self._qlinear_output(node, s, c_s, c_zp)

    def op_qlinearsoftmax(self, node):
        """com.microsoft QLinearSoftmax at the output: a float trailing op that ``predict``
        evaluates as onnxruntime's CPU kernel does (an exp table over code differences)."""
        x = self.env[node.inputs[0]]
        if not isinstance(x, Val) or x.chain:
            self.err(node, "input must be the integer codes of a QLinear op")
        ins = list(node.inputs) + [""] * (5 - len(node.inputs))
        xs = np.asarray(self.const_of(node, ins[1], "scale"), dtype=np.float32)
        ys = np.asarray(self.const_of(node, ins[3], "scale"), dtype=np.float32)
        yz = np.asarray(self.const_of(node, ins[4], "zero point")) if ins[4] else np.zeros((), np.uint8)
        if xs.size != 1 or ys.size != 1 or yz.size != 1:
            self.err(node, "scales and zero points must be scalars")
        t = self.tensors[x.src].type
        if t.bits != 8:
            self.err(node, f"input codes are {t}; onnxruntime's QLinearSoftmax reads int8/uint8")
        opset = int(node.attr("opset", 13))
        axis = int(node.attr("axis", -1 if opset >= 13 else 1))
        nd = len(self.full(x.idx.shape))
        if axis % nd != nd - 1:
            self.err(node, f"axis={axis}: only the last (channel) axis is supported")
        self.onnx_dtypes[node.outputs[0]] = str(yz.dtype)
        return Tail(x, ({"op": "QLinearSoftmax", "x_scale": float(xs.reshape(-1)[0]),
                         "y_scale": float(ys.reshape(-1)[0]), "y_zero_point": int(yz.reshape(-1)[0]),
                         "signed": bool(t.signed), "axis": -1},))

    def _qlinear_input(self, node, a, a_s, a_zp):
        x = self.env[a]
        x = self._integer_val(node, x)
        s = np.asarray(self.const_of(node, a_s, "scale"), dtype=np.float32)
        zp = np.asarray(self.const_of(node, a_zp, "zero point")).astype(np.float64) if a_zp else np.zeros(())
        return self._affine(node, x, s, -(zp * s))

    def _qlinear_weights(self, node, b, b_s, b_zp, axis):
        w = self._int_weights(node, b, b_zp, axis)
        s = np.asarray(self.const_of(node, b_s, "scale"), dtype=np.float32)
        if s.ndim == 1 and s.size > 1:
            shape = [1] * w.codes.ndim
            shape[axis] = -1
            s = s.reshape(shape)
        return QConst(w.codes, s, w.zero_point, w.type, w.value)

    def _qlinear_output(self, node, acc: Val, y_s, y_zp):
        s = np.asarray(self.const_of(node, y_s, "scale"), dtype=np.float32)
        zp = np.asarray(self.const_of(node, y_zp, "zero point")) if y_zp else np.zeros((), np.uint8)
        t = _dtype_type(node, zp.dtype, self)
        sc = self.per_channel(node, acc, s, "output scale")
        zc = self.per_channel(node, acc, zp.astype(np.float64), "output zero point")
        q = Quantizer("qlinear", t, 1, (), sc, tuple(int(v) for v in zc))
        out = self.requant(node, acc, q)
        self.onnx_dtypes[node.outputs[0]] = str(zp.dtype)
        return out

    # pooling --------------------------------------------------------------------------------
    def _image(self, node, x, what="pooling"):
        """(H, W, C) of an image tensor that reaches ``node`` in NCHW layout."""
        if not isinstance(x, Val):
            self.err(node, f"{what} needs a quantized input")
        shp = self.tensors[x.src].shape
        if len(shp) != 3:
            self.err(node, f"{what} input is not an image")
        H, W, C = shp
        canon = np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1)
        if x.idx.shape != canon.shape or not np.array_equal(x.idx, canon):
            self.err(node, f"{what} input is not in NCHW layout of an image tensor")
        return H, W, C

    def op_maxpool(self, node):
        x = self.env[node.inputs[0]]
        H, W, C = self._image(node, x)
        if len(node.outputs) > 1 and node.outputs[1]:
            self.err(node, "MaxPool indices output is not supported")
        d = chain_direction(x.chain, C)
        if np.any(d < 0):
            self.err(node, "max-pool after a negative scale (descending channel) is not supported")
        kernel, strides, pads, dil = pool_geometry(node, (1, C, H, W))
        if any(v != 1 for v in dil) or node.attr("ceil_mode", 0):
            self.err(node, "dilation and ceil_mode are not supported")
        oh = (H + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
        ow = (W + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
        name = self.uniq(node.name or "maxpool")
        out = name + "_out"
        self.names.add(out)
        t = self.tensors[x.src]
        lo, hi = self.ranges[x.src]
        self.add_tensor(out, (oh, ow, C), t.type, lo, hi, t.scale, t.zero_point)
        self.layers.append(IntLayer(IntKind.MAXPOOL, name, (x.src,), out, (node.name,), {
            "kernel": list(kernel), "stride": list(strides), "pads": [pads[0], pads[1], pads[2], pads[3]],
            "in_shape": [H, W, C], "out_shape": [oh, ow, C]}))
        return Val(out, np.arange(oh * ow * C).reshape(oh, ow, C).transpose(2, 0, 1), x.chain)

    def op_averagepool(self, node, glob=False):
        x = self.env[node.inputs[0]]
        H, W, C = self._image(node, x)
        lin = self._mac_input(node, x)
        if glob:
            kernel, strides, pads = [H, W], [1, 1], [0, 0, 0, 0]
        else:
            kernel, strides, pads, dil = pool_geometry(node, (1, C, H, W))
            if any(v != 1 for v in dil) or node.attr("ceil_mode", 0):
                self.err(node, "dilation and ceil_mode are not supported")
        pad_value = 0
        if any(pads):
            if not node.attr("count_include_pad", 0):
                self.err(node, "padding with count_include_pad=0 divides by a varying count; unsupported")
            pv = -lin.b[0] / lin.a[0]
            if pv.denominator != 1:
                self.err(node, "zero padding has no input code")
            pad_value = int(pv)
        oh = (H + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
        ow = (W + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
        win = kernel[0] * kernel[1]
        it = self.tensors[x.src].type
        lo, hi = win * it.min, win * it.max
        name = self.uniq(node.name or "avgpool")
        out = name + "_sum"
        self.names.add(out)
        st = IntType(signed_bits(min(lo, 0), max(hi, 0)), True)
        self.add_tensor(out, (oh, ow, C), st, [lo] * C, [hi] * C)
        ident = {"kind": "multshift", "bias": np.zeros(C, np.int64), "mult": np.ones(C, np.int64),
                 "shift": np.zeros(C, np.int64), "zero_point": 0, "clip": False, "out_type": st}
        self.layers.append(IntLayer(IntKind.AVGPOOL, name, (x.src,), out, (node.name,), {
            "kernel": list(kernel), "stride": list(strides), "pads": [pads[0], pads[1], pads[2], pads[3]],
            "in_shape": [H, W, C], "out_shape": [oh, ow, C], "pad_value": pad_value, "requant": ident,
            "input_type": it}))
        aff = Affine(tuple(a / win for a in lin.a), lin.b)
        return Val(out, np.arange(oh * ow * C).reshape(oh, ow, C).transpose(2, 0, 1), (aff,))

    def op_globalaveragepool(self, node):
        return self.op_averagepool(node, glob=True)

    # stream reorderings --------------------------------------------------------------------
    def op_depthtospace(self, node):
        x = self.env[node.inputs[0]]
        H, W, C = self._image(node, x, "DepthToSpace")
        b = int(node.attr("blocksize"))
        mode = node.attr("mode", "DCR")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        oc = C // (b * b)
        a = np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1)    # NCHW -> plan flat index
        if mode == "DCR":
            src = a.reshape(b, b, oc, H, W).transpose(2, 3, 0, 4, 1).reshape(oc, H * b, W * b)
        elif mode == "CRD":
            src = a.reshape(oc, b, b, H, W).transpose(0, 3, 1, 4, 2).reshape(oc, H * b, W * b)
        else:
            self.err(node, f"attribute mode='{mode}' is not DCR or CRD")
        return self._reorder(node, x, (H, W, C), src, (b, b), "depth_to_space")

    def op_resize(self, node):
        x = self.env[node.inputs[0]]
        H, W, C = self._image(node, x, "Resize")

        def attr(key, default):
            v = node.attr(key, default)
            return v.decode() if isinstance(v, bytes) else v
        if node.domain_opset < 11:
            self.err(node, f"Resize of opset {node.domain_opset} is not supported (opset >= 11)")
        mode = attr("mode", "nearest")
        if mode != "nearest":
            self.err(node, f"attribute mode='{mode}' is not supported (only 'nearest')")
        ctm = attr("coordinate_transformation_mode", "half_pixel")
        # the modes whose index maps are checked against onnx.reference (tests/test_superres.py)
        if ctm not in ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners"):
            self.err(node, f"attribute coordinate_transformation_mode='{ctm}' is not supported (asymmetric, "
                           "half_pixel, pytorch_half_pixel, align_corners)")
        nm = attr("nearest_mode", "round_prefer_floor")
        if nm not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            self.err(node, f"attribute nearest_mode='{nm}' is not supported")
        if attr("antialias", 0):
            self.err(node, "attribute antialias=1 is not supported")
        if node.attr("axes") is not None:
            self.err(node, "attribute axes is not supported (give scales/sizes for all four axes)")
        if attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            self.err(node, f"attribute keep_aspect_ratio_policy='{attr('keep_aspect_ratio_policy', '')}' "
                           "is not supported (only 'stretch')")
        out = self.g.shapes[node.outputs[0]]
        full = self.full((C, H, W))
        if len(out) != 4 or tuple(out[:2]) != tuple(full[:2]):
            self.err(node, f"resizes the batch or channel axis ({full} -> {out}); only H and W may scale")
        OH, OW = int(out[2]), int(out[3])
        scales = None
        if len(node.inputs) > 2 and node.inputs[2]:
            s = np.asarray(self.const_of(node, node.inputs[2], "scales")).reshape(-1)
            scales = s if s.size else None
        if scales is not None:
            sh, sw = Fraction(float(scales[2])), Fraction(float(scales[3]))
        else:
            sh, sw = Fraction(OH, H), Fraction(OW, W)
        if sh.denominator != 1 or sw.denominator != 1 or OH != H * sh or OW != W * sw:
            self.err(node, f"scales ({float(sh)}, {float(sw)}) on H, W are not integers (only integer "
                           "upsampling is supported)")

        def source(o_len, i_len, s):
            out_idx = []
            for o in range(o_len):
                if ctm == "asymmetric":
                    v = Fraction(o) / s
                elif ctm == "half_pixel":
                    v = (o + Fraction(1, 2)) / s - Fraction(1, 2)
                elif ctm == "pytorch_half_pixel":
                    v = (o + Fraction(1, 2)) / s - Fraction(1, 2) if o_len > 1 else Fraction(0)
                else:
                    v = Fraction(o * (i_len - 1), o_len - 1) if o_len > 1 else Fraction(0)
                fl = v.numerator // v.denominator
                tie = v - fl == Fraction(1, 2)
                if nm == "floor":
                    r = fl
                elif nm == "ceil":
                    r = -((-v.numerator) // v.denominator)
                elif nm == "round_prefer_floor":
                    r = fl if tie else int(np.floor(float(v) + 0.5))
                else:
                    r = fl + 1 if tie else int(np.floor(float(v) + 0.5))
                out_idx.append(min(max(r, 0), i_len - 1))
            return np.asarray(out_idx, dtype=np.int64)
        rows, cols = source(OH, H, sh), source(OW, W, sw)
        a = np.arange(H * W * C).reshape(H, W, C).transpose(2, 0, 1)
        src = a[:, rows][:, :, cols]
        return self._reorder(node, x, (H, W, C), src, (1, 1), "resize_nearest")

    def _reorder(self, node, x: Val, in_shape, src, phase, op):
        """A ``reorder`` layer for an NCHW map ``src`` (output (OC, OH, OW) -> input plan flat index)."""
        H, W, C = in_shape
        OC, OH, OW = src.shape
        ph, pw = phase
        h, w, ch = src // (W * C), (src // C) % W, src % C
        rows, cols = h[0, :, 0], w[0, 0, :]
        chans = np.stack([ch[:, i, j] for i in range(ph) for j in range(pw)])       # (ph*pw, OC)
        oh, ow = np.arange(OH)[:, None], np.arange(OW)[None, :]
        p = (oh % ph) * pw + ow % pw
        rebuilt = rows[:, None, None] * (W * C) + cols[None, :, None] * C + chans[p]  # (OH, OW, OC)
        if not np.array_equal(rebuilt.transpose(2, 0, 1), src):
            raise AssertionError(f"{node.name}: reorder map does not factor into rows/cols/channels")
        if np.any(np.diff(rows) < 0):
            self.err(node, "reads input rows out of order; the stream engine needs non-decreasing rows")
        # a plan channel carries one float chain: every source channel of it must agree
        chain = []
        for e in x.chain:
            if isinstance(e, Affine):
                ea, eb = np.asarray(e.a, dtype=object), np.asarray(e.b, dtype=object)
                if len(e.a) == 1:
                    chain.append(e)
                    continue
                if any(tuple(ea[chans[k]]) != tuple(ea[chans[0]]) or tuple(eb[chans[k]]) != tuple(eb[chans[0]])
                       for k in range(len(chans))):
                    self.err(node, "merges channels with different scales into one output channel; unsupported")
                chain.append(Affine(tuple(ea[chans[0]]), tuple(eb[chans[0]])))
            else:
                chain.append(e)
        t = self.tensors[x.src]
        lo, hi = self.ranges[x.src]
        lo, hi = np.broadcast_to(lo, (C,)), np.broadcast_to(hi, (C,))
        olo, ohi = lo[chans].min(axis=0), hi[chans].max(axis=0)
        sc = t.scale if len(t.scale) == 1 else tuple(np.asarray(t.scale)[chans[0]])
        zp = t.zero_point if len(t.zero_point) == 1 else tuple(np.asarray(t.zero_point)[chans[0]])
        name = self.uniq(node.name or op)
        out = name + "_out"
        self.names.add(out)
        self.add_tensor(out, (OH, OW, OC), t.type, olo, ohi, sc, zp)
        self.layers.append(IntLayer(IntKind.REORDER, name, (x.src,), out, (node.name,), {
            "op": op, "in_shape": [H, W, C], "out_shape": [int(OH), int(OW), int(OC)],
            "rows": [int(r) for r in rows], "cols": [int(c) for c in cols], "phase": [ph, pw],
            "channels": [[int(c) for c in row] for row in chans]}))
        return Val(out, np.arange(OH * OW * OC).reshape(OH, OW, OC).transpose(2, 0, 1), tuple(chain))

    # residual add ----------------------------------------------------------------------------
    def residual(self, node, a, b, sign):
        for v, nm in ((a, "first"), (b, "second")):
            if not isinstance(v, Val) or not is_linear(v.chain):
                self.err(node, f"the {nm} input of a residual add must be quantized")
        la, lb = linear_of(a.chain, self.channels(a.src)), linear_of(b.chain, self.channels(b.src))
        if len(set(la.a)) != 1 or len(set(lb.a)) != 1:
            self.err(node, "residual add inputs need per-tensor scales: quantize both branches before the add")
        if a.idx.shape != b.idx.shape or self.tensors[a.src].shape != self.tensors[b.src].shape or \
                not np.array_equal(a.idx, b.idx):
            self.err(node, "residual add inputs have different layouts")
        sa, sb = la.a[0], lb.a[0] * sign
        r = sa / sb
        ma, mb = r.numerator, r.denominator          # sa = S*ma, sb = S*mb with S = sb/mb
        S = sb / mb
        def split(m):
            sh = 0
            while m % 2 == 0 and m != 0:
                m //= 2
                sh += 1
            return m, sh
        (ma, sha), (mb, shb) = split(ma), split(mb)
        ta, tb = self.tensors[a.src], self.tensors[b.src]
        C = ta.shape[-1]
        lo_a, hi_a = self.ranges[a.src]
        lo_b, hi_b = self.ranges[b.src]
        def span(lo, hi, m, sh):
            x1, x2 = lo * m << sh, hi * m << sh
            return np.minimum(x1, x2), np.maximum(x1, x2)
        l1, h1 = span(np.broadcast_to(lo_a, (C,)), np.broadcast_to(hi_a, (C,)), ma, sha)
        l2, h2 = span(np.broadcast_to(lo_b, (C,)), np.broadcast_to(hi_b, (C,)), mb, shb)
        lo, hi = l1 + l2, h1 + h2
        name = self.uniq(node.name or "add")
        out = name + "_sum"
        self.names.add(out)
        self.add_tensor(out, ta.shape, IntType(signed_bits(min(lo.min(), 0), max(hi.max(), 0)), True), lo, hi)
        self.layers.append(IntLayer(IntKind.ADD, name, (a.src, b.src), out, (node.name,), {
            "align": [{"mult": int(ma), "shift": int(sha), "zero_point": 0},
                      {"mult": int(mb), "shift": int(shb), "zero_point": 0}]}))
        bsum = tuple(x + y * sign for x, y in zip(la.b, lb.b))
        return Val(out, a.idx, (Affine((S,) * C, bsum),))

    # output ops ------------------------------------------------------------------------------
    def op_softmax(self, node):
        x = self.env[node.inputs[0]]
        if not isinstance(x, Val):
            self.err(node, "Softmax needs an integer-derived input (a quantized or MAC output)")
        self.onnx_dtypes[node.outputs[0]] = "float32"
        return Tail(x, ({"op": "Softmax", "axis": int(node.attr("axis", -1))},))

    def _tail_qdq(self, node, x: Tail, quantize: bool):
        """QuantizeLinear / DequantizeLinear after a Softmax: float ops for ``predict``, as
        onnxruntime executes them (float32, ``saturate(round_half_even(v / s) + zp)`` and
        ``(q - zp) · s``). Only per-tensor parameters: the Softmax axis is the channel axis."""
        s = np.asarray(self.const_of(node, node.inputs[1], "scale"), dtype=np.float32)
        if len(node.inputs) > 2 and node.inputs[2]:
            zp = np.asarray(self.const_of(node, node.inputs[2], "zero point"))
        else:
            from onnx import helper
            od = node.attr("output_dtype", 0) if quantize else 0
            zp = np.zeros((), helper.tensor_dtype_to_np_dtype(od) if od else np.uint8)
        if s.size != 1 or zp.size != 1:
            self.err(node, "per-axis quantization of a Softmax output is not supported; use a per-tensor scale")
        if quantize:
            t = _dtype_type(node, zp.dtype, self)
            spec = {"op": "QuantizeLinear", "scale": float(s.reshape(-1)[0]), "zero_point": int(zp.reshape(-1)[0]),
                    "min": int(t.min), "max": int(t.max)}
            self.onnx_dtypes[node.outputs[0]] = str(zp.dtype)
        else:
            spec = {"op": "DequantizeLinear", "scale": float(s.reshape(-1)[0]), "zero_point": int(zp.reshape(-1)[0])}
            self.onnx_dtypes[node.outputs[0]] = "float32"
        return Tail(x.val, x.ops + (spec,))

    def op_argmax(self, node):
        if node.attr("select_last_index", 0):
            self.err(node, "select_last_index=1 is not supported (accumulus' ArgMax ties to the lowest index)")
        return self._argmax(node, node.attr("axis", 0), bool(node.attr("keepdims", 1)))

    def op_topk(self, node):
        k = np.asarray(self.const_of(node, node.inputs[1], "k")).reshape(-1)
        if int(k[0]) != 1:
            self.err(node, f"k={int(k[0])}: only TopK with k=1 is supported")
        if not node.attr("largest", 1):
            self.err(node, "largest=0 is not supported")
        x = self.env[node.inputs[0]]
        if isinstance(x, Tail):
            self.err(node, "TopK of a Softmax output is not supported; take TopK (k=1) of the logits")
        cls = self._argmax(node, node.attr("axis", -1), True)
        self.topk_values = (node.outputs[0], x)
        return [x, cls]

    def _argmax(self, node, axis, keepdims):
        x = self.env[node.inputs[0]]
        if isinstance(x, Tail):
            if len(x.ops) > 1:
                self.err(node, "ArgMax of a quantized Softmax output is not supported (quantizing the "
                               "probabilities makes ties the logits do not have); take the ArgMax of the logits")
            x = x.val            # softmax is increasing along its axis: the same index
        if not isinstance(x, Val):
            self.err(node, "needs an integer-derived input")
        if x.idx.ndim != 1 and not (axis in (1, -1) and x.idx.ndim == 1):
            if x.idx.ndim != 1:
                self.err(node, "ArgMax is supported over a vector output only")
        C = self.channels(x.src)
        src = x.src
        chain = x.chain
        if chain:
            src = self.common_scale(node, x)
        name = self.uniq(node.name or "argmax")
        out = name + "_class"
        self.names.add(out)
        self.add_tensor(out, (1,), IntType(max(1, (C - 1).bit_length()), False), [0], [C - 1])
        self.layers.append(IntLayer(IntKind.ARGMAX, name, (src,), out, (node.name,), {}))
        self.argmax_info = {"keepdims": keepdims, "perm": x.idx.reshape(-1)}
        self.onnx_dtypes[node.outputs[-1]] = "int64"
        return Val(out, np.arange(1) if keepdims else np.arange(1).reshape(()), ())

    def common_scale(self, node, x: Val) -> str:
        """Map per-channel ``a_c·acc + b_c`` onto one integer scale before ArgMax, exactly.

        With Q the common denominator of every a_c and b_c, ``Q·(a_c·acc + b_c) = A_c·acc + B_c``
        in integers: one multshift layer multiplies by A_c, a second adds B_c. Both are exact,
        so the ArgMax (ties to the lowest index) sees the exact order of the real values.
        """
        import math
        C = self.channels(x.src)
        if not is_linear(x.chain):
            self.err(node, "ArgMax after a float ReLU/Clip is not supported; quantize or remove it")
        lin = linear_of(x.chain, C)
        if any(v <= 0 for v in lin.a):
            self.err(node, "ArgMax over channels with non-positive scales is not supported")
        q = 1
        for v in lin.a + lin.b:
            q = q * v.denominator // math.gcd(q, v.denominator)
        A = [int(a * q) for a in lin.a]
        B = [int(b * q) for b in lin.b]
        g = 0
        for v in A + B:
            g = math.gcd(g, v)
        g = g or 1
        A, B = [a // g for a in A], [b // g for b in B]
        lo, hi = self.ranges[x.src]
        lo = np.broadcast_to(lo, (C,))
        hi = np.broadcast_to(hi, (C,))
        y1 = [(min(int(l) * a, int(h) * a), max(int(l) * a, int(h) * a)) for l, h, a in zip(lo, hi, A)]
        y2 = [(l + b, h + b) for (l, h), b in zip(y1, B)]
        bits1 = signed_bits(min(l for l, _ in y1 + [(0, 0)]), max(h for _, h in y1 + [(0, 0)]))
        bits2 = signed_bits(min(l for l, _ in y2 + [(0, 0)]), max(h for _, h in y2 + [(0, 0)]))
        if max(bits1, bits2) > 62:
            self.err(node, f"mapping the per-channel output scales onto one integer scale needs {max(bits1, bits2)} "
                           "bits; use one output scale for all channels (per-tensor) before ArgMax")
        src = x.src
        for step, (mult, bias, rng, bits) in enumerate(((A, [0] * C, y1, bits1), ([1] * C, B, y2, bits2))):
            name = self.uniq((node.name or "argmax") + ("_scale" if step == 0 else "_offset"))
            out = name + "_out"
            self.names.add(out)
            t = IntType(bits, True)
            self.add_tensor(out, self.tensors[src].shape, t, [l for l, _ in rng], [h for _, h in rng])
            self.layers.append(IntLayer(IntKind.REQUANT, name, (src,), out, (node.name,), {
                "requant": {"kind": "multshift", "bias": np.array(bias, np.int64), "mult": np.array(mult, np.int64),
                            "shift": np.zeros(C, np.int64), "zero_point": 0, "clip": False, "out_type": t},
                "input_type": self.tensors[src].type,
                "acc": {"range": [[int(a), int(b)] for a, b in zip(*self.ranges[src])]} if np.ndim(
                    self.ranges[src][0]) else {"range": [[int(lo[c]), int(hi[c])] for c in range(C)]}}))
            src = out
        return src

    # requantization -----------------------------------------------------------------------------
    def requant(self, node, x: Val, q: Quantizer, levels=None, narrow_to_range=False) -> Val:
        C = self.channels(x.src)
        lo, hi = self.ranges[x.src]
        lo = np.broadcast_to(lo, (C,)).astype(np.int64)
        hi = np.broadcast_to(hi, (C,)).astype(np.int64)
        if narrow_to_range:   # Trunc v1: codes follow the input range
            cl = [q.exact(c, _chain_val(x.chain, c, lo[c])) for c in range(C)]
            ch = [q.exact(c, _chain_val(x.chain, c, hi[c])) for c in range(C)]
            allc = cl + ch
            t = IntType(max(2, signed_bits(min(allc), max(allc))), True)
            q = Quantizer(q.kind, t, 1, q.out_chain, q.scale, q.zero_point, q.rounding_mode,
                          q.thresholds, q.bits, q.trunc_scale)
        chain = x.chain
        if len(chain) == 2 and isinstance(chain[1], Relu) and q.kind in ("quant", "qlinear") and \
                all(z <= q.out_type.min for z in q.zero_point):
            chain = chain[:1]       # the quantizer's clip at its minimum code already does the ReLU
        if q.levels > MAX_THRESHOLD_LEVELS_PREFERRED and q.kind in ("quant", "qlinear") and is_linear(chain) \
                and q.rounding_mode.upper() in ("ROUND", "HALF_EVEN") and q.step == 1 \
                and len(set(q.zero_point)) == 1:
            return self.multshift(node, Val(x.src, x.idx, chain), q, lo, hi)
        if q.levels > MAX_THRESHOLD_LEVELS:
            self.err(node, f"requantization to {q.out_type} needs {q.levels} thresholds per channel "
                           f"(more than {MAX_THRESHOLD_LEVELS}) and has no multiplier/shift form (non-linear "
                           "float ops or a rounding mode other than half-to-even); use at most 12-bit activations")
        t_arr, desc = derive_thresholds(x.chain, q, lo, hi)
        if levels is not None and t_arr.shape[1] > levels:
            # MultiThreshold codes stop at the number of thresholds: drop the unreachable ones
            t_arr = t_arr[:, :levels]
        name = self.uniq(node.name or "requant")
        out = name + "_out"
        self.names.add(out)
        out_t = q.out_type
        if levels is not None:
            ylo, yhi = [0] * C, [levels] * C
        else:
            ylo = [out_t.min] * C
            yhi = [out_t.max] * C
        lin_out = q.out_chain[0] if q.out_chain else None
        scale = tuple(float(v) for v in lin_out.a) if lin_out else (1.0,)
        zp = (tuple(float(-b / a) if a else 0.0 for a, b in zip(lin_out.a, lin_out.b)) if lin_out else (0.0,))
        if len(set(scale)) == 1 and len(set(zp)) == 1:
            scale, zp = scale[:1], zp[:1]
        self.add_tensor(out, self.tensors[x.src].shape, out_t, ylo, yhi, scale, zp)
        tb = max(signed_bits(int(t_arr.min(initial=0)), int(t_arr.max(initial=0))),
                 max(signed_bits(int(l) - 1, int(h) + 1) for l, h in zip(lo, hi)))
        rq = {"kind": "thresholds", "thresholds": t_arr, "descending": desc, "out_scale": int(q.step),
              "out_bias": int(out_t.min) if levels is None else 0, "out_type": out_t, "threshold_bits": int(tb)}
        self.layers.append(IntLayer(IntKind.REQUANT, name, (x.src,), out, (node.name,), {
            "requant": rq, "input_type": self.tensors[x.src].type, "onnx_tensor": node.outputs[0],
            "acc": {"range": [[int(a), int(b)] for a, b in zip(lo, hi)]}}))
        return Val(out, x.idx, q.out_chain)

    def multshift(self, node, x: Val, q: Quantizer, lo, hi) -> Val:
        """``code = round((acc + bias)·mult / 2^shift) + zero_point`` for wide outputs.

        Exact when ``A = a/s`` is a dyadic fraction representable in MULT_BITS bits and the
        offset is an integer multiple of A; otherwise the largest deviation from the exact
        rational value over the layer's range (in output code units) is recorded as a note.
        """
        C = self.channels(x.src)
        lin = linear_of(x.chain, C)
        A = [a / sc for a, sc in zip(lin.a, q.scale)]
        Bc = [b / sc for b, sc in zip(lin.b, q.scale)]
        mult, shift, bias, err = self._multshift_params(A, Bc, lo, hi)
        if err:
            # the integer bias is in accumulator units: pre-scale the accumulator by 2^PRESCALE
            # (an exact multshift layer) so that the bias has PRESCALE fraction bits
            k = PRESCALE_BITS
            lo2, hi2 = np.asarray(lo, np.int64) << k, np.asarray(hi, np.int64) << k
            name = self.uniq((node.name or "requant") + "_prescale")
            out = name + "_out"
            self.names.add(out)
            pt = IntType(signed_bits(min(int(lo2.min()), 0), max(int(hi2.max()), 0)), True)
            self.add_tensor(out, self.tensors[x.src].shape, pt, lo2, hi2)
            self.layers.append(IntLayer(IntKind.REQUANT, name, (x.src,), out, (node.name,), {
                "requant": {"kind": "multshift", "bias": np.zeros(C, np.int64), "mult": np.full(C, 1 << k, np.int64),
                            "shift": np.zeros(C, np.int64), "zero_point": 0, "clip": False, "out_type": pt},
                "input_type": self.tensors[x.src].type,
                "acc": {"range": [[int(a), int(b)] for a, b in zip(lo, hi)]}}))
            x = Val(out, x.idx, x.chain)
            A = [a / (1 << k) for a in A]
            lo, hi = lo2, hi2
            mult, shift, bias, err = self._multshift_params(A, Bc, lo, hi)
        t = q.out_type
        return self._finish_multshift(node, x, q, lo, hi, mult, shift, bias, err)

    @staticmethod
    def _multshift_params(A, Bc, lo, hi):
        import math
        mult, shift, bias, err = [], [], [], Fraction(0)
        for c in range(len(A)):
            if A[c] == 0:
                mult.append(0), shift.append(0), bias.append(0)
                err = max(err, abs(Bc[c] - round(Bc[c])))
                continue
            sh = max(0, MULT_BITS - 1 - math.floor(math.log2(abs(float(A[c])))))
            m = round(A[c] * (1 << sh))
            while sh > 0 and m % 2 == 0:
                m //= 2
                sh -= 1
            b = round(Bc[c] / (Fraction(m, 1 << sh)))
            approx = Fraction(m, 1 << sh)
            span = max(abs(int(lo[c])), abs(int(hi[c])))
            err = max(err, abs(approx - A[c]) * span + abs(b * approx - Bc[c]))
            mult.append(int(m)), shift.append(int(sh)), bias.append(int(b))
        return mult, shift, bias, err

    def _finish_multshift(self, node, x, q, lo, hi, mult, shift, bias, err):
        C = self.channels(x.src)
        t = q.out_type
        zp = int(q.zero_point[0]) if q.kind == "qlinear" else int(q.zero_point[0])
        if err:
            self.notes.append(f"{node.name}: requantization to {t} by multiplier/shift is not exact: the scale "
                              f"ratio is not a short dyadic fraction; max deviation {float(err):.3g} output codes "
                              "(differs from the float graph only where a value is that close to a rounding tie)")
        name = self.uniq(node.name or "requant")
        out = name + "_out"
        self.names.add(out)
        lin_out = q.out_chain[0] if q.out_chain else None
        scale = tuple(float(v) for v in lin_out.a) if lin_out else (1.0,)
        zpo = tuple(float(-b / a) if a else 0.0 for a, b in zip(lin_out.a, lin_out.b)) if lin_out else (0.0,)
        if len(set(scale)) == 1 and len(set(zpo)) == 1:
            scale, zpo = scale[:1], zpo[:1]
        self.add_tensor(out, self.tensors[x.src].shape, t, [t.min] * C, [t.max] * C, scale, zpo)
        rq = {"kind": "multshift", "bias": np.array(bias, np.int64), "mult": np.array(mult, np.int64),
              "shift": np.array(shift, np.int64), "zero_point": zp, "clip": True, "out_type": t}
        self.layers.append(IntLayer(IntKind.REQUANT, name, (x.src,), out, (node.name,), {
            "requant": rq, "input_type": self.tensors[x.src].type, "onnx_tensor": node.outputs[0],
            "acc": {"range": [[int(a), int(b)] for a, b in zip(lo, hi)]}, "max_error_codes": float(err)}))
        return Val(out, x.idx, q.out_chain)

    def input_quant(self, node, x: Raw, s, z, t: IntType, mode, qlinear=False, onnx_dtype=None) -> Val:
        if self.input_spec is not None:
            self.err(node, "the graph input is quantized twice")
        s = np.asarray(s, dtype=np.float32)
        z = np.asarray(z, dtype=np.float32)
        if any(isinstance(e, Relu) for e in x.chain):
            # round(max(x, 0)/s + 0) clipped to [min >= 0, max] equals the unclipped quantizer's
            # code: the ReLU is redundant exactly when the zero point is 0 and codes are unsigned
            if np.any(z != 0) or np.any(s <= 0) or t.min < 0 or qlinear:
                self.err(node, "ReLU before the input quantizer is only supported when the quantizer has "
                               "zero point 0, a positive scale and no negative codes")
        name = "input"
        self.names.add(name)
        shape = self.plan_input_shape
        onnx_shape = list(self.g.shapes[self.g.inputs[0]])
        C = shape[-1]
        # per-tensor scale: one value; otherwise the values in ONNX layout (without batch)
        full = tuple(onnx_shape)
        s_b = np.broadcast_to(s, np.broadcast_shapes(s.shape, full)).reshape(full)
        z_b = np.broadcast_to(z, np.broadcast_shapes(z.shape, full)).reshape(full)
        if self.g.batch_axis:
            s_b, z_b = s_b[0], z_b[0]
        else:
            onnx_shape = [1] + onnx_shape
        per_tensor = s.size == 1 and z.size == 1
        if z.size == 1 and float(np.ravel(z)[0]) != round(float(np.ravel(z)[0])) and not qlinear:
            pass
        self.input_spec = {
            "tensor": name, "onnx_name": self.g.inputs[0], "onnx_shape": onnx_shape,
            "scale": float(np.ravel(s)[0]) if per_tensor else s_b.tolist(),
            "zero_point": float(np.ravel(z)[0]) if per_tensor else z_b.tolist(),
            "type": t.to_json(), "rounding_mode": "ROUND" if qlinear else mode.upper(),
            "dtype": str(self.g_input_dtype),
        }
        if qlinear:
            self.input_spec["qlinear"] = True
        if x.pre:
            self.input_spec["pre"] = [{"op": op, "value": v} for op, v in x.pre]
        if onnx_dtype:
            self.onnx_dtypes[node.outputs[0]] = onnx_dtype
        self.add_tensor(name, shape, t, [t.min] * C, [t.max] * C, (float(np.ravel(s)[0]),), (float(np.ravel(z)[0]),))
        if qlinear:
            return Val(name, x.idx, ())
        if per_tensor:
            sc, zc = (frac(np.ravel(s)[0]),) * C, (frac(np.ravel(z)[0]),) * C
        else:
            v = Val(name, x.idx, ())
            sc = self.per_channel(node, v, s, "scale")
            zc = self.per_channel(node, v, z, "zero point")
        return Val(name, x.idx, (Affine(sc, tuple(-a * b for a, b in zip(sc, zc))),))

    # output ----------------------------------------------------------------------------------
    def finish(self) -> IntGraph:
        g = self.g
        out_name = g.outputs[0]
        v = self.env.get(out_name)
        trailing = []
        if isinstance(v, Tail):
            trailing, v = list(v.ops), v.val
        if not isinstance(v, Val):
            raise UserError(f"{g.source}: graph output '{out_name}' does not depend on the input")
        kind = "argmax" if self.layers and self.layers[-1].kind is IntKind.ARGMAX and \
            self.layers[-1].output == v.src else "codes"
        C = self.channels(v.src)
        dequant = None
        tail = []
        chain = v.chain
        if chain:
            lin = chain[0]
            if not isinstance(lin, Affine):
                lin = Affine((Fraction(1),) * C, (Fraction(0),) * C)
            else:
                chain = chain[1:]
            for e in chain:
                if isinstance(e, Relu):
                    tail.append({"op": "Relu"})
                elif isinstance(e, Clip):
                    tail.append({"op": "Clip", "min": None if e.lo is None else float(e.lo),
                                 "max": None if e.hi is None else float(e.hi)})
                else:
                    tail.append({"op": "Affine", "a": [float(x) for x in e.a], "b": [float(x) for x in e.b]})
            dequant = {"scale": [float(a) for a in lin.a],
                       "zero_point": [float(-b / a) if a else 0.0 for a, b in zip(lin.a, lin.b)],
                       "offset": [float(b) for b in lin.b]}
        if out_name in self.output_dequant:
            s_full, z_full = self.output_dequant[out_name]
            if self.g.batch_axis:
                s_full, z_full = s_full[0], z_full[0]
            dequant = {"layout": "onnx", "scale": s_full.tolist(), "zero_point": z_full.tolist()}
            self.onnx_dtypes[out_name] = "float32"
        out_dtype = self.onnx_dtypes.get(out_name)
        if out_dtype is None:
            out_dtype = "float32" if (chain or dequant is not None) else "int64"
        output = {"tensor": v.src, "onnx_name": out_name, "kind": kind, "dequant": dequant,
                  "trailing": tail + trailing, "onnx_shape": [1] + list(v.idx.shape),
                  "onnx_dtype": out_dtype, "index": v.idx.reshape(-1)}
        spec = dict(self.input_spec)
        return IntGraph(tuple(self.layers), dict(self.tensors), spec, output, tuple(self.notes))


def finn_type(name):
    """A FINN datatype name (UINT4, INT8, BINARY, TERNARY) -> IntType, None if absent/float."""
    import re
    if not name:
        return None
    m = re.fullmatch(r"(U?)INT(\d+)", name)
    if m:
        return IntType(int(m.group(2)), not m.group(1))
    return {"BINARY": IntType(1, False), "TERNARY": IntType(2, True, True),
            "BIPOLAR": IntType(2, True, True)}.get(name)


def _chain_val(chain, c, acc):
    from .quantizers import chain_exact
    return chain_exact(chain, c, int(acc))


def _t1(a):
    return a


def clip_type(lo, hi, within: IntType) -> IntType | None:
    """The integer type whose range is exactly a Clip's ``[lo, hi]`` (None = unbounded)
    intersected with ``within`` (the stored type): Clip(-7, 7) on int8 -> int4 narrow,
    Clip(-8, 7) -> int4, Clip(0, 15) on uint8 -> uint4. None when that range is no whole
    integer type (e.g. [0, 10])."""
    lo = within.min if lo is None else max(within.min, float(lo))
    hi = within.max if hi is None else min(within.max, float(hi))
    if lo != round(lo) or hi != round(hi):
        return None
    for bits in range(1, within.bits + 1):
        for signed in (False, True):
            for narrow in (False, True):
                if narrow and bits == 1:
                    continue
                c = IntType(bits, signed, narrow)
                if (c.min, c.max) == (lo, hi):
                    return c
    return None


def _dtype_type(node, dt, low) -> IntType:
    dt = np.dtype(dt)
    if not np.issubdtype(dt, np.integer):
        raise UserError(f"{node.op.value} '{node.name}': expected an integer type, got {dt}")
    bits = dt.itemsize * 8
    return IntType(bits, np.issubdtype(dt, np.signedinteger))


def _weight_type(w: QConst, zw, wq=None) -> IntType:
    if wq is None:
        zero = zw is None or np.all(np.asarray(zw) == 0)
        if zero:
            return w.type
        wq = w.codes
    wq = np.asarray(wq)
    if np.all(wq >= w.type.min) and np.all(wq <= w.type.max):
        return w.type
    return IntType(signed_bits(int(wq.min()), int(wq.max())), True)


def lower(g: Graph, input_type: tuple[IntType, float] | None = None) -> IntGraph:
    """``input_type``: (code type, scale) declared for a float graph input (``--input-type``)."""
    low = _Lowering(g)
    low.declared_input = input_type
    low.onnx_dtypes = {}
    low.output_dequant = {}
    low.g_input_dtype = np.dtype(g.input_dtype)
    ig = low.run()
    ig.verify()
    return ig
