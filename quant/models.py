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
* Residual CNN: ``res_blocks`` residual Adds, each around one conv,
  ``x + relu_q(bn(conv(x)))``; both inputs are quantized tensors and the sum is
  requantized by an unsigned ``QuantIdentity``. ``highway_bits`` H chooses the width of
  the residual stream (Park et al., "Precision Highway for Ultra Low-Precision
  Quantization"): with H > 0 the stem output, every branch output and every residual sum
  are H-bit fixed point (power-of-two scales) and only the copy feeding each convolution
  (``convN_in``) is quantized to ``act_bits``; with H = 0 (``None`` in configs written
  before the option) the stream itself is at ``act_bits``, as in Brevitas' A2Q ResNet
  example. ``make_config`` defaults a residual model to H = 16.
* Per-layer widths (Sakr & Shanbhag's per-tensor precision, ``train --precision``):
  ``layer_weight_bits`` gives one weight width per weight layer in forward order and
  ``layer_act_bits`` one width per activation quantizer in forward order (MLP
  ``acts.0, acts.1, ..``; CNN ``act1, act2, act3``; residual CNN ``act1``, then
  ``act2*, add_quant*`` per block, then ``act3``; :meth:`ModelConfig.act_names`); either
  overrides ``weight_bits`` / ``act_bits`` layer by layer. A residual model takes them
  only with ``highway_bits`` 0 (a highway fixes its stream's width). The graph input keeps
  the dataset's width.

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
    highway_bits: int | None = None   # resnet only: width of the residual stream (0/None: act_bits)
    res_blocks: int = 1               # resnet only: residual blocks (one conv each)
    layer_weight_bits: tuple[int, ...] | None = None   # per weight layer, forward order
    layer_act_bits: tuple[int, ...] | None = None      # per activation quantizer, forward order
    edge_bits: int | None = None      # wrpn only: first/last layer precision (default 8)
    input_bits: int = 5               # from the dataset's input quantizer
    input_scale: float = 1.0 / 16.0
    in_shape: tuple[int, ...] = (1, 8, 8)
    num_classes: int = 10
    preset: str | None = None
    mls: str | None = None            # quant="mls" only: the MLS format "M,E,G,Eg" (quant/mls.py)

    def to_json(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["in_shape"] = list(self.in_shape)
        for key in ("layer_weight_bits", "layer_act_bits"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"model config has unknown keys {sorted(unknown)}; was it written by a newer accumulus?")
        d = dict(d)
        for key in ("hidden", "in_shape", "layer_weight_bits", "layer_act_bits"):
            if d.get(key) is not None:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)

    @property
    def input_quant(self) -> InputQuant:
        return InputQuant(bits=self.input_bits, scale=self.input_scale)

    def widths(self) -> tuple[int, ...]:
        return tuple(max(1, int(round(h * self.width_mult))) for h in self.hidden)

    def weight_layer_names(self) -> list[str]:
        """Weight layers (Linear/Conv modules) in forward order."""
        if self.model == "mlp":
            return [f"layers.{i}" for i in range(len(self.hidden) + 1)]
        blocks = self.res_blocks if self.model == "resnet" else 1
        return ["conv1"] + [f"conv2{_block_suffix(i)}" for i in range(blocks)] + ["conv3", "fc"]

    def act_names(self) -> list[str]:
        """Hidden activation quantizers in forward order (the graph input and a highway's
        per-conv copies excluded)."""
        if self.model == "mlp":
            return [f"acts.{i}" for i in range(len(self.hidden))]
        if self.model == "cnn":
            return ["act1", "act2", "act3"]
        blocks = [n for i in range(self.res_blocks) for n in (f"act2{_block_suffix(i)}", f"add_quant{_block_suffix(i)}")]
        return ["act1"] + blocks + ["act3"]

    def layer_weight_width(self, index: int) -> int:
        return self.layer_weight_bits[index] if self.layer_weight_bits is not None else self.weight_bits

    def act_width(self, name: str) -> int:
        if self.layer_act_bits is not None and name in self.act_names():
            return self.layer_act_bits[self.act_names().index(name)]
        return self.act_bits


# DESIGN.md's canonical table. CNN "hidden" = conv channels (conv1, conv2, conv3).
PRESETS: dict[str, dict] = {
    "digits-mlp": dict(model="mlp", dataset="digits", hidden=(64, 64), quant="a2q+", weight_bits=4, act_bits=4, acc_bits=12),
    "mnist-tfc": dict(model="mlp", dataset="mnist5k", hidden=(64, 64, 64), quant="a2q+", weight_bits=4, act_bits=4, acc_bits=12),
    "digits-cnn": dict(model="cnn", dataset="digits", hidden=(16, 16, 32), quant="int", weight_bits=4, act_bits=4),
    "digits-rescnn": dict(model="resnet", dataset="digits", hidden=(16, 16, 32), quant="int", weight_bits=4, act_bits=4,
                          highway_bits=0),
    # Precision Highway comparison (issue 15): three residual blocks, 16-bit residual stream
    "digits-rescnn3": dict(model="resnet", dataset="digits", hidden=(16, 16, 32), quant="int", weight_bits=4, act_bits=4,
                           highway_bits=16, res_blocks=3),
}

# Residual models without an explicit --highway keep their stream at this many bits.
DEFAULT_HIGHWAY_BITS = 16

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
    if quant not in bc.QUANT_MODES + ("mls",):
        raise UserError(f"unknown quant mode '{quant}': choose one of {', '.join(bc.QUANT_MODES + ('mls',))}")
    if quant == "mls":
        from accumulus.compiler.mls import MLSFormat

        f = MLSFormat.parse(kw.get("mls") or "1,2,4,2")
        kw["mls"] = f"{f.mantissa_bits},{f.exponent_bits},{f.group_size},{f.group_bits}"
    elif kw.get("mls") is not None:
        raise UserError(f"--mls {kw['mls']} needs --quant mls (got --quant {quant})")
    if quant not in ("a2q", "a2q+"):
        kw["acc_bits"] = None
    if model == "resnet" and kw.get("highway_bits") is None:
        kw["highway_bits"] = DEFAULT_HIGHWAY_BITS
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
    for key, names, lo in (("layer_weight_bits", cfg.weight_layer_names(), 2), ("layer_act_bits", cfg.act_names(), 1)):
        vals = getattr(cfg, key)
        if vals is None:
            continue
        if len(vals) != len(names):
            raise UserError(f"{key} has {len(vals)} widths but model '{cfg.model}' has {len(names)} "
                            f"({', '.join(names)}); give one per layer")
        for name, b in zip(names, vals):
            if cfg.quant != "float" and not lo <= b <= 16:
                raise UserError(f"{key}: layer '{name}' gets {b} bits; widths must be {lo}..16")
    if cfg.model == "resnet" and cfg.highway_bits and cfg.quant != "float" and (
            cfg.layer_act_bits is not None or cfg.layer_weight_bits is not None):
        raise UserError(f"per-layer widths (--precision) on a residual model need --highway 0 "
                        f"(a {cfg.highway_bits}-bit highway fixes the stream's width)")
    if not cfg.hidden or any(h < 1 for h in cfg.hidden):
        raise UserError(f"hidden widths must be positive, got {list(cfg.hidden)}")
    if cfg.model in ("cnn", "resnet") and len(cfg.hidden) != 3:
        raise UserError(f"model '{cfg.model}' takes 3 conv widths, got {list(cfg.hidden)}")
    if cfg.model != "resnet" and (cfg.highway_bits or cfg.res_blocks != 1):
        raise UserError(f"--highway and res_blocks apply to residual models only (model '{cfg.model}'); "
                        "use --model resnet or drop them")
    if cfg.highway_bits is not None and not (cfg.highway_bits == 0 or 2 <= cfg.highway_bits <= 24):
        raise UserError(f"--highway must be 0 (stream at --act-bits) or 2..24 bits, got {cfg.highway_bits}")
    if not 1 <= cfg.res_blocks <= 16:
        raise UserError(f"res_blocks must be 1..16, got {cfg.res_blocks}")
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
    first = IntType(cfg.input_bits, False)
    names = cfg.weight_layer_names()
    act = lambda name: IntType(cfg.act_width(name), False)  # noqa: E731
    if cfg.model == "mlp":
        types = [first] + [act(a) for a in cfg.act_names()]
    else:
        if cfg.model == "cnn":
            types = [first, act("act1"), act("act2"), act("act3")]
        elif cfg.highway_bits:
            # every conv after the first reads its act_bits copy of the H-bit stream
            types = [first] + [IntType(cfg.act_bits, False)] * (len(names) - 2) + [act("act3")]
        else:
            # block i reads the stream: act1, then the previous block's sum
            stream = ["act1"] + [f"add_quant{_block_suffix(i)}" for i in range(cfg.res_blocks)]
            types = [first] + [act(a) for a in stream] + [act("act3")]
    pairs = list(zip(names, types))
    return pairs if cfg.constrain_first else pairs[1:]


def _layer_quant(cfg: ModelConfig, first: bool) -> str:
    if cfg.quant in ("a2q", "a2q+") and first and not cfg.constrain_first:
        return "int"
    return cfg.quant


def _linear(cfg: ModelConfig, fan_in: int, fan_out: int, first: bool, index: int, last: bool = False) -> nn.Module:
    q = _layer_quant(cfg, first)
    if q == "float":
        return nn.Linear(fan_in, fan_out, bias=False)
    from brevitas.nn import QuantLinear

    if q == "wrpn":
        return _wrpn_layer(QuantLinear(fan_in, fan_out, bias=False, **_wrpn_weight_kwargs(cfg, first, last, index)))
    return QuantLinear(fan_in, fan_out, bias=False,
                       **bc.weight_quant_kwargs(q, cfg.layer_weight_width(index), cfg.acc_bits))


def _conv(cfg: ModelConfig, cin: int, cout: int, first: bool, index: int) -> nn.Module:
    q = _layer_quant(cfg, first)
    if q == "float":
        return nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    from brevitas.nn import QuantConv2d

    if q == "wrpn":
        return _wrpn_layer(QuantConv2d(cin, cout, 3, padding=1, bias=False, **_wrpn_weight_kwargs(cfg, first, False, index)))
    return QuantConv2d(cin, cout, 3, padding=1, bias=False, **bc.weight_quant_kwargs(q, cfg.layer_weight_width(index), cfg.acc_bits))


WRPN_EDGE_BITS = 8


def _wrpn_weight_kwargs(cfg: ModelConfig, first: bool, last: bool, index: int) -> dict:
    bits = cfg.edge_bits if (first or last) else cfg.layer_weight_width(index)
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


def _act(cfg: ModelConfig, name: str, relu: bool = True, feeds_last: bool = False) -> nn.Module:
    if cfg.quant == "float":
        return nn.ReLU() if relu else nn.Identity()
    if cfg.quant == "wrpn":
        return bc.wrpn_act_layer(cfg.edge_bits if feeds_last else cfg.act_width(name), relu=relu)
    return bc.act_quant_layer(cfg.act_width(name), relu=relu)


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
            _linear(cfg, a, b, first=(i == 0), index=i, last=(i == last))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.acts = nn.ModuleList(_act(cfg, f"acts.{i}", feeds_last=(i == last - 1)) for i in range(len(widths) - 2))

    def forward(self, x):
        x = self.flatten(self.input_quant(x))
        for layer, act in zip(self.layers[:-1], self.acts):
            x = act(layer(x))
        return self.layers[-1](x)


class QuantCNN(nn.Module):
    """conv3x3/c1, conv3x3/c2, maxpool2, conv3x3/c3, maxpool2, fc (all pad 1, BN after each conv).

    ``residual=True`` adds each residual conv's input to its activation (the residual Add),
    ``cfg.res_blocks`` times (module names ``conv2``, ``conv2_2``, ... for the blocks).
    With a Precision Highway (``cfg.highway_bits`` H > 0, quantized models only) the stem
    output ``act1``, each branch output ``act2*`` and each sum ``add_quant*`` are H-bit fixed
    point and ``conv2*_in``/``conv3_in`` quantize the copy each convolution reads to ``act_bits``.
    """

    def __init__(self, cfg: ModelConfig, residual: bool = False):
        super().__init__()
        self.config = cfg
        self.residual = residual
        hw = (cfg.highway_bits or 0) if residual and cfg.quant != "float" else 0
        self.highway_bits = hw
        stream = (lambda name, relu=True: bc.highway_quant_layer(hw, relu=relu)) if hw else \
            (lambda name, relu=True: _act(cfg, name, relu=relu))
        c1, c2, c3 = (max(1, int(round(c * cfg.width_mult))) for c in cfg.hidden)
        cin, h, w = cfg.in_shape
        self.input_quant = _input(cfg)
        nb = len(cfg.weight_layer_names()) - 3      # residual blocks (1 for the plain CNN)
        self.conv1, self.bn1, self.act1 = _conv(cfg, cin, c1, True, 0), nn.BatchNorm2d(c1), stream("act1")
        self.block_names = [f"conv2{_block_suffix(i)}" for i in range(nb)]
        for i, name in enumerate(self.block_names):
            sfx = _block_suffix(i)
            if hw:
                setattr(self, f"{name}_in", _act(cfg, f"{name}_in", relu=False))
            setattr(self, name, _conv(cfg, c1, c2, False, 1 + i))
            setattr(self, f"bn2{sfx}", nn.BatchNorm2d(c2))
            setattr(self, f"act2{sfx}", stream(f"act2{sfx}") if residual else _act(cfg, "act2"))
            if residual:
                setattr(self, f"add_quant{sfx}", stream(f"add_quant{sfx}", relu=False))
        self.pool1 = nn.MaxPool2d(2)
        if hw:
            self.conv3_in = _act(cfg, "conv3_in", relu=False)
        self.conv3, self.bn3, self.act3 = _conv(cfg, c2, c3, False, 1 + nb), nn.BatchNorm2d(c3), _act(cfg, "act3", feeds_last=True)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = _linear(cfg, c3 * (h // 4) * (w // 4), cfg.num_classes, first=False, index=2 + nb, last=True)

    def blocks(self, x):
        """The graph up to the first pool: the stem output, then each block's output."""
        x = self.input_quant(x)
        x = self.act1(self.bn1(self.conv1(x)))
        outs = [x]
        for i, name in enumerate(self.block_names):
            sfx = _block_suffix(i)
            xc = getattr(self, f"{name}_in")(x) if self.highway_bits else x
            y = getattr(self, f"act2{sfx}")(getattr(self, f"bn2{sfx}")(getattr(self, name)(xc)))
            if self.residual:
                # Both operands are quantized (Quant -> Add <- Quant in QONNX); the float sum is
                # requantized once, which is where the compiler's full-width residual add sits.
                x = getattr(self, f"add_quant{sfx}")(_value(x) + _value(y))
            else:
                x = y
            outs.append(x)
        return outs

    def forward(self, x):
        x = self.pool1(self.blocks(x)[-1])
        if self.highway_bits:
            x = self.conv3_in(x)
        x3 = self.act3(self.bn3(self.conv3(x)))
        return self.fc(self.flatten(self.pool2(x3)))


def _block_suffix(i: int) -> str:
    return "" if i == 0 else f"_{i + 1}"


def _value(t):
    return getattr(t, "value", t)


def build_model(cfg: ModelConfig | dict) -> nn.Module:
    """Build a fresh (untrained, un-initialised by EP-init) model from a config."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_json(cfg)
    validate(cfg)
    if cfg.quant == "mls":
        from .mls import build_mls_model

        return build_mls_model(cfg)
    if cfg.model == "mlp":
        return QuantMLP(cfg)
    return QuantCNN(cfg, residual=(cfg.model == "resnet"))


def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named weight layers (Linear/Conv, quantized or not), in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def layer_quant_modes(cfg: ModelConfig) -> list[str]:
    n = len(cfg.hidden) + 1 + (cfg.res_blocks - 1 if cfg.model == "resnet" else 0)
    return [_layer_quant(cfg, i == 0) for i in range(n)]
