"""The one module that configures Brevitas quantizers (STYLE.md: no injector magic elsewhere).

Everything Brevitas-specific that :mod:`accumulus.quant.models` needs is built here:

* :func:`input_quant_layer`: the graph input's quantizer with a *fixed* scale, so that
  the hardware's input code is the raw pixel (TOOLCHAIN.md: ``scaling_impl_type = CONST``
  and ``scaling_init`` is the largest value, not the scale);
* :func:`act_quant_layer`: hidden activations, ReLU folded into an unsigned quantizer
  with a learned per-tensor scale (``QuantReLU``), or an unsigned ``QuantIdentity``;
* :func:`weight_quant_kwargs`: layer kwargs for weight quantization ``float`` (none),
  ``int`` (per-channel QAT), ``a2q`` (``Int8AccumulatorAwareWeightQuant``) and ``a2q+``
  (``Int8AccumulatorAwareZeroCenterWeightQuant``), with ``weight_bit_width`` and
  ``weight_accumulator_bit_width``;
* :func:`apply_ep_init`: Euclidean-projection init (A2Q+ paper). Without it a dense
  default init rounds every weight to zero at low P and training is dead (TOOLCHAIN.md).
* ``wrpn``: Mishra et al., "WRPN: Wide Reduced-Precision Networks" (ICLR 2018), built from
  Brevitas' own constant-scale fragments (those of ``SignedTernaryWeightPerTensorConst``):
  :func:`wrpn_act_layer` and ``weight_quant_kwargs("wrpn", k)``, see :class:`WRPNWeight`
  and :class:`WRPNAct` for the grids; :func:`wrpn_init` fills the fixed weight range.
"""
from __future__ import annotations

import warnings

# Brevitas warns on import that an optional CUDA kernel package is absent; it is never used here.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

import numpy as np  # noqa: E402
import torch
from torch import nn

from brevitas.core.function_wrapper import InplaceTensorClampSte, TensorClamp
from brevitas.core.scaling import AccumulatorAwareParameterPreScaling, ScalingImplType
from brevitas.nn import QuantIdentity, QuantReLU
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from brevitas.quant import Int8WeightPerChannelFloat, Uint8ActPerTensorFixedPoint, Uint8ActPerTensorFloat
from brevitas.quant.base import NarrowIntQuant, PerTensorConstScaling2bit, UintQuant
from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
from brevitas.quant.scaled_int import (
    Int8AccumulatorAwareWeightQuant,
    Int8AccumulatorAwareZeroCenterWeightQuant,
)

from .data import InputQuant

__all__ = [
    "QUANT_MODES", "input_quant_layer", "act_quant_layer", "highway_quant_layer", "weight_quant_kwargs",
    "project_l1_ball", "apply_ep_init", "is_a2q_layer", "WRPNWeight", "WRPNAct", "wrpn_act_layer",
    "wrpn_init",
]

QUANT_MODES = ("float", "int", "a2q", "a2q+", "wrpn")


class _FixedScaleUintInput(Uint8ActPerTensorFloat):
    """Unsigned input quantizer whose scale never trains (``scaling_init`` set per dataset)."""

    scaling_impl_type = ScalingImplType.CONST


class _IntWeight(Int8WeightPerChannelFloat):
    """Per-channel, narrow-range signed weights (the same integer grid as the A2Q quantizers)."""


class _A2QWeight(Int8AccumulatorAwareWeightQuant):
    pass


class _A2QPlusWeight(Int8AccumulatorAwareZeroCenterWeightQuant):
    pass


class WRPNWeight(NarrowIntQuant, PerTensorConstScaling2bit, WeightQuantSolver):
    """WRPN weights: clipped to [-1, 1], sign plus ``k-1`` magnitude bits, straight-through.

    ``w_q = round((2^(k-1)-1)·w) / (2^(k-1)-1)``: a narrow-range signed ``k``-bit integer
    grid ``-(2^(k-1)-1) .. 2^(k-1)-1`` (``2^k - 1`` levels; ternary at ``k = 2``) with the
    *fixed* per-tensor scale ``1/(2^(k-1)-1)`` (Brevitas' constant scale divided by its
    narrow-range integer scale). Rounding and the clip both pass the gradient straight
    through (``InplaceTensorClampSte``, as Brevitas' ternary weight quantizer does), so a
    latent weight pushed past ±1 can come back.
    """

    tensor_clamp_impl = InplaceTensorClampSte
    scaling_const = 1.0


