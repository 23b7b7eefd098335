"""Small Brevitas networks built and exported by the tests (no stored files).

Each :class:`Case` describes one network: an input quantizer (integer ``QuantIdentity`` or
FINN BNN-PYNQ style bipolar), one or two ``QuantLinear`` / ``QuantConv2d`` layers each
followed by an optional float ``torch.nn.BatchNorm`` (random running statistics and affine
parameters, some negative gammas) and an activation quantizer (``QuantReLU``,
``QuantIdentity``, ``QuantHardTanh``), then a final ``QuantLinear`` to 10 outputs. The
quantizers' options follow Brevitas' own keywords (``weight_bit_width``,
``weight_narrow_range``, ``weight_scaling_per_output_channel``, ``bias_quant``, ``bit_width``,
``narrow_range``, ``float_to_int_impl_type``, ``scaling_impl_type``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Act:
    kind: str            # relu | identity | hardtanh
    bits: int
    signed: bool         # identity only (relu is unsigned, hardtanh signed)
    narrow: bool
    rounding: str        # FloatToIntImplType member name
    const_scale: float | None = None   # ScalingImplType.CONST with this max value; None: statistics


@dataclass(frozen=True)
class Layer:
    w_bits: int
    per_channel: bool
    w_narrow: bool
    bias: str            # none | float | int32 | int16 | int8
    bn: bool
    act: Act


@dataclass(frozen=True)
class Case:
    name: str
    arch: str            # mlp | conv
    in_kind: str         # int | bipolar
    in_bits: int
    in_signed: bool
    layers: tuple
    final_bits: int
    final_bias: str
    seed: int

    @property
    def in_shape(self):
        return (1, 1, 8, 8) if self.arch == "conv" else (1, 16)


def _bias_quant(kind):
    from brevitas.quant import Int8Bias, Int16Bias, Int32Bias

    return {"none": None, "float": None, "int32": Int32Bias, "int16": Int16Bias, "int8": Int8Bias}[kind]


def _weight_kwargs(bits, per_channel, narrow, bias):
    from brevitas.quant import SignedBinaryWeightPerTensorConst

    kw = {"bias": bias != "none", "bias_quant": _bias_quant(bias), "return_quant_tensor": False}
    if bits == 1:
        kw["weight_quant"] = SignedBinaryWeightPerTensorConst
    else:
        kw.update(weight_bit_width=bits, weight_narrow_range=narrow,
                  weight_scaling_per_output_channel=per_channel)
    return kw


def _act_module(a: Act):
    import brevitas.nn as qnn
    from brevitas.inject.enum import FloatToIntImplType, ScalingImplType
    from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

    kw = {"bit_width": a.bits, "narrow_range": a.narrow, "return_quant_tensor": True,
          "float_to_int_impl_type": getattr(FloatToIntImplType, a.rounding)}
    if a.const_scale is not None:
        kw.update(scaling_impl_type=ScalingImplType.CONST, scaling_init=a.const_scale)
    if a.kind == "relu":
        return qnn.QuantReLU(**kw)
    if a.kind == "hardtanh":
        m = 1.0 if a.const_scale is None else a.const_scale
        kw.update(max_val=m, min_val=-m)
        return qnn.QuantHardTanh(**kw)
    return qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat if a.signed else Uint8ActPerTensorFloat, **kw)


def build(case: Case):
    """The torch module of ``case`` (eval mode, calibrated, BN statistics set)."""
    import torch
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, SignedBinaryActPerTensorConst, Uint8ActPerTensorFloat

    torch.manual_seed(case.seed)
    rng = np.random.default_rng(case.seed)
    mods = []
    if case.in_kind == "bipolar":
        mods.append(qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True))
    else:
        q = Int8ActPerTensorFloat if case.in_signed else Uint8ActPerTensorFloat
        mods.append(qnn.QuantIdentity(act_quant=q, bit_width=case.in_bits, return_quant_tensor=True))
    bns = []
    width = 1 if case.arch == "conv" else 16
    hw = 8
    for i, l in enumerate(case.layers):
        n = 4 if case.arch == "conv" else int(rng.choice([12, 16, 24]))
        kw = _weight_kwargs(l.w_bits, l.per_channel, l.w_narrow, l.bias)
        if case.arch == "conv":
            mods.append(qnn.QuantConv2d(width, n, 3, padding=1 if i == 0 else 0, **kw))
            hw = hw if i == 0 else hw - 2
            bn = torch.nn.BatchNorm2d(n) if l.bn else None
        else:
            mods.append(qnn.QuantLinear(width, n, **kw))
            bn = torch.nn.BatchNorm1d(n) if l.bn else None
        if bn is not None:
            mods.append(bn)
            bns.append(bn)
        mods.append(_act_module(l.act))
        width = n
    if case.arch == "conv":
        mods.append(torch.nn.Flatten())
        width = width * hw * hw
    mods.append(qnn.QuantLinear(width, 10, **_weight_kwargs(case.final_bits, True, True, case.final_bias)))
    model = torch.nn.Sequential(*mods)
    # calibrate the statistics-initialised scales on data over the input range, then fix BN
    lo, hi = (-1.0, 1.0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.from_numpy(rng.uniform(lo, hi, (32,) + case.in_shape[1:]).astype(np.float32)))
    for bn in bns:
        c = bn.num_features
        g = rng.uniform(0.3, 2.0, c) * np.where(rng.random(c) < 0.3, -1, 1)
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(g.astype(np.float32)))
            bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.5, c).astype(np.float32)))
            bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 1.0, c).astype(np.float32)))
            bn.running_var.copy_(torch.from_numpy(rng.uniform(0.2, 3.0, c).astype(np.float32)))
    model.eval()
    return model


def export(case: Case, path):
    """Build ``case`` and export it with ``export_qonnx(..., dynamo=False)``; (module, ModelProto)."""
    import onnx
    import torch
    from brevitas.export import export_qonnx

    model = build(case)
    export_qonnx(model, args=torch.zeros(case.in_shape), export_path=str(path), dynamo=False)
    return model, onnx.load(str(path))
