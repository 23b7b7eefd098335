"""Quantized models and the canonical presets (DESIGN.md, "Canonical models").

Choices that keep the exported QONNX graph simple for the compiler:

* **No bias** anywhere (``bias=False``): a bias would export as a quantized Add whose
  integer scale depends on the input; the compiler gets everything it needs from the
  weights and the requantization after them.
* **MLPs have no BatchNorm**: ``MatMul -> Quant(ReLU folded, unsigned)`` per hidden
  layer. **CNNs use BatchNorm2d** between a conv and its activation quantizer: the export
  is ``Conv -> BatchNormalization -> Quant``, which the compiler folds into thresholds.
* Hidden activations are ``QuantReLU`` (unsigned, ``act_bits``, learned per-tensor
  scale); the graph input has a fixed scale from the dataset so input codes are raw pixels.
* MLPs flatten inside the graph, after the input quantizer (datasets give (N,1,H,W)).
* The last layer has no activation: the graph output is its float result (logits).
* ``quant``: ``float`` (no quantizers at all: the reference architecture), ``int``
  (per-channel weight QAT), ``a2q``, ``a2q+``. A2Q/A2Q+ constrain every layer but the
  first (A2Q's own recipe; a first layer over 784 8-bit pixels has an L1 budget of 16 at
  P=12 and training collapses, TOOLCHAIN.md); the first layer is per-channel integer
  QAT unless ``constrain_first``. Every A2Q layer's input is a QuantTensor.
* ``width_mult`` scales every hidden width (WRPN: wider, lower-precision networks); the
  graph input and the class count, hence the first layer's fan-in and the last layer's
  fan-out, keep their sizes.
* ``quant="wrpn"`` (Mishra et al., "WRPN", ICLR 2018): fixed-range quantizers, weights in
  [-1, 1] with ``weight_bits`` (sign + magnitude, narrow range), hidden activations in
  [0, 1] with ``act_bits`` (:mod:`brevitas_config`). As in WRPN, the first and last layers
  are kept at higher precision, ``edge_bits`` (default 8); a layer's precision is that of
  its two multiplier operands, so ``edge_bits`` sets **the first layer's weights** (its
  input is the dataset's fixed input code, unchanged) and **the last layer's weights and
  its input activation** (the output quantizer of the last hidden layer). The first
  layer's output feeds a reduced-precision layer and stays at ``act_bits``; the logits
  stay the last layer's unquantized result.
* Residual CNN: a residual Add around the second conv, ``x1 + relu_q(bn(conv2(x1)))``;
  both inputs are quantized tensors, the sum is requantized by an unsigned
  ``QuantIdentity`` of ``highway_bits`` (default ``act_bits``; the Precision Highway option
  keeps this residual stream at 8 bits while convolutions see ``act_bits``).

A model's ``config`` dict (plain JSON values) rebuilds it with :func:`build_model`; it is
saved with the state_dict in ``model.pt``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from accumulus.compiler.accumulators import a2q_l1_budget, a2q_plus_l1_budget
from accumulus.compiler.types import IntType
from accumulus.errors import UserError

from . import brevitas_config as bc
from .data import DATASETS, InputQuant, input_quant

__all__ = ["ModelConfig", "PRESETS", "MODELS", "preset", "build_model", "QuantMLP", "QuantCNN"]

MODELS = ("mlp", "cnn", "resnet")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (saved in checkpoints and train.json)."""

    model: str = "mlp"
    dataset: str = "digits"
    quant: str = "a2q+"
    weight_bits: int = 4
    act_bits: int = 4
    acc_bits: int | None = 12
    hidden: tuple[int, ...] = (64, 64)
    width_mult: float = 1.0
    constrain_first: bool = False
    highway_bits: int | None = None   # resnet only: width of the residual stream
    edge_bits: int | None = None      # wrpn only: first/last layer precision (default 8)
    input_bits: int = 5               # from the dataset's input quantizer
    input_scale: float = 1.0 / 16.0
    in_shape: tuple[int, ...] = (1, 8, 8)
    num_classes: int = 10
    preset: str | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["in_shape"] = list(self.in_shape)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"model config has unknown keys {sorted(unknown)}; was it written by a newer accumulus?")
        d = dict(d)
        for key in ("hidden", "in_shape"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)

    @property
    def input_quant(self) -> InputQuant:
        return InputQuant(bits=self.input_bits, scale=self.input_scale)

    def widths(self) -> tuple[int, ...]:
        return tuple(max(1, int(round(h * self.width_mult))) for h in self.hidden)