class WRPNAct(UintQuant, PerTensorConstScaling2bit, ActQuantSolver):
    """WRPN activations: clipped to [0, 1] and rounded to ``2^k - 1`` equal steps.

    ``a_q = round((2^k-1)·clip(a, 0, 1)) / (2^k-1)``: unsigned ``k``-bit codes
    ``0 .. 2^k-1``, i.e. ``2^k`` levels (the issue's "2^k - 1" counts the steps), fixed
    scale ``1/(2^k-1)``. Rounding is straight-through; the clip is a real clip (gradient 0
    where the rounded code falls outside the range), WRPN's and DoReFa's bounded ReLU.
    """

    tensor_clamp_impl = TensorClamp
    min_val = 0.0
    max_val = 1.0


_WEIGHT_QUANT = {"int": _IntWeight, "a2q": _A2QWeight, "a2q+": _A2QPlusWeight, "wrpn": WRPNWeight}


def input_quant_layer(iq: InputQuant) -> nn.Module:
    """A ``QuantIdentity`` with constant scale ``iq.scale`` (codes == raw pixels)."""
    if iq.signed:
        raise ValueError("signed graph inputs are not supported by the fixed-scale input quantizer")
    return QuantIdentity(
        act_quant=_FixedScaleUintInput,
        bit_width=iq.bits,
        scaling_init=iq.max_value,
        return_quant_tensor=True,
    )


def act_quant_layer(bits: int, relu: bool = True) -> nn.Module:
    """Hidden activation quantizer: unsigned ``bits``-bit, learned per-tensor scale.

    ``relu=True`` gives ``QuantReLU`` (the export folds ReLU into the unsigned Quant node);
    ``relu=False`` gives an unsigned ``QuantIdentity`` for tensors that are non-negative
    already (a residual sum of two ReLU outputs).
    """
    cls = QuantReLU if relu else QuantIdentity
    return cls(act_quant=Uint8ActPerTensorFloat, bit_width=bits, return_quant_tensor=True)


def highway_quant_layer(bits: int, relu: bool = True) -> nn.Module:
    """Residual-stream quantizer of the Precision Highway (Park et al., "Precision Highway for
    Ultra Low-Precision Quantization"): unsigned ``bits``-bit fixed point (a learned
    power-of-two scale), so that the residual Add aligns its inputs by a shift and the
    requantization of the sum is a rounding shift, not a multiplier.
    """
    cls = QuantReLU if relu else QuantIdentity
    return cls(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits, return_quant_tensor=True)


def wrpn_act_layer(bits: int, relu: bool = True) -> nn.Module:
    """WRPN activation quantizer (:class:`WRPNAct`) of ``bits`` bits.

    ``relu=True`` gives a ``QuantReLU`` (the export folds the ReLU into the unsigned Quant
    node, whose clip at 0 it duplicates); ``relu=False`` an unsigned ``QuantIdentity``.
    """
    cls = QuantReLU if relu else QuantIdentity
    return cls(act_quant=WRPNAct, bit_width=bits, return_quant_tensor=True)


# Where the init's largest weight must reach, in weight steps: past the first rounding
# threshold (half a step), so that some weights of every layer start nonzero, and no
# further: a draw filling the whole range [-1, 1] drives the fixed [0, 1] activations
# into saturation. Measured (seed 0; digits-mlp 10 epochs, digits-cnn 5): digits-mlp 2-bit
# 95.3% here, 82.2% filling [-1, 1], 10.0% (dead) at 0.5 steps; digits-mlp 4-bit 95.8%
# against 85.5%; digits-cnn 4-bit 95.3% against 82.2%.
WRPN_INIT_PEAK_STEPS = 0.6


@torch.no_grad()
def wrpn_init(layer: nn.Module, bits: int) -> None:
    """Widen a fresh layer's default init just enough to survive WRPN's fixed weight grid.

    PyTorch's default init draws from ``±1/sqrt(fan_in)`` (0.125 at fan-in 64, 0.072 at
    192); WRPN's weight step is fixed at ``1/(2^(k-1)-1)`` (1 at ``k = 2``, 1/3 at 3,
    1/7 at 4), so at low ``k`` every weight would round to zero and training would start
    dead. The draw is scaled up (never down) so that its largest magnitude is at least
    ``WRPN_INIT_PEAK_STEPS`` steps, keeping the shape of the default distribution; at 4 bits
    and above with fan-in <= 64 it is left as it is.
    """
    step = 1.0 / (2 ** (bits - 1) - 1)
    w = layer.weight
    top = float(w.detach().abs().max())
    want = WRPN_INIT_PEAK_STEPS * step
    if 0 < top < want:
        w.mul_(want / top)


