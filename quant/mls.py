"""MLS (multi-level scaling) quantization for training, after Zhong et al., "Exploring the
Potential of Low-bit Training of Convolutional Neural Networks" (2020).

The format, its codes, the numpy quantizer and the integer dot product are defined once in
``compiler/mls.py`` (numpy only, so that the compiler and the hardware generators share
them); this module re-exports them and adds the same quantizer on PyTorch tensors and the
autograd functions for quantization-aware training:

* :func:`quantize_torch` / :func:`dequantize_torch`: dynamic MLS quantization of a torch
  tensor, bit-identical codes to :func:`quantize` (numpy) for nearest rounding;
* :class:`MLSQuantize`: forward quantizes (weights or activations, nearest rounding), backward
  passes the gradient straight through (the straight-through estimator);
* :class:`MLSGradQuantize`: forward is the identity, backward quantizes the gradient
  flowing to the activation with stochastic rounding (the paper quantizes the error
  tensors of every convolution; an optional seeded ``torch.Generator`` makes it repeatable);
* :func:`mls_act` and :class:`MLSQuant` combine both for an activation.
"""
from __future__ import annotations

import torch

from accumulus.compiler.mls import (DEFAULT_FORMAT, FORMAT_1M2E, FORMAT_4M2E, MLSCodes, MLSDotResult, MLSFormat,
                                    dequantize, dequantize_exact, element_integers, group_shape, mls_conv2d,
                                    mls_linear, quantize, worst_case_codes)

__all__ = ["MLSFormat", "MLSCodes", "MLSDotResult", "DEFAULT_FORMAT", "FORMAT_1M2E", "FORMAT_4M2E",
           "quantize", "dequantize", "dequantize_exact", "element_integers", "group_shape",
           "mls_conv2d", "mls_linear", "worst_case_codes", "quantize_torch", "dequantize_torch", "to_codes",
           "fake_quantize", "MLSQuantize", "MLSGradQuantize", "mls_act", "MLSQuant"]


def _groups(a: torch.Tensor, group_size: int) -> torch.Tensor:
    outer, c = a.shape[0], a.shape[1]
    r = a.reshape(outer, c, -1)
    pad = (-c) % group_size
    if pad:
        r = torch.cat([r, r.new_zeros(outer, pad, r.shape[2])], dim=1)
    return r.reshape(outer, -1, group_size * r.shape[2])


def _broadcast_groups(g: torch.Tensor, shape, group_size: int) -> torch.Tensor:
    per_channel = g.repeat_interleave(group_size, dim=1)[:, :shape[1]]
    return per_channel.reshape(tuple(per_channel.shape) + (1,) * (len(shape) - 2)).expand(shape)


def _floor_log2(y: torch.Tensor) -> torch.Tensor:
    _, p = torch.frexp(y)
    return p.to(torch.int64) - 1


def quantize_torch(x: torch.Tensor, fmt: MLSFormat = DEFAULT_FORMAT, rounding: str = "nearest",
                   generator: torch.Generator | None = None) -> dict:
    """Dynamic MLS quantization of a torch tensor (outer, channels, ...), as
    :func:`accumulus.compiler.mls.quantize` does in numpy (same algorithm, same codes).

    Returns a dict of int64 tensors ``sign, exponent, mantissa, zero, group_exponent`` and the
    float ``tensor_scale``. ``rounding="stochastic"`` draws from ``generator`` when given.
    """
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    group_shape(x.shape, fmt.group_size)
    x32 = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x32).all()):
        raise ValueError("MLS quantize: the tensor holds inf or NaN; the tensor scale is max|x| and needs finite values")
    a = x32.abs().to(torch.float64)
    s_t = float(a.max()) if a.numel() else 0.0
    if s_t == 0.0:
        s_t = 1.0
    q = a / s_t
    gmax = _groups(q, fmt.group_size).amax(dim=2)
    nz = gmax > 0
    g = torch.where(nz, (-_floor_log2(torch.where(nz, gmax, torch.ones_like(gmax)))).clamp(0, fmt.max_group_exponent),
                    torch.zeros_like(gmax, dtype=torch.int64))
    y_top = gmax * torch.exp2(g.to(torch.float64))
    scale = 1 << fmt.mantissa_bits
    if rounding == "nearest":
        pos = y_top > 0
        e_top = torch.where(pos, -_floor_log2(torch.where(pos, y_top, torch.ones_like(y_top))), torch.zeros_like(g))
        mant = torch.round((y_top * torch.exp2(e_top.to(torch.float64)) - 1.0) * scale)
        overflow = (e_top == 0) & (mant == scale)
    else:
        overflow = y_top > fmt.element_max
    g = torch.where(overflow & (g > 0), g - 1, g)
    y = q * torch.exp2(_broadcast_groups(g, q.shape, fmt.group_size).to(torch.float64))

    emax = fmt.max_exponent
    pos = y > 0
    e = torch.where(pos, -_floor_log2(torch.where(pos, y, torch.ones_like(y))), torch.zeros_like(y, dtype=torch.int64))
    normal = pos & (e <= emax)
    e = torch.where(normal, e, torch.full_like(e, emax))
    frac = (y * torch.exp2(e.to(torch.float64)) - 1.0) * scale
    if rounding == "nearest":
        m = torch.round(frac)                                   # half to even, as numpy's rint
        under = pos & ~normal & (y > fmt.element_min / 2)
    else:
        u = torch.rand(y.shape, generator=generator, dtype=torch.float64, device=y.device)
        m = torch.floor(frac + u)
        under = pos & ~normal & (u < y / fmt.element_min)
    m = torch.where(normal, m, torch.zeros_like(m)).to(torch.int64)
    carry = normal & (m == scale)
    e = torch.where(carry, e - 1, e)
    m = torch.where(carry, torch.zeros_like(m), m)
    zero = ~(normal | under)
    e = torch.where(zero, torch.zeros_like(e), e)
    m = torch.where(zero, torch.zeros_like(m), m)
    sign = torch.where(zero, torch.zeros_like(e), torch.signbit(x32).to(torch.int64))
    g = torch.where(_groups((~zero).to(torch.int64), fmt.group_size).amax(dim=2) > 0, g, torch.zeros_like(g))
    return {"sign": sign, "exponent": e, "mantissa": m, "zero": zero.to(torch.int64), "group_exponent": g,
            "tensor_scale": s_t}


