"""QONNX (and QCDQ) export with the integer weights the accumulator guarantee is about.

Brevitas 0.12.1-0.13.4 ``export_qonnx`` writes the *float* weights of A2Q layers with a
``ROUND`` Quant node, losing A2Q's pre-clip scaling and round-toward-zero, so the
exported integers can break the L1 bound the layer was trained to (TOOLCHAIN.md). Here
each weight Quant node's float initializer is overwritten with ``int * scale``, where
``int`` and ``scale`` come from ``layer.quant_weight(quant_input=...)`` with the layer's
real input QuantTensor; the Quant node then reproduces exactly those integers. After
writing, the file is re-read and every quantized layer is checked: the integers the
Quant math gives (round half to even of ``x/scale + zp``, clipped) equal
``quant_weight()``'s, and the exact accumulator range of every constrained layer over
its input code range fits the target ``P`` (``accumulus.compiler.accumulators``).

Graph clean-ups, all value-preserving: weights are not graph inputs; a ``Relu`` whose only
consumer is an unsigned Quant is removed (the Quant clips at zero, so the Relu is folded
into it); the graph input is named ``input`` and the output ``logits``.

The model-level ``metadata_props`` key ``accumulus`` holds JSON::

    {"version", "dataset", "test_accuracy", "input": {"bits", "scale", "signed"},
     "layers": {"<MatMul/Gemm/Conv node>": {"order": i, "weight": "<initializer>", "weight_bits": M,
                "input_bits": N, "input_signed": bool, "acc_bits": P | null,
                "quant": "a2q+" | "a2q" | "int" | "float"}}}

``order`` is the weight node's position among the graph's MatMul/Gemm/Conv nodes (in
graph order): it survives qonnx's cleanup, which renames nodes and tensors.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from accumulus import __version__
from accumulus.compiler.accumulators import layer_widths
from accumulus.compiler.types import IntType
from accumulus.errors import UserError

from .brevitas_config import forward_once
from .models import ModelConfig, quant_layers

__all__ = ["LayerExport", "export_model", "export_mls_model", "MLS_DOMAIN", "quant_weights", "read_layers", "verify_onnx", "METADATA_KEY"]

METADATA_KEY = "accumulus"
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
_PASS_THROUGH = ("Transpose", "Reshape", "Identity")


@dataclass
class LayerExport:
    """What PyTorch says one layer's weights are (the reference the ONNX file must match)."""

    module: str
    quant: str
    weight_int: np.ndarray | None     # (out, ...) integers, None for float layers
    weight_scale: np.ndarray | None   # broadcastable to weight_int
    weight_type: IntType | None
    input_type: IntType | None
    acc_bits: int | None


def _layer_quant_mode(cfg: ModelConfig, index: int, module: nn.Module) -> str:
    if cfg.quant == "float" or not hasattr(module, "quant_weight"):
        return "float"
    if cfg.quant in ("a2q", "a2q+") and (index > 0 or cfg.constrain_first):
        return cfg.quant
    return "int"


@torch.no_grad()
def quant_weights(model: nn.Module, cfg: ModelConfig, sample: torch.Tensor) -> list[LayerExport]:
    """Each weight layer's integer weights, scale, weight/input types and target P.

    One forward pass captures every layer's input QuantTensor, which A2Q's
    ``quant_weight`` needs (its bound depends on the input's width and sign).
    """
    layers = quant_layers(model)
    captured: dict[str, object] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: captured.__setitem__(name, args[0]))
             for n, m in layers]
    forward_once(model, sample, hooks)
    out = []
    for i, (name, mod) in enumerate(layers):
        mode = _layer_quant_mode(cfg, i, mod)
        if mode == "float":
            out.append(LayerExport(name, "float", None, None, None, None, None))
            continue
        qi = captured[name]
        if not hasattr(qi, "bit_width"):
            raise RuntimeError(f"layer '{name}': input is not a QuantTensor; every quantized layer needs one")
        qw = mod.quant_weight(quant_input=qi) if mode in ("a2q", "a2q+") else mod.quant_weight()
        w_int = torch.round(qw.value / qw.scale + qw.zero_point).cpu().numpy().astype(np.int64)
        if not np.array_equal(w_int, qw.int().cpu().numpy()):
            raise RuntimeError(f"layer '{name}': quant_weight value/scale is not integral")
        bits = int(qw.bit_width.item())
        in_type = IntType(int(qi.bit_width.item()), bool(qi.signed))
        out.append(LayerExport(
            module=name, quant=mode, weight_int=w_int,
            weight_scale=qw.scale.detach().cpu().numpy().astype(np.float32),
            weight_type=IntType(bits, bool(qw.signed), narrow=bool(mod.weight_quant.is_narrow_range)),
            input_type=in_type,
            acc_bits=cfg.acc_bits if mode in ("a2q", "a2q+") else None,
        ))
    return out