def weight_quant_kwargs(quant: str, weight_bits: int, acc_bits: int | None) -> dict:
    """Keyword arguments of a ``QuantLinear``/``QuantConv2d`` for a weight quantization mode."""
    if quant not in _WEIGHT_QUANT:
        raise ValueError(f"weight quant mode must be one of {', '.join(_WEIGHT_QUANT)}, got {quant!r}")
    kw = {"weight_quant": _WEIGHT_QUANT[quant], "weight_bit_width": weight_bits}
    if quant in ("a2q", "a2q+"):
        if acc_bits is None:
            raise ValueError(f"quant={quant} needs acc_bits")
        kw["weight_accumulator_bit_width"] = acc_bits
    return kw


def is_a2q_layer(module: nn.Module) -> bool:
    return isinstance(module, QuantWeightBiasInputOutputLayer) and _pre_scaling(module) is not None


def _pre_scaling(module: nn.Module):
    for sub in module.modules():
        if isinstance(sub, AccumulatorAwareParameterPreScaling):
            return sub
    return None


def project_l1_ball(w: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``w`` onto the L1 ball of its ``radius``.

    Duchi et al., "Efficient Projections onto the l1-Ball" (2008): rows already inside
    are unchanged; others become ``sign(w) * max(|w| - theta, 0)`` with ``theta`` chosen
    so that the row's L1 norm equals its radius.
    """
    w = np.asarray(w, dtype=np.float64)
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (w.shape[0],))
    out = w.copy()
    for i, (row, z) in enumerate(zip(w, radius)):
        if z <= 0:
            raise ValueError(f"L1 radius must be > 0, got {z} for row {i}")
        a = np.abs(row)
        if a.sum() <= z:
            continue
        u = np.sort(a)[::-1]
        css = np.cumsum(u)
        k = np.arange(1, u.size + 1)
        rho = np.nonzero(u * k > css - z)[0][-1]
        theta = (css[rho] - z) / (rho + 1)
        out[i] = np.sign(row) * np.maximum(a - theta, 0.0)
    return out


@torch.no_grad()
def forward_once(model: nn.Module, sample: torch.Tensor, hooks: list) -> None:
    """One eval-mode forward pass that fires ``hooks`` (handles), then removes them and
    restores the model's training mode."""
    was_training = model.training
    model.eval()
    try:
        model(sample)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def apply_ep_init(model: nn.Module, sample: torch.Tensor) -> int:
    """Euclidean-projection init of every A2Q/A2Q+ layer; returns how many were projected.

    One forward pass records each constrained layer's weights, post-scale ``s`` and L1
    bound ``T`` (which depends on the layer's input width and sign); each output channel
    is then projected onto the L1 ball of radius ``s * T`` and the learned norm ``g`` is
    clamped to that radius, so that the first quantized weights already satisfy the bound
    without rounding to zero.
    """
    records = {}
    hooks = []
    for name, mod in model.named_modules():
        pre = _pre_scaling(mod) if isinstance(mod, QuantWeightBiasInputOutputLayer) else None
        if pre is None:
            continue

        def hook(module, inputs, output, name=name):
            weights, input_bit_width, input_is_signed = inputs
            scales = module.scaling_impl(weights)
            max_norm = module.calc_max_l1_norm(input_bit_width, input_is_signed)
            records[name] = (scales.detach().reshape(-1), max_norm.detach())
            restrict = module.restrict_clamp_scaling.restrict_value_impl
            init = restrict.restrict_init_tensor(scales * max_norm)
            module.value.data = torch.minimum(module.value.data, init.reshape(module.value.shape))
            return output

        hooks.append(pre.register_forward_hook(hook))
    forward_once(model, sample, hooks)
    for name, mod in model.named_modules():
        if name not in records:
            continue
        scales, max_norm = records[name]
        radius = (scales * max_norm).cpu().numpy().reshape(-1)
        w = mod.weight.detach().cpu().numpy()
        flat = w.reshape(w.shape[0], -1)
        radius = np.broadcast_to(radius, (flat.shape[0],))
        mod.weight.data = torch.tensor(project_l1_ball(flat, radius).reshape(w.shape), dtype=mod.weight.dtype)
    return len(records)