def dequantize_torch(codes: dict, fmt: MLSFormat, dtype=torch.float32) -> torch.Tensor:
    """Values of :func:`quantize_torch` codes (computed exactly in float64, then cast)."""
    shape = codes["sign"].shape
    g = _broadcast_groups(codes["group_exponent"], shape, fmt.group_size)
    mag = ((1 << fmt.mantissa_bits) + codes["mantissa"]).to(torch.float64) * torch.exp2(
        -(codes["exponent"] + g + fmt.mantissa_bits).to(torch.float64))
    val = torch.where(codes["sign"].bool(), -mag, mag)
    val = torch.where(codes["zero"].bool(), torch.zeros_like(val), val)
    return (val * codes["tensor_scale"]).to(dtype)


def to_codes(codes: dict, fmt: MLSFormat) -> MLSCodes:
    """The numpy :class:`MLSCodes` of :func:`quantize_torch`'s result."""
    return MLSCodes(*(codes[k].cpu().numpy() for k in ("sign", "exponent", "mantissa", "zero", "group_exponent")),
                    codes["tensor_scale"], fmt)


def fake_quantize(x: torch.Tensor, fmt: MLSFormat = DEFAULT_FORMAT, rounding: str = "nearest",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype (no gradient)."""
    return dequantize_torch(quantize_torch(x, fmt, rounding, generator), fmt, x.dtype)


class MLSQuantize(torch.autograd.Function):
    """Forward: MLS quantization (nearest rounding) of weights or activations; backward: the
    straight-through estimator (the incoming gradient unchanged)."""

    @staticmethod
    def forward(ctx, x, fmt):
        return fake_quantize(x, fmt, "nearest")

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class MLSGradQuantize(torch.autograd.Function):
    """Forward: identity; backward: the gradient w.r.t. the activation is MLS-quantized with
    stochastic rounding (``generator`` seeds it; ``None`` uses torch's default generator)."""

    @staticmethod
    def forward(ctx, x, fmt, generator):
        ctx.fmt, ctx.generator = fmt, generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if grad.ndim < 2:
            raise ValueError(f"MLS gradient quantization needs an (outer, channels, ...) gradient, got shape {tuple(grad.shape)}")
        return fake_quantize(grad, ctx.fmt, "stochastic", ctx.generator), None, None


def mls_act(x: torch.Tensor, fmt: MLSFormat = DEFAULT_FORMAT, grad_fmt: MLSFormat | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """An activation in MLS: forward quantized (straight-through), and the gradient reaching
    ``x`` quantized to ``grad_fmt`` (default ``fmt``) with stochastic rounding."""
    return MLSQuantize.apply(MLSGradQuantize.apply(x, grad_fmt or fmt, generator), fmt)


class MLSQuant(torch.nn.Module):
    """Module form of :func:`mls_act` (``quantize_grad=False`` leaves gradients in float)."""

    def __init__(self, fmt: MLSFormat = DEFAULT_FORMAT, grad_fmt: MLSFormat | None = None,
                 quantize_grad: bool = True, seed: int | None = None):
        super().__init__()
        if not isinstance(fmt, MLSFormat):
            raise TypeError(f"MLSQuant.fmt must be an MLSFormat, got {fmt!r}")
        self.fmt, self.grad_fmt, self.quantize_grad = fmt, grad_fmt or fmt, quantize_grad
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, x):
        if self.quantize_grad and torch.is_grad_enabled() and x.requires_grad:
            x = MLSGradQuantize.apply(x, self.grad_fmt, self.generator)
        return MLSQuantize.apply(x, self.fmt)

    def extra_repr(self) -> str:
        return f"fmt={self.fmt.name}, grad_fmt={self.grad_fmt.name}, quantize_grad={self.quantize_grad}"