# DESIGN.md's canonical table. CNN "hidden" = conv channels (conv1, conv2, conv3).
PRESETS: dict[str, dict] = {
    "digits-mlp": dict(model="mlp", dataset="digits", hidden=(64, 64), quant="a2q+", weight_bits=4, act_bits=4, acc_bits=12),
    "mnist-tfc": dict(model="mlp", dataset="mnist5k", hidden=(64, 64, 64), quant="a2q+", weight_bits=4, act_bits=4, acc_bits=12),
    "digits-cnn": dict(model="cnn", dataset="digits", hidden=(16, 16, 32), quant="int", weight_bits=4, act_bits=4),
    "digits-rescnn": dict(model="resnet", dataset="digits", hidden=(16, 16, 32), quant="int", weight_bits=4, act_bits=4),
}

_DEFAULT_HIDDEN = {"mlp": (64, 64), "cnn": (16, 16, 32), "resnet": (16, 16, 32)}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset's config (dataset input quantizer filled in), with ``overrides`` applied."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    kw = dict(PRESETS[name])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(preset=name, **kw)


def make_config(dataset_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                dataset_iq: InputQuant | None = None, **kw) -> ModelConfig:
    """Validate options and fill in the dataset-derived fields of a :class:`ModelConfig`."""
    model = kw.get("model", "mlp")
    if model not in MODELS:
        raise UserError(f"unknown model '{model}': choose one of {', '.join(MODELS)}")
    kw.setdefault("hidden", _DEFAULT_HIDDEN[model])
    ds = kw.get("dataset", "digits")
    if ds in DATASETS:
        iq = input_quant(ds)
        shape = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28)}[ds]
        classes = 10
    else:
        if dataset_shape is None or dataset_iq is None:
            raise UserError(f"dataset '{ds}' is not built in: load it first to learn its shape")
        iq, shape, classes = dataset_iq, tuple(dataset_shape), int(num_classes)
    kw.update(input_bits=iq.bits, input_scale=iq.scale, in_shape=tuple(shape), num_classes=classes)
    quant = kw.get("quant", "a2q+")
    if quant not in bc.QUANT_MODES:
        raise UserError(f"unknown quant mode '{quant}': choose one of {', '.join(bc.QUANT_MODES)}")
    if quant not in ("a2q", "a2q+"):
        kw["acc_bits"] = None
    if quant == "wrpn":
        kw["edge_bits"] = kw.get("edge_bits") or WRPN_EDGE_BITS
    elif kw.get("edge_bits") is not None:
        raise UserError(f"--edge-bits sets the first and last layers of --quant wrpn; got --quant {quant}: "
                        "drop --edge-bits or use --quant wrpn")
    cfg = ModelConfig(**kw)
    validate(cfg)
    return cfg