# ---------------------------------------------------------------------------------------------
# ONNX helpers (numpy only)

def quant_int(x: np.ndarray, scale, zero_point, bits: int, signed: bool, narrow: bool) -> np.ndarray:
    """Integer codes of qonnx's Quant (ROUND = half to even), computed in float32 as qonnx does."""
    x = np.asarray(x, dtype=np.float32)
    y = x / np.asarray(scale, dtype=np.float32) + np.asarray(zero_point, dtype=np.float32)
    t = IntType(bits, signed, narrow)
    return np.clip(np.round(y), t.min, t.max).astype(np.int64)


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _weight_quant_node(graph, node, producers, inits):
    """The Quant node (and its float initializer) feeding ``node``'s weight input, or None."""
    name = node.input[1]
    while name in producers and producers[name].op_type in _PASS_THROUGH:
        name = producers[name].input[0]
    q = producers.get(name)
    if q is None or q.op_type != "Quant" or q.input[0] not in inits:
        return None
    return q


def _attr(node, key, default=None):
    for a in node.attribute:
        if a.name == key:
            return onnx.helper.get_attribute_value(a)
    return default


def _const(graph, name, inits, producers) -> np.ndarray:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(_attr(node, "value"))
    raise UserError(f"Quant input '{name}' is not a constant; cannot read the integer weights")


def read_layers(model: onnx.ModelProto) -> dict[str, dict]:
    """Per weight node: its Quant node's integers (as the Quant math gives them) and type."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = _producers(g)
    out = {}
    for node in g.node:
        if node.op_type not in _WEIGHT_OPS:
            continue
        q = _weight_quant_node(g, node, producers, inits)
        if q is None:
            continue
        x = numpy_helper.to_array(inits[q.input[0]])
        scale, zp, bits = (_const(g, n, inits, producers) for n in q.input[1:4])
        signed, narrow = bool(_attr(q, "signed", 1)), bool(_attr(q, "narrow", 0))
        mode = _attr(q, "rounding_mode", b"ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "ROUND":
            raise UserError(f"weight Quant '{q.name}' uses rounding_mode {mode}; expected ROUND")
        out[node.name] = {
            "weight": q.input[0], "quant_node": q.name,
            "int": quant_int(x, scale, zp, int(bits), signed, narrow),
            "scale": scale, "zero_point": zp,
            "type": IntType(int(bits), signed, narrow),
        }
    return out


def _strip_weight_inputs(graph) -> None:
    names = {i.name for i in graph.initializer}
    keep = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(keep)


def _fold_relu_into_unsigned_quant(graph) -> int:
    """Drop each Relu whose only consumer is an unsigned Quant (which clips at 0 anyway)."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    removed = []
    for n in graph.node:
        if n.op_type != "Relu" or n.output[0] in outputs:
            continue
        users = consumers.get(n.output[0], [])
        if len(users) == 1 and users[0].op_type == "Quant" and not _attr(users[0], "signed", 1) \
                and users[0].input[0] == n.output[0]:
            users[0].input[0] = n.input[0]
            removed.append(n)
    for n in removed:
        graph.node.remove(n)
    return len(removed)


def _rename_io(graph, old: str, new: str) -> None:
    for n in graph.node:
        for k, v in enumerate(n.input):
            if v == old:
                n.input[k] = new
        for k, v in enumerate(n.output):
            if v == old:
                n.output[k] = new
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def _module_of(initializer_name: str) -> str:
    return initializer_name[: -len(".weight")] if initializer_name.endswith(".weight") else initializer_name


