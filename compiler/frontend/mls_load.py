"""Lowering of an MLS graph (``accumulus.MLSQuant`` nodes, docs/mls.md) to an MLS plan.

The graph is the one ``quant/export.py`` writes for ``--quant mls``: every Conv / Gemm reads
``MLSQuant(weight initializer)`` (``per_sample=0``) and ``MLSQuant(activation)``
(``per_sample=1``, possibly through a Flatten; a Gemm's weight possibly through a Reshape
of a 4-D ``(N, C, H, W)`` weight, which then groups along ``C`` as a convolution would).
Weights become integer sign / exponent / mantissa / zero / group-exponent codes here
(compiler/mls.py's quantizer); activations are quantized at run time by the golden model
(``compiler.golden.run_mls``), per sample. A BatchNormalization and a Relu directly after
an MLS layer fold into its requantization: ``y = relu(T · 2^-shift · S_w · S_x · a_c + b_c)``,
the tensor scales applied once per output. MaxPool stays a separate (float, per-channel
max) layer. Anything else is refused with the node's name.

The MLS plan is a dict ``{"format": "accumulus-mls-plan", "version": 1, "source",
"input": {"name", "shape"}, "output", "layers": [...]}`` plus integer arrays (``MLSPlan``);
layouts are the ONNX ones (NCHW).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accumulus.errors import UserError

from .. import mls

__all__ = ["MLSPlan", "is_mls_model", "lower_mls", "MLS_DOMAIN", "MLS_OP", "PLAN_FORMAT"]

MLS_DOMAIN = "accumulus"
MLS_OP = "MLSQuant"
PLAN_FORMAT = "accumulus-mls-plan"
_CODE_FIELDS = ("sign", "exponent", "mantissa", "zero", "group_exponent")


@dataclass
class MLSPlan:
    doc: dict
    arrays: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[dict]:
        return self.doc["layers"]

    def weight_codes(self, layer: dict) -> mls.MLSCodes:
        w = layer["weight"]
        return mls.MLSCodes(*(self.arrays[f"{w}.{k}"] for k in _CODE_FIELDS), float(layer["weight_scale"]),
                            self.format(layer))

    @staticmethod
    def format(layer: dict) -> mls.MLSFormat:
        f = layer["mls"]
        return mls.MLSFormat(f["M"], f["E"], f["G"], f["Eg"])

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(json.dumps(self.doc, indent=1))
        np.savez_compressed(out / "plan.npz", **self.arrays)
        return out / "plan.json"

    @classmethod
    def load(cls, path) -> "MLSPlan":
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        doc = json.loads((folder / "plan.json").read_text())
        if doc.get("format") != PLAN_FORMAT:
            raise UserError(f"{folder / 'plan.json'} is not an MLS plan (format {doc.get('format')!r})")
        with np.load(folder / "plan.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(doc, arrays)


def is_mls_model(model) -> bool:
    return any(n.op_type == MLS_OP and n.domain == MLS_DOMAIN for n in model.graph.node)


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fmt(node) -> tuple[mls.MLSFormat, int]:
    a = _attrs(node)
    try:
        f = mls.MLSFormat(int(a["mantissa_bits"]), int(a["exponent_bits"]), int(a["group_size"]), int(a["group_bits"]))
    except KeyError as exc:
        raise UserError(f"MLSQuant node '{node.name}' lacks attribute {exc.args[0]}; see docs/mls.md") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"MLSQuant node '{node.name}': {exc}") from None
    return f, int(a.get("per_sample", 1))


def lower_mls(path) -> MLSPlan:
    """Lower the MLS ONNX model at ``path`` to an :class:`MLSPlan`."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    data = path.read_bytes()
    model = onnx.load_from_string(data)
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    init_names = set(consts)
    inputs = [i for i in g.input if i.name not in init_names]
    if len(inputs) != 1 or len(g.output) != 1:
        raise UserError(f"{path}: an MLS model needs one input and one output, got {len(inputs)} and {len(g.output)}")
    inp = inputs[0]
    in_shape = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    arrays: dict[str, np.ndarray] = {}
    wcodes: dict[str, dict] = {}        # tensor -> {"key", "shape", "scale", "fmt"} (weight codes)
    actq: dict[str, tuple] = {}         # MLSQuant(activation) output -> (activation, fmt, flattened)
    layers: list[dict] = []
    alias: dict[str, str] = {}
    last_mls: dict[str, dict] = {}      # tensor -> the MLS layer whose requant produces it

    def name_of(t):
        while t in alias:
            t = alias[t]
        return t

    for node in g.node:
        op, ins, outs = node.op_type, list(node.input), list(node.output)
        where = f"{path.name}: node '{node.name or op}' ({op})"
        if op == MLS_OP and node.domain == MLS_DOMAIN:
            fmt, per_sample = _fmt(node)
            if ins[0] in consts:
                w = consts[ins[0]]
                codes = mls.quantize(w, fmt)
                key = f"w{len(wcodes)}"
                for k in _CODE_FIELDS:
                    arrays[f"{key}.{k}"] = getattr(codes, k).astype(np.int8 if k != "group_exponent" else np.int16)
                wcodes[outs[0]] = {"key": key, "shape": list(w.shape), "scale": codes.tensor_scale, "fmt": fmt}
            else:
                if not per_sample:
                    raise UserError(f"{where}: an activation needs per_sample=1 (one tensor scale per frame); "
                                    "a scale over the whole batch has no per-frame form")
                actq[outs[0]] = (name_of(ins[0]), fmt, False)
            continue
        if op == "Flatten" and ins[0] in actq:
            a, f, _ = actq[ins[0]]
            actq[outs[0]] = (a, f, True)
            continue
        if op == "Flatten":
            if _attrs(node).get("axis", 1) != 1:
                raise UserError(f"{where}: MLS plans take Flatten with axis 1")
            layers.append({"name": node.name or f"flatten{len(layers)}", "kind": "flatten", "input": name_of(ins[0]),
                           "output": outs[0]})
            continue
        if op == "Reshape" and ins[0] in wcodes:
            wcodes[outs[0]] = {**wcodes[ins[0]], "reshaped": True}
            continue
        if op == "Identity":
            alias[outs[0]] = ins[0]
            continue
        if op in ("Conv", "Gemm"):
            if ins[0] not in actq or ins[1] not in wcodes or len(ins) > 2 and ins[2]:
                raise UserError(f"{where}: an MLS {op} reads MLSQuant(activation) and MLSQuant(weight) and has no "
                                "bias; see docs/mls.md")
            act, fmt, _ = actq[ins[0]]
            w = wcodes[ins[1]]
            if w["fmt"] != fmt:
                raise UserError(f"{where}: weight format {w['fmt'].name} and input format {fmt.name} differ")
            a = _attrs(node)
            layer = {"name": node.name or f"mls{len(layers)}", "input": act, "output": outs[0],
                     "weight": w["key"], "weight_shape": w["shape"], "weight_scale": w["scale"],
                     "mls": {"M": fmt.mantissa_bits, "E": fmt.exponent_bits, "G": fmt.group_size, "Eg": fmt.group_bits},
                     "requant": {"mult": None, "bias": None, "relu": False}}
            if op == "Conv":
                pads = list(a.get("pads", [0, 0, 0, 0]))
                strides = list(a.get("strides", [1, 1]))
                if len(set(pads)) != 1 or len(set(strides)) != 1 or a.get("group", 1) != 1 or \
                        any(d != 1 for d in a.get("dilations", [1, 1])):
                    raise UserError(f"{where}: MLS convolutions need equal pads and strides, group 1, dilation 1")
                layer.update(kind="mls_conv", padding=int(pads[0]), stride=int(strides[0]))
            else:
                if a.get("transB", 0) != 1 or a.get("transA", 0) != 0 or a.get("alpha", 1.0) != 1.0:
                    raise UserError(f"{where}: an MLS Gemm needs transB=1, transA=0, alpha=1 (as quant/export.py writes)")
                layer.update(kind="mls_matvec")
            layers.append(layer)
            last_mls[outs[0]] = layer
            continue
        if op == "BatchNormalization" and ins[0] in last_mls and last_mls[ins[0]]["requant"]["mult"] is None \
                and not last_mls[ins[0]]["requant"]["relu"]:
            layer = last_mls.pop(ins[0])
            s, b, mean, var = (consts[t].astype(np.float64) for t in ins[1:5])
            eps = float(_attrs(node).get("epsilon", 1e-5))
            mult = s / np.sqrt(var + np.float64(np.float32(eps)))
            layer["requant"]["mult"] = mult.tolist()
            layer["requant"]["bias"] = (b - mean * mult).tolist()
            layer["output"] = outs[0]
            layer.setdefault("onnx_nodes", []).append(node.name)
            last_mls[outs[0]] = layer
            continue
        if op == "Relu" and ins[0] in last_mls:
            layer = last_mls.pop(ins[0])
            layer["requant"]["relu"] = True
            layer["output"] = outs[0]
            last_mls[outs[0]] = layer
            continue
        if op == "MaxPool":
            a = _attrs(node)
            if any(p != 0 for p in a.get("pads", [0, 0, 0, 0])) or a.get("ceil_mode", 0):
                raise UserError(f"{where}: MLS plans take MaxPool without padding or ceil_mode")
            k = list(a["kernel_shape"])
            layers.append({"name": node.name or f"pool{len(layers)}", "kind": "maxpool", "input": name_of(ins[0]),
                           "output": outs[0], "kernel": k, "stride": list(a.get("strides", k))})
            continue
        raise UserError(f"{where}: not supported in an MLS graph (supported: MLSQuant, Conv, Gemm, "
                        "BatchNormalization and Relu after them, MaxPool, Flatten, Reshape of a weight, Identity)")
    out = name_of(g.output[0].name)
    produced = {l["output"] for l in layers}
    if out not in produced:
        raise UserError(f"{path}: the output '{g.output[0].name}' is not produced by an MLS layer")
    doc = {"format": PLAN_FORMAT, "version": 1,
           "source": {"model": str(path), "sha256": hashlib.sha256(data).hexdigest()},
           "input": {"name": inp.name, "shape": in_shape}, "output": out, "layers": layers}
    return MLSPlan(doc, arrays)
