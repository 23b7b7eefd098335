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
           "fake_quantize", "MLSQuantize", "MLSGradQuantize", "mls_act", "MLSQuant",
           "MLSLinear", "MLSConv2d", "MLSMLP", "MLSCNN", "build_mls_model"]


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
                   generator: torch.Generator | None = None, per_sample: bool = False) -> dict:
    """Dynamic MLS quantization of a torch tensor (outer, channels, ...), as
    :func:`accumulus.compiler.mls.quantize` does in numpy (same algorithm, same codes).

    Returns a dict of int64 tensors ``sign, exponent, mantissa, zero, group_exponent`` and the
    float ``tensor_scale``. ``rounding="stochastic"`` draws from ``generator`` when given.
    ``per_sample=True`` gives every index of axis 0 its own tensor scale (``tensor_scale`` is
    then a float64 tensor of shape ``(outer, 1, ...)``): the codes of sample ``i`` are those of
    quantizing ``x[i:i+1]`` alone, so an activation's codes do not depend on its batch.
    """
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    group_shape(x.shape, fmt.group_size)
    x32 = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x32).all()):
        raise ValueError("MLS quantize: the tensor holds inf or NaN; the tensor scale is max|x| and needs finite values")
    a = x32.abs().to(torch.float64)
    if per_sample:
        s_t = a.amax(dim=tuple(range(1, a.ndim)), keepdim=True) if a.numel() else torch.ones((a.shape[0],) + (1,) * (a.ndim - 1), dtype=torch.float64)
        s_t = torch.where(s_t == 0, torch.ones_like(s_t), s_t)
    else:
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
                  generator: torch.Generator | None = None, per_sample: bool = False) -> torch.Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype (no gradient)."""
    return dequantize_torch(quantize_torch(x, fmt, rounding, generator, per_sample), fmt, x.dtype)


class MLSQuantize(torch.autograd.Function):
    """Forward: MLS quantization (nearest rounding) of weights or activations; backward: the
    straight-through estimator (the incoming gradient unchanged)."""

    @staticmethod
    def forward(ctx, x, fmt, per_sample=False):
        return fake_quantize(x, fmt, "nearest", per_sample=per_sample)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


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


# -- MLS layers and models for quantization-aware training ------------------------------------
# After Zhong et al.: every convolution / fully connected layer computes on MLS weights and
# MLS inputs (nearest rounding, straight-through gradients), and the error tensor of its
# output (the gradient dL/dy that the backward pass convolves into dL/dx and dL/dW) is
# quantized to MLS with stochastic rounding. BatchNorm, ReLU and pooling stay in float, as
# in the paper. Weights have one tensor scale; activations have one per sample
# (``per_sample=True``, so inference does not depend on the batch); gradients one per batch.
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


class _MLSLayerMixin:
    def _setup_mls(self, fmt: MLSFormat, grad_fmt: MLSFormat | None, quantize_grad: bool):
        if not isinstance(fmt, MLSFormat):
            raise TypeError(f"{type(self).__name__}.fmt must be an MLSFormat, got {fmt!r}")
        self.fmt, self.grad_fmt, self.quantize_grad = fmt, grad_fmt or fmt, quantize_grad

    def _grad(self, y):
        if self.quantize_grad and torch.is_grad_enabled() and y.requires_grad:
            y = MLSGradQuantize.apply(y, self.grad_fmt, None)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mls={self.fmt.name}, grad_mls={self.grad_fmt.name}, quantize_grad={self.quantize_grad}"


class MLSLinear(_MLSLayerMixin, nn.Linear):
    """A bias-free linear layer on MLS weights and inputs.

    ``group_view`` is the input's per-sample shape when the layer reads an unflattened tensor
    (a CNN's classifier reads ``(C, H, W)``): input and weight (viewed as ``(N, C, H, W)``)
    are grouped along ``C`` over ``H x W``, as a convolution's would be, and the input is
    flattened after quantization. ``None``: a flat ``(B, K)`` input grouped along ``K``.
    """

    def __init__(self, in_features: int, out_features: int, fmt: MLSFormat = DEFAULT_FORMAT,
                 grad_fmt: MLSFormat | None = None, quantize_grad: bool = True, group_view=None):
        super().__init__(in_features, out_features, bias=False)
        self._setup_mls(fmt, grad_fmt, quantize_grad)
        self.group_view = tuple(int(v) for v in group_view) if group_view is not None else (in_features,)
        if int(torch.tensor(self.group_view).prod()) != in_features:
            raise ValueError(f"MLSLinear: group_view {self.group_view} does not hold {in_features} features")

    def weight_view(self) -> torch.Tensor:
        return self.weight.view((self.out_features,) + self.group_view)

    def quantized_weight(self) -> torch.Tensor:
        return MLSQuantize.apply(self.weight_view(), self.fmt).reshape(self.weight.shape)

    def forward(self, x):
        if tuple(x.shape[1:]) != self.group_view:
            raise ValueError(f"MLSLinear expects inputs of shape (B, {', '.join(map(str, self.group_view))}), "
                             f"got {tuple(x.shape)}")
        xq = MLSQuantize.apply(x, self.fmt, True).flatten(1)
        return self._grad(F.linear(xq, self.quantized_weight()))


class MLSConv2d(_MLSLayerMixin, nn.Conv2d):
    """A bias-free 2-D convolution on MLS weights (groups along input channels over the
    kernel window) and MLS inputs (groups along channels over the image)."""

    def __init__(self, cin: int, cout: int, kernel_size=3, padding=1, stride=1, fmt: MLSFormat = DEFAULT_FORMAT,
                 grad_fmt: MLSFormat | None = None, quantize_grad: bool = True):
        super().__init__(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self._setup_mls(fmt, grad_fmt, quantize_grad)

    def quantized_weight(self) -> torch.Tensor:
        return MLSQuantize.apply(self.weight, self.fmt)

    def forward(self, x):
        xq = MLSQuantize.apply(x, self.fmt, True)
        return self._grad(F.conv2d(xq, self.quantized_weight(), None, self.stride, self.padding))


class MLSMLP(nn.Module):
    """``flatten -> [MLS linear -> ReLU]* -> MLS linear`` (logits): quant/models.QuantMLP's
    architecture and parameter names with MLS layers (no input quantizer: the first layer
    quantizes the pixels to MLS itself)."""

    def __init__(self, cfg, fmt: MLSFormat):
        super().__init__()
        import math

        self.config = cfg
        self.input_quant = nn.Identity()
        self.flatten = nn.Flatten()
        widths = [int(math.prod(cfg.in_shape))] + list(cfg.widths()) + [cfg.num_classes]
        self.layers = nn.ModuleList(MLSLinear(a, b, fmt) for a, b in zip(widths[:-1], widths[1:]))
        self.acts = nn.ModuleList(nn.ReLU() for _ in widths[1:-1])

    def forward(self, x):
        x = self.flatten(x)
        for layer, act in zip(self.layers[:-1], self.acts):
            x = act(layer(x))
        return self.layers[-1](x)


class MLSCNN(nn.Module):
    """quant/models.QuantCNN's architecture and parameter names (conv3x3 c1, c2, maxpool2,
    c3, maxpool2, fc; BatchNorm after each conv) with MLS convolutions and classifier; the
    classifier's input is quantized before the flatten (groups along its channels)."""

    def __init__(self, cfg, fmt: MLSFormat):
        super().__init__()
        self.config = cfg
        c1, c2, c3 = (max(1, int(round(c * cfg.width_mult))) for c in cfg.hidden)
        cin, h, w = cfg.in_shape
        self.input_quant = nn.Identity()
        self.conv1, self.bn1, self.act1 = MLSConv2d(cin, c1, fmt=fmt), nn.BatchNorm2d(c1), nn.ReLU()
        self.conv2, self.bn2, self.act2 = MLSConv2d(c1, c2, fmt=fmt), nn.BatchNorm2d(c2), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv3, self.bn3, self.act3 = MLSConv2d(c2, c3, fmt=fmt), nn.BatchNorm2d(c3), nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = MLSLinear(c3 * (h // 4) * (w // 4), cfg.num_classes, fmt, group_view=(c3, h // 4, w // 4))

    def forward(self, x):
        x1 = self.act1(self.bn1(self.conv1(x)))
        x2 = self.act2(self.bn2(self.conv2(x1)))
        x3 = self.act3(self.bn3(self.conv3(self.pool1(x2))))
        return self.fc(self.pool2(x3))


def build_mls_model(cfg) -> nn.Module:
    """The MLS model of a ``quant="mls"`` :class:`accumulus.quant.models.ModelConfig`."""
    from accumulus.errors import UserError

    fmt = MLSFormat.parse(cfg.mls or "1,2,4,2")
    if cfg.model == "mlp":
        return MLSMLP(cfg, fmt)
    if cfg.model == "cnn":
        return MLSCNN(cfg, fmt)
    raise UserError(f"--quant mls supports --model mlp and cnn, got '{cfg.model}'")