def _normalise_graph(g, layers: list[LayerExport]):
    """Weights out of the graph inputs, I/O named ``input``/``logits``; lookup tables."""
    _strip_weight_inputs(g)
    if len(g.input) == 1:
        _rename_io(g, g.input[0].name, "input")
    if len(g.output) == 1:
        _rename_io(g, g.output[0].name, "logits")
    inits = {i.name: i for i in g.initializer}
    return inits, _producers(g), {le.module: le for le in layers}


def patch_and_annotate(model: onnx.ModelProto, layers: list[LayerExport], cfg: ModelConfig,
                       test_accuracy: float | None) -> onnx.ModelProto:
    g = model.graph
    _fold_relu_into_unsigned_quant(g)
    inits, producers, by_module = _normalise_graph(g, layers)
    meta_layers = {}
    for node in g.node:
        if node.op_type not in _WEIGHT_OPS:
            continue
        q = _weight_quant_node(g, node, producers, inits)
        if q is None:
            weight = node.input[1]
            # Float layers: torch stores the weight pre-transposed under a generated name.
            le = by_module.get(_module_of(weight)) or by_module.get(_module_of_node(node.name))
            if le is None or le.quant != "float":
                raise RuntimeError(f"node '{node.name}': weight '{weight}' has no Quant node but the layer is quantized")
            meta_layers[node.name] = {"order": len(meta_layers), "weight": weight, "weight_bits": None,
                                      "input_bits": None, "input_signed": None, "acc_bits": None, "quant": "float"}
            continue
        init = inits[q.input[0]]
        le = by_module.get(_module_of(init.name))
        if le is None or le.weight_int is None:
            raise RuntimeError(f"node '{node.name}': cannot match weight '{init.name}' to a quantized layer")
        old = numpy_helper.to_array(init)
        if old.shape != le.weight_int.shape:
            raise RuntimeError(f"node '{node.name}': weight shape {old.shape} != layer '{le.module}' {le.weight_int.shape}")
        value = (le.weight_int.astype(np.float32) * le.weight_scale.astype(np.float32)).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(value, init.name))
        meta_layers[node.name] = {
            "order": len(meta_layers), "weight": init.name, "weight_bits": le.weight_type.bits,
            "input_bits": le.input_type.bits, "input_signed": le.input_type.signed,
            "acc_bits": le.acc_bits, "quant": le.quant,
        }
    meta = {
        "version": __version__, "dataset": cfg.dataset, "test_accuracy": test_accuracy,
        "input": cfg.input_quant.to_json(), "layers": meta_layers,
    }
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    return model


def verify_onnx(path: str | Path, layers: list[LayerExport] | None = None) -> dict[str, dict]:
    """Re-read ``path`` and prove each constrained layer's exact range fits its target P.

    Uses only the file (Quant nodes' integers and the ``accumulus`` metadata); when
    ``layers`` is given, also checks the integers equal PyTorch's ``quant_weight()``.
    Returns per-layer widths; raises UserError naming layer and numbers otherwise.
    """
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise UserError(f"{path} has no '{METADATA_KEY}' metadata; export it with 'accumulus export'")
    meta = json.loads(props[METADATA_KEY])
    found = read_layers(model)
    by_weight = {le.module + ".weight": le for le in (layers or [])}
    report = {}
    for node_name, info in meta["layers"].items():
        if info["quant"] == "float":
            continue
        if node_name not in found:
            raise UserError(f"{path}: layer '{node_name}' is in the metadata but has no weight Quant node")
        f = found[node_name]
        w = f["int"]
        le = by_weight.get(info["weight"])
        if le is not None and not np.array_equal(w, le.weight_int):
            bad = int(np.sum(w != le.weight_int))
            raise UserError(f"{path}: layer '{node_name}': {bad} of {w.size} exported integer weights differ "
                            f"from quant_weight(); re-export the model")
        if np.any(np.asarray(f["zero_point"]) != 0):
            raise UserError(f"{path}: layer '{node_name}': weight zero point is not 0")
        w2 = w.reshape(w.shape[0], -1)
        in_type = IntType(int(info["input_bits"]), bool(info["input_signed"]))
        target = info["acc_bits"]
        widths = layer_widths(w2, f["type"], in_type, target=target)
        bad = widths.violations()
        if bad:
            c = bad[0]
            raise UserError(
                f"{path}: layer '{node_name}' channel {c}: exact accumulator range [{widths.lo[c]}, {widths.hi[c]}] "
                f"needs {widths.exact[c]} bits > target P={target} (L1 norm {widths.l1[c]}, {len(bad)} channels over); "
                f"the export does not keep training's guarantee"
            )
        report[node_name] = {"exact_bits": int(widths.exact.max()), "acc_bits": target,
                             "datatype_bits": int(widths.datatype), "l1_max": int(widths.l1.max()),
                             "zeros": float(np.mean(w == 0))}
    return report