def validate(cfg: ModelConfig) -> None:
    """Reject option values that cannot train, with what to do about it."""
    if cfg.quant != "float":
        if not 2 <= cfg.weight_bits <= 16:
            raise UserError(f"--weight-bits must be 2..16, got {cfg.weight_bits}")
        if not 1 <= cfg.act_bits <= 16:
            raise UserError(f"--act-bits must be 1..16, got {cfg.act_bits}")
    if not cfg.hidden or any(h < 1 for h in cfg.hidden):
        raise UserError(f"hidden widths must be positive, got {list(cfg.hidden)}")
    if cfg.model in ("cnn", "resnet") and len(cfg.hidden) != 3:
        raise UserError(f"model '{cfg.model}' takes 3 conv widths, got {list(cfg.hidden)}")
    if cfg.model == "resnet" and cfg.hidden[0] != cfg.hidden[1]:
        raise UserError(f"resnet: the residual Add needs conv1 and conv2 widths equal, got {list(cfg.hidden[:2])}")
    if cfg.model in ("cnn", "resnet") and min(cfg.in_shape[1:]) < 4:
        raise UserError(f"model '{cfg.model}' pools twice by 2; input {cfg.in_shape} is too small")
    if not cfg.width_mult > 0:
        raise UserError(f"--width-mult must be > 0, got {cfg.width_mult}")
    if cfg.quant == "wrpn" and not (cfg.edge_bits is not None and 2 <= cfg.edge_bits <= 16):
        raise UserError(f"--edge-bits must be 2..16, got {cfg.edge_bits}")
    if cfg.quant in ("a2q", "a2q+"):
        if cfg.acc_bits is None or not 2 <= cfg.acc_bits <= 64:
            raise UserError(f"--quant {cfg.quant} needs --acc-bits P in 2..64, got {cfg.acc_bits}")
        for name, in_type in constrained_inputs(cfg):
            budget = (a2q_plus_l1_budget if cfg.quant == "a2q+" else a2q_l1_budget)(cfg.acc_bits, in_type)
            if budget < 1:
                raise UserError(
                    f"--acc-bits {cfg.acc_bits} is too narrow for layer '{name}' with {in_type} inputs: "
                    f"its {cfg.quant} L1 budget is {budget:.3g} < 1, so every weight would be zero; "
                    f"raise --acc-bits or lower --act-bits"
                )


def constrained_inputs(cfg: ModelConfig) -> list[tuple[str, IntType]]:
    """(layer name, input code type) of each accumulator-constrained layer."""
    act = IntType(cfg.act_bits, False)
    first = IntType(cfg.input_bits, False)
    if cfg.model == "mlp":
        names = [f"layers.{i}" for i in range(len(cfg.hidden) + 1)]
        types = [first] + [act] * len(cfg.hidden)
    else:
        names = ["conv1", "conv2", "conv3", "fc"]
        mid = IntType(cfg.highway_bits or cfg.act_bits, False) if cfg.model == "resnet" else act
        types = [first, act, mid, act]
    pairs = list(zip(names, types))
    return pairs if cfg.constrain_first else pairs[1:]


def _layer_quant(cfg: ModelConfig, first: bool) -> str:
    if cfg.quant in ("a2q", "a2q+") and first and not cfg.constrain_first:
        return "int"
    return cfg.quant


def _linear(cfg: ModelConfig, fan_in: int, fan_out: int, first: bool, last: bool = False) -> nn.Module:
    q = _layer_quant(cfg, first)
    if q == "float":
        return nn.Linear(fan_in, fan_out, bias=False)
    from brevitas.nn import QuantLinear

    if q == "wrpn":
        return _wrpn_layer(QuantLinear(fan_in, fan_out, bias=False, **_wrpn_weight_kwargs(cfg, first, last)))
    return QuantLinear(fan_in, fan_out, bias=False, **bc.weight_quant_kwargs(q, cfg.weight_bits, cfg.acc_bits))


def _conv(cfg: ModelConfig, cin: int, cout: int, first: bool) -> nn.Module:
    q = _layer_quant(cfg, first)
    if q == "float":
        return nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    from brevitas.nn import QuantConv2d

    if q == "wrpn":
        return _wrpn_layer(QuantConv2d(cin, cout, 3, padding=1, bias=False, **_wrpn_weight_kwargs(cfg, first, False)))
    return QuantConv2d(cin, cout, 3, padding=1, bias=False, **bc.weight_quant_kwargs(q, cfg.weight_bits, cfg.acc_bits))


WRPN_EDGE_BITS = 8


def _wrpn_weight_kwargs(cfg: ModelConfig, first: bool, last: bool) -> dict:
    bits = cfg.edge_bits if (first or last) else cfg.weight_bits
    return bc.weight_quant_kwargs("wrpn", bits, None)


def _wrpn_layer(layer: nn.Module) -> nn.Module:
    bc.wrpn_init(layer, int(layer.weight_quant.bit_width()))
    return layer


def wrpn_layer_bits(cfg: ModelConfig) -> list[dict]:
    """Per weight layer (forward order): the WRPN weight bits and input activation bits.

    The input of the first layer is the dataset's code (``input_bits``); see the module
    docstring for what ``edge_bits`` covers.
    """
    n = len(cfg.hidden) + 1
    out = []
    for i in range(n):
        edge = i in (0, n - 1)
        in_bits = cfg.input_bits if i == 0 else (cfg.edge_bits if i == n - 1 else cfg.act_bits)
        out.append({"weight_bits": cfg.edge_bits if edge else cfg.weight_bits, "input_bits": in_bits})
    return out


