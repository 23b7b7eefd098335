"""Shape rules for the accepted ops (batch axis included); errors name the node."""
from __future__ import annotations

import numpy as np

from accumulus.errors import UserError

from ..ir import Node, Op

ELEMENTWISE = {Op.QUANT, Op.BIPOLAR_QUANT, Op.TRUNC, Op.MULTITHRESHOLD, Op.RELU, Op.CLIP, Op.BATCHNORM,
               Op.IDENTITY, Op.SOFTMAX, Op.QUANTIZE_LINEAR, Op.DEQUANTIZE_LINEAR, Op.QLINEAR_SOFTMAX}


def _shape_of(name: str, shapes, consts) -> tuple[int, ...]:
    if name in shapes:
        return shapes[name]
    return tuple(np.asarray(consts[name]).shape)


def _pool_out(n: Node, x, kernel, strides, pads, dil=None, ceil=False):
    nd = len(kernel)
    dil = dil or [1] * nd
    if len(strides) != nd or len(pads) != 2 * nd or len(dil) != nd:
        raise UserError(f"{n.op.value} '{n.name}': kernel {kernel}, strides {strides}, pads {pads} disagree in rank")
    if min(strides) < 1 or min(dil) < 1 or min(kernel) < 1 or min(pads) < 0:
        raise UserError(f"{n.op.value} '{n.name}': kernel {kernel}, strides {strides}, dilations {dil} must be "
                        f">= 1 and pads {pads} >= 0")
    out = []
    for i in range(nd):
        eff = (kernel[i] - 1) * dil[i] + 1
        num = x[2 + i] + pads[i] + pads[i + nd] - eff
        if num < 0:
            raise UserError(f"{n.op.value} '{n.name}': window {kernel} larger than the padded input {x[2:]}")
        o = (-(-num // strides[i]) if ceil else num // strides[i]) + 1
        out.append(o)
    return out


def _auto_pads(n: Node, x, kernel, strides, dil=None):
    auto = n.attr("auto_pad", "NOTSET")
    nd = len(kernel)
    pads = list(n.attr("pads", [0] * 2 * nd))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        dil = dil or [1] * nd
        pads = [0] * 2 * nd
        for i in range(nd):
            o = -(-x[2 + i] // strides[i])
            total = max(0, (o - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - x[2 + i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * 2 * nd
    return pads


def conv_geometry(n: Node, x, wshape):
    """(kernel, strides, pads, dilations, groups) with auto_pad resolved."""
    kernel = list(n.attr("kernel_shape", wshape[2:]))
    nd = len(kernel)
    strides = list(n.attr("strides", [1] * nd))
    dil = list(n.attr("dilations", [1] * nd))
    pads = _auto_pads(n, x, kernel, strides, dil)
    return kernel, strides, pads, dil, int(n.attr("group", 1))


def pool_geometry(n: Node, x):
    kernel = list(n.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(n.attr("strides", [1] * nd))
    dil = list(n.attr("dilations", [1] * nd))
    pads = _auto_pads(n, x, kernel, strides, dil)
    return kernel, strides, pads, dil


def infer(n: Node, shapes, consts) -> list[tuple[int, ...]]:
    try:
        return _infer(n, shapes, consts)
    except UserError:
        raise
    except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError) as exc:
        raise UserError(f"{n.op.value} '{n.name}': inconsistent shapes ({str(exc)[:120]})") from None


def _infer(n: Node, shapes, consts):
    ins = [_shape_of(i, shapes, consts) if i else None for i in n.inputs]
    x = ins[0]
    op = n.op
    if op in ELEMENTWISE:
        if op is Op.MULTITHRESHOLD and len(x) == 0:
            raise UserError(f"MultiThreshold '{n.name}': scalar input")
        return [x]
    if op in (Op.ADD, Op.MUL, Op.DIV, Op.SUB, Op.QLINEAR_ADD):
        other = ins[3] if op is Op.QLINEAR_ADD else ins[1]
        try:
            return [tuple(np.broadcast_shapes(x, other))]
        except ValueError:
            raise UserError(f"{op.value} '{n.name}': shapes {x} and {other} do not broadcast") from None
    if op in (Op.MATMUL, Op.MATMUL_INTEGER, Op.QLINEAR_MATMUL):
        b = ins[3] if op is Op.QLINEAR_MATMUL else ins[1]
        try:
            out = np.matmul(np.empty(x, dtype=np.int8), np.empty(b, dtype=np.int8)).shape
        except ValueError:
            raise UserError(f"{op.value} '{n.name}': shapes {x} and {b} do not multiply") from None
        return [tuple(out)]
    if op in (Op.GEMM, Op.QGEMM):
        b = ins[3] if op is Op.QGEMM else ins[1]
        k1 = x[0] if n.attr("transA", 0) else x[-1]
        m = x[1] if n.attr("transA", 0) else x[0]
        k2, nn = (b[1], b[0]) if n.attr("transB", 0) else (b[0], b[1])
        if len(x) != 2 or len(b) != 2 or k1 != k2:
            raise UserError(f"{op.value} '{n.name}': shapes {x} and {b} do not multiply")
        return [(m, nn)]
    if op in (Op.CONV, Op.CONV_INTEGER, Op.QLINEAR_CONV):
        w = ins[3] if op is Op.QLINEAR_CONV else ins[1]
        if len(x) != 4 or len(w) != 4:
            raise UserError(f"{op.value} '{n.name}': only 2-D convolution (NCHW) is supported, got input {x}")
        kernel, strides, pads, dil, groups = conv_geometry(n, x, w)
        if x[1] != w[1] * groups or w[0] % groups:
            raise UserError(f"{op.value} '{n.name}': weight {w} does not fit input channels {x[1]} with group={groups}")
        oh, ow = _pool_out(n, x, kernel, strides, pads, dil)
        return [(x[0], w[0], oh, ow)]
    if op in (Op.MAXPOOL, Op.AVGPOOL):
        if len(x) != 4:
            raise UserError(f"{op.value} '{n.name}': only 2-D pooling (NCHW) is supported, got {x}")
        kernel, strides, pads, dil = pool_geometry(n, x)
        oh, ow = _pool_out(n, x, kernel, strides, pads, dil, bool(n.attr("ceil_mode", 0)))
        return [(x[0], x[1], oh, ow)] + ([(x[0], x[1], oh, ow)] if len(n.outputs) > 1 else [])
    if op is Op.GLOBALAVGPOOL:
        return [tuple(x[:2]) + (1,) * (len(x) - 2)]
    if op is Op.FLATTEN:
        axis = n.attr("axis", 1)
        axis = axis + len(x) if axis < 0 else axis
        return [(int(np.prod(x[:axis], dtype=np.int64)), int(np.prod(x[axis:], dtype=np.int64)))]
    if op is Op.RESHAPE:
        if n.inputs[1] not in consts:
            raise UserError(f"Reshape '{n.name}': the target shape is not constant")
        target = [int(v) for v in np.asarray(consts[n.inputs[1]]).reshape(-1)]
        if not n.attr("allowzero", 0):
            target = [x[i] if v == 0 else v for i, v in enumerate(target)]
        return [np.empty(x, dtype=np.int8).reshape(target).shape]
    if op is Op.TRANSPOSE:
        perm = n.attr("perm", tuple(reversed(range(len(x)))))
        return [tuple(x[p] for p in perm)]
    if op in (Op.SQUEEZE, Op.UNSQUEEZE):
        axes = n.attr("axes")
        if axes is None and len(n.inputs) > 1 and n.inputs[1]:
            axes = [int(v) for v in np.asarray(consts[n.inputs[1]]).reshape(-1)]
        a = np.empty(x, dtype=np.int8)
        if op is Op.SQUEEZE:
            return [np.squeeze(a, axis=tuple(axes) if axes is not None else None).shape]
        return [np.expand_dims(a, tuple(axes)).shape]
    if op is Op.DEPTH_TO_SPACE:
        b = int(n.attr("blocksize", 0))
        if len(x) != 4 or b < 1 or x[1] % (b * b):
            raise UserError(f"DepthToSpace '{n.name}': blocksize {b} does not divide the channels of {x}")
        return [(x[0], x[1] // (b * b), x[2] * b, x[3] * b)]
    if op is Op.RESIZE:
        return [resize_shape(n, x, consts)]
    if op is Op.ARGMAX:
        axis = n.attr("axis", 0)
        out = list(x)
        if n.attr("keepdims", 1):
            out[axis] = 1
        else:
            out.pop(axis)
        return [tuple(out)]
    if op is Op.TOPK:
        axis = n.attr("axis", -1)
        out = list(x)
        k = np.asarray(consts.get(n.inputs[1], [1])).reshape(-1)
        out[axis] = int(k[0])
        return [tuple(out), tuple(out)]
    raise UserError(f"{op.value} '{n.name}': no shape rule")


def resize_shape(n: Node, x, consts) -> tuple[int, ...]:
    """Output shape of a Resize from its constant ``scales`` or ``sizes`` (opset 11+ inputs)."""
    def const(k):
        name = n.inputs[k] if len(n.inputs) > k else ""
        if not name:
            return None
        if name not in consts:
            raise UserError(f"Resize '{n.name}': input {k} ('{name}') is not constant")
        v = np.asarray(consts[name]).reshape(-1)
        return v if v.size else None
    if len(n.inputs) == 2:  # opset 10: X, scales
        scales, sizes = const(1), None
    else:
        scales, sizes = const(2), const(3)
    if sizes is not None:
        out = tuple(int(v) for v in sizes)
    elif scales is not None:
        out = tuple(int(np.floor(d * float(s))) for d, s in zip(x, scales))
    else:
        raise UserError(f"Resize '{n.name}': neither scales nor sizes is given")
    if len(out) != len(x):
        raise UserError(f"Resize '{n.name}': {len(out)} scales/sizes for a rank-{len(x)} input")
    return out