def export_model(model: nn.Module, cfg: ModelConfig, out_dir: str | Path, sample: torch.Tensor,
                 test_accuracy: float | None = None, fmt: str = "qonnx") -> Path:
    """Write ``out_dir/model.onnx`` (``fmt='qonnx'``) or ``out_dir/model.qcdq.onnx`` (``'qcdq'``).

    ``sample`` is a small input batch (N, C, H, W): it drives the forward pass that captures
    each layer's input QuantTensor, and its first image traces the graph (batch size 1).
    """
    if cfg.quant == "mls":
        return export_mls_model(model, cfg, out_dir, test_accuracy)
    from brevitas.export import export_onnx_qcdq, export_qonnx

    if fmt not in ("qonnx", "qcdq"):
        raise UserError(f"unknown export format '{fmt}': choose qonnx or qcdq")
    if fmt == "qcdq" and cfg.quant != "float" and min(cfg.act_bits, cfg.highway_bits or cfg.act_bits) < 2:
        # Brevitas' QCDQ export asserts on 1-bit quantizers (QuantizeLinear has no 1-bit form)
        raise UserError(f"QCDQ cannot hold the model's 1-bit activations (act_bits {cfg.act_bits}); "
                        "export QONNX instead (--format qonnx)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    layers = quant_weights(model, cfg, sample)
    path = out_dir / ("model.onnx" if fmt == "qonnx" else "model.qcdq.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        # dynamo=False: the dynamo exporter emits Gemm and drops QuantTensors in residual adds.
        if fmt == "qonnx":
            export_qonnx(model, args=sample[:1], export_path=str(raw), dynamo=False)
        else:
            export_onnx_qcdq(model, args=sample[:1], export_path=str(raw), dynamo=False, opset_version=13)
        proto = onnx.load(str(raw))
    if fmt == "qonnx":
        _unsigned_bipolar_to_quant(proto.graph, model)
        proto = patch_and_annotate(proto, layers, cfg, test_accuracy)
        onnx.save(proto, str(path))
        verify_onnx(path, layers)
    else:
        proto = _patch_qcdq(proto, layers, cfg, test_accuracy)
        onnx.save(proto, str(path))
    return path


def _unsigned_bipolar_to_quant(graph, model: nn.Module) -> int:
    """Replace each ``BipolarQuant`` exported for an *unsigned* 1-bit quantizer by the
    equivalent ``Quant(bits=1, signed=0)``; returns how many.

    Brevitas' QONNX export writes every 1-bit activation quantizer as ``BipolarQuant``
    (values {-s, +s}), also an unsigned 1-bit ``QuantReLU`` whose values are {0, s}: after
    the ReLU every value became +s and the graph no longer computed the model.
    """
    inits = {i.name for i in graph.initializer}
    count = 0
    for k, node in enumerate(graph.node):
        if node.op_type != "BipolarQuant":
            continue
        # /acts.0/act_quant/export_handler/BipolarQuant -> the quantizer module acts.0.act_quant
        parts = [p for p in node.name.split("/") if p][:-1]
        quant = None
        while parts and quant is None:
            try:
                mod = model.get_submodule(".".join(parts))
            except AttributeError:
                mod = None
            quant = mod if mod is not None and hasattr(mod, "is_signed") else None
            parts = parts[:-1]
        if quant is None or quant.is_signed:
            continue
        names = []
        for base, value in (("zero_point", 0.0), ("bit_width", 1.0)):
            name = f"{node.name}/{base}"
            while name in inits:
                name += "_"
            graph.initializer.append(numpy_helper.from_array(np.float32(value), name))
            inits.add(name)
            names.append(name)
        new = onnx.helper.make_node("Quant", [node.input[0], node.input[1]] + names, list(node.output),
                                    name=node.name[: -len("BipolarQuant")] + "Quant", domain=node.domain,
                                    signed=0, narrow=0, rounding_mode="ROUND")
        graph.node.remove(node)
        graph.node.insert(k, new)
        count += 1
    return count


def _module_of_node(node_name: str) -> str:
    """torch's ONNX node names are ``/<module path with '/'>/<Op>``: ``/layers.1/MatMul`` -> ``layers.1``."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


def _patch_qcdq(model: onnx.ModelProto, layers: list[LayerExport], cfg: ModelConfig, test_accuracy) -> onnx.ModelProto:
    """QCDQ weights are ``int8 initializer -> Clip -> DequantizeLinear``: write quant_weight()'s integers."""
    g = model.graph
    inits, producers, by_module = _normalise_graph(g, layers)
    meta_layers = {}
    for node in g.node:
        if node.op_type not in _WEIGHT_OPS:
            continue
        le = by_module.get(_module_of_node(node.name))
        if le is None or le.weight_int is None:
            continue
        name = node.input[1]
        while name in producers and producers[name].op_type in _PASS_THROUGH:
            name = producers[name].input[0]
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise RuntimeError(f"QCDQ node '{node.name}': weight is not produced by DequantizeLinear")
        src = dq.input[0]
        if src in producers and producers[src].op_type == "Clip":
            src = producers[src].input[0]
        if src not in inits:
            raise RuntimeError(f"QCDQ node '{node.name}': integer weights are not an initializer")
        old = numpy_helper.to_array(inits[src])
        ints = le.weight_int.reshape(old.shape) if old.size == le.weight_int.size else None
        if ints is None:
            raise RuntimeError(f"QCDQ node '{node.name}': weight shape {old.shape} != {le.weight_int.shape}")
        dq_scale = _const(g, dq.input[1], inits, producers).astype(np.float32)
        if not np.allclose(dq_scale.reshape(-1), le.weight_scale.reshape(-1), rtol=1e-6, atol=0):
            raise RuntimeError(f"QCDQ node '{node.name}': DequantizeLinear scale differs from quant_weight()'s")
        inits[src].CopyFrom(numpy_helper.from_array(ints.astype(old.dtype), src))
        meta_layers[node.name] = {"order": len(meta_layers), "weight": src, "weight_bits": le.weight_type.bits,
                                  "input_bits": le.input_type.bits, "input_signed": le.input_type.signed,
                                  "acc_bits": le.acc_bits, "quant": le.quant}
    meta = {"version": __version__, "dataset": cfg.dataset, "test_accuracy": test_accuracy,
            "input": cfg.input_quant.to_json(), "format": "qcdq", "layers": meta_layers}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    return model


# -- MLS (docs/mls.md, "ONNX export") ---------------------------------------------------------
MLS_DOMAIN = "accumulus"
MLS_OP = "MLSQuant"


def _mls_quant_node(nodes, x: str, y: str, fmt, per_sample: int) -> None:
    from onnx import helper

    nodes.append(helper.make_node(MLS_OP, [x], [y], name=f"{y}_mls", domain=MLS_DOMAIN,
                                  mantissa_bits=fmt.mantissa_bits, exponent_bits=fmt.exponent_bits,
                                  group_size=fmt.group_size, group_bits=fmt.group_bits, per_sample=per_sample))


def export_mls_model(model: nn.Module, cfg: ModelConfig, out_dir: str | Path,
                     test_accuracy: float | None = None) -> Path:
    """Write ``out_dir/model.onnx`` of a ``quant="mls"`` model (quant/mls.py's MLSMLP / MLSCNN).

    Built node by node (opset 14 plus the ``accumulus`` domain): every MatMul-like node reads
    ``MLSQuant(weight)`` and ``MLSQuant(activation)``. Weights are stored pre-quantized (the
    exact values of their MLS codes, so the file holds the trained model whatever quantizer
    reads it; MLSQuant is idempotent on them), laid out ``(N, C, ...)`` so that groups run along
    axis 1, the input channels; a classifier reading a ``(C, H, W)`` tensor keeps its weight as
    ``(N, C, H, W)`` and reshapes after quantization. BatchNormalization is exported in eval
    form. The metadata key ``accumulus`` records ``{"quant": "mls", "mls": "M,E,G,Eg", ...}``.
    """
    from onnx import TensorProto, helper

    from .mls import MLSCNN, MLSMLP, MLSFormat, fake_quantize

    if not isinstance(model, (MLSMLP, MLSCNN)):
        raise UserError(f"MLS export needs an MLS model (quant/mls.py), got {type(model).__name__}")
    fmt = MLSFormat.parse(cfg.mls)
    model.eval()
    nodes, inits = [], []

    def const(name, a):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name))
        return name

    def weight(name, layer, view):
        w = layer.weight.detach().to(torch.float32).reshape(view)
        wq = fake_quantize(w, fmt, "nearest").numpy()
        const(f"{name}.weight", wq)
        _mls_quant_node(nodes, f"{name}.weight", f"{name}.weight_q", fmt, 0)
        return f"{name}.weight_q"

    def gemm(name, layer, x, view):
        wq = weight(name, layer, (layer.out_features,) + tuple(view))
        _mls_quant_node(nodes, x, f"{name}.input_q", fmt, 1)
        a = f"{name}.input_q"
        if len(view) > 1:
            nodes.append(helper.make_node("Flatten", [a], [f"{name}.input_flat"], name=f"{name}.flatten", axis=1))
            a = f"{name}.input_flat"
            inits.append(numpy_helper.from_array(np.array([layer.out_features, -1], np.int64), f"{name}.weight_shape"))
            nodes.append(helper.make_node("Reshape", [wq, f"{name}.weight_shape"], [f"{name}.weight_2d"],
                                          name=f"{name}.weight_reshape"))
            wq = f"{name}.weight_2d"
        nodes.append(helper.make_node("Gemm", [a, wq], [f"{name}.out"], name=name, transB=1))
        return f"{name}.out"

    x = "input"
    if isinstance(model, MLSMLP):
        nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
        x = "flat"
        for i, layer in enumerate(model.layers):
            x = gemm(f"layers.{i}", layer, x, (layer.in_features,))
            if i < len(model.layers) - 1:
                nodes.append(helper.make_node("Relu", [x], [f"acts.{i}.out"], name=f"acts.{i}"))
                x = f"acts.{i}.out"
    else:
        for i in (1, 2, 3):
            conv, bn = getattr(model, f"conv{i}"), getattr(model, f"bn{i}")
            wq = weight(f"conv{i}", conv, tuple(conv.weight.shape))
            _mls_quant_node(nodes, x, f"conv{i}.input_q", fmt, 1)
            p = int(conv.padding[0])
            nodes.append(helper.make_node("Conv", [f"conv{i}.input_q", wq], [f"conv{i}.out"], name=f"conv{i}",
                                          kernel_shape=list(conv.kernel_size), pads=[p] * 4,
                                          strides=list(conv.stride)))
            bn_in = [f"conv{i}.out"] + [const(f"bn{i}.{k}", getattr(bn, a).detach().numpy())
                                        for k, a in (("scale", "weight"), ("bias", "bias"),
                                                     ("mean", "running_mean"), ("var", "running_var"))]
            nodes.append(helper.make_node("BatchNormalization", bn_in, [f"bn{i}.out"], name=f"bn{i}", epsilon=bn.eps))
            nodes.append(helper.make_node("Relu", [f"bn{i}.out"], [f"act{i}.out"], name=f"act{i}"))
            x = f"act{i}.out"
            if i in (2, 3):
                k = 1 if i == 2 else 2
                nodes.append(helper.make_node("MaxPool", [x], [f"pool{k}.out"], name=f"pool{k}",
                                              kernel_shape=[2, 2], strides=[2, 2]))
                x = f"pool{k}.out"
        x = gemm("fc", model.fc, x, model.fc.group_view)
    nodes.append(helper.make_node("Identity", [x], ["logits"], name="output"))
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch"] + list(cfg.in_shape))
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.num_classes])
    graph = helper.make_graph(nodes, "accumulus_mls", [inp], [out], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid(MLS_DOMAIN, 1)],
                              producer_name="accumulus", producer_version=__version__)
    proto.ir_version = 8
    meta = {"version": __version__, "dataset": cfg.dataset, "test_accuracy": test_accuracy, "quant": "mls",
            "mls": cfg.mls, "input": cfg.input_quant.to_json(), "config": cfg.to_json()}
    helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(proto)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    onnx.save(proto, str(path))
    return path