def _act(cfg: ModelConfig, bits: int | None = None, relu: bool = True, feeds_last: bool = False) -> nn.Module:
    if cfg.quant == "float":
        return nn.ReLU() if relu else nn.Identity()
    if cfg.quant == "wrpn":
        return bc.wrpn_act_layer(cfg.edge_bits if feeds_last else (bits or cfg.act_bits), relu=relu)
    return bc.act_quant_layer(bits or cfg.act_bits, relu=relu)


def _input(cfg: ModelConfig) -> nn.Module:
    if cfg.quant == "float":
        return nn.Identity()
    return bc.input_quant_layer(cfg.input_quant)


class QuantMLP(nn.Module):
    """``input quant -> flatten -> [linear -> relu-quant]* -> linear`` (logits)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.input_quant = _input(cfg)
        self.flatten = nn.Flatten()
        widths = [int(math.prod(cfg.in_shape))] + list(cfg.widths()) + [cfg.num_classes]
        last = len(widths) - 2
        self.layers = nn.ModuleList(
            _linear(cfg, a, b, first=(i == 0), last=(i == last)) for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.acts = nn.ModuleList(_act(cfg, feeds_last=(i == last - 1)) for i in range(len(widths) - 2))

    def forward(self, x):
        x = self.flatten(self.input_quant(x))
        for layer, act in zip(self.layers[:-1], self.acts):
            x = act(layer(x))
        return self.layers[-1](x)


class QuantCNN(nn.Module):
    """conv3x3/c1, conv3x3/c2, maxpool2, conv3x3/c3, maxpool2, fc (all pad 1, BN after each conv).

    ``residual=True`` adds the second conv's input to its activation (the residual Add).
    """

    def __init__(self, cfg: ModelConfig, residual: bool = False):
        super().__init__()
        self.config = cfg
        self.residual = residual
        c1, c2, c3 = (max(1, int(round(c * cfg.width_mult))) for c in cfg.hidden)
        cin, h, w = cfg.in_shape
        self.input_quant = _input(cfg)
        self.conv1, self.bn1, self.act1 = _conv(cfg, cin, c1, True), nn.BatchNorm2d(c1), _act(cfg)
        self.conv2, self.bn2, self.act2 = _conv(cfg, c1, c2, False), nn.BatchNorm2d(c2), _act(cfg)
        if residual:
            self.add_quant = _act(cfg, bits=cfg.highway_bits, relu=False)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3, self.bn3, self.act3 = _conv(cfg, c2, c3, False), nn.BatchNorm2d(c3), _act(cfg, feeds_last=True)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = _linear(cfg, c3 * (h // 4) * (w // 4), cfg.num_classes, first=False, last=True)

    def forward(self, x):
        x = self.input_quant(x)
        x1 = self.act1(self.bn1(self.conv1(x)))
        x2 = self.act2(self.bn2(self.conv2(x1)))
        if self.residual:
            # Both operands are quantized (Quant -> Add <- Quant in QONNX); the float sum is
            # requantized once, which is where the compiler's full-width residual add sits.
            x2 = self.add_quant(_value(x1) + _value(x2))
        x3 = self.act3(self.bn3(self.conv3(self.pool1(x2))))
        return self.fc(self.flatten(self.pool2(x3)))


def _value(t):
    return getattr(t, "value", t)


def build_model(cfg: ModelConfig | dict) -> nn.Module:
    """Build a fresh (untrained, un-initialised by EP-init) model from a config."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_json(cfg)
    validate(cfg)
    if cfg.model == "mlp":
        return QuantMLP(cfg)
    return QuantCNN(cfg, residual=(cfg.model == "resnet"))


def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named weight layers (Linear/Conv, quantized or not), in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def layer_quant_modes(cfg: ModelConfig) -> list[str]:
    n = len(cfg.hidden) + 1
    return [_layer_quant(cfg, i == 0) for i in range(n)]
