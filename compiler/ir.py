"""The compiler's IR: frozen dataclasses over a closed set of op kinds.

Two levels share this module:

* :class:`Graph` of :class:`Node` -- the ONNX graph after the front end (constants
  folded, unsupported ops rejected). ``Op`` lists every ONNX op the compiler accepts; a new
  op is one enum member plus one case in each pass that dispatches on it (grep ``Op.``).
* :class:`IntGraph` of :class:`IntLayer` -- integer dataflow, one layer per plan layer
  (``IntKind``), produced by :mod:`compiler.passes.lower` and refined by the sizing and
  folding passes; :mod:`compiler.compile` writes it out as a plan.

``verify()`` checks structural invariants; the driver calls it after every pass.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .types import IntType

__all__ = ["Op", "Node", "Graph", "IntKind", "IntLayer", "IntTensor", "IntGraph", "IRError", "OP_BY_ONNX"]


class IRError(Exception):
    """An IR invariant broke: a compiler bug, not a user error."""


class Op(enum.Enum):
    """Every ONNX-level op the compiler accepts (domains normalised, see frontend)."""

    QUANT = "Quant"                      # QONNX Quant / IntQuant
    BIPOLAR_QUANT = "BipolarQuant"
    TRUNC = "Trunc"
    MULTITHRESHOLD = "MultiThreshold"    # FINN
    MATMUL = "MatMul"
    GEMM = "Gemm"
    CONV = "Conv"
    ADD = "Add"
    MUL = "Mul"
    DIV = "Div"
    SUB = "Sub"
    BATCHNORM = "BatchNormalization"
    RELU = "Relu"
    CLIP = "Clip"
    MAXPOOL = "MaxPool"
    AVGPOOL = "AveragePool"
    GLOBALAVGPOOL = "GlobalAveragePool"
    FLATTEN = "Flatten"
    RESHAPE = "Reshape"
    TRANSPOSE = "Transpose"
    SQUEEZE = "Squeeze"
    UNSQUEEZE = "Unsqueeze"
    IDENTITY = "Identity"
    SOFTMAX = "Softmax"
    ARGMAX = "ArgMax"
    TOPK = "TopK"
    QUANTIZE_LINEAR = "QuantizeLinear"
    DEQUANTIZE_LINEAR = "DequantizeLinear"
    QLINEAR_MATMUL = "QLinearMatMul"
    QLINEAR_CONV = "QLinearConv"
    MATMUL_INTEGER = "MatMulInteger"
    CONV_INTEGER = "ConvInteger"
    DEPTH_TO_SPACE = "DepthToSpace"
    RESIZE = "Resize"
    QLINEAR_ADD = "QLinearAdd"           # com.microsoft (onnxruntime's QOperator format)
    QGEMM = "QGemm"                      # com.microsoft
    QLINEAR_SOFTMAX = "QLinearSoftmax"   # com.microsoft, at the output only


# (domain family, op_type) -> Op. "" is the ONNX default domain; "qonnx" covers the three
# custom domains, which define the same ops (DESIGN.md).
QONNX_DOMAINS = ("onnx.brevitas", "qonnx.custom_op.general", "finn.custom_op.general", "qonnx.custom_op")
_QONNX_OPS = {"Quant": Op.QUANT, "IntQuant": Op.QUANT, "BipolarQuant": Op.BIPOLAR_QUANT, "Trunc": Op.TRUNC,
              "MultiThreshold": Op.MULTITHRESHOLD}
_MS_OPS = {"QLinearAdd": Op.QLINEAR_ADD, "QGemm": Op.QGEMM, "QLinearSoftmax": Op.QLINEAR_SOFTMAX}
OP_BY_ONNX: dict[tuple[str, str], Op] = {("qonnx", k): v for k, v in _QONNX_OPS.items()}
OP_BY_ONNX.update({("", op.value): op for op in Op if op.value not in _QONNX_OPS and op.value not in _MS_OPS})
OP_BY_ONNX.update({("microsoft", k): v for k, v in _MS_OPS.items()})


def domain_family(domain: str) -> str | None:
    if domain in ("", "ai.onnx"):
        return ""
    if domain in QONNX_DOMAINS or domain.startswith("finn.custom_op") or domain.startswith("qonnx.custom_op"):
        return "qonnx"
    if domain == "com.microsoft":
        return "microsoft"
    return None


@dataclass(frozen=True)
class Node:
    op: Op
    name: str
    inputs: tuple[str, ...]              # "" for an omitted optional input
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    domain_opset: int = 1                # opset of the node's domain (Trunc v1/v2)

    def attr(self, key: str, default=None):
        for k, v in self.attrs:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Graph:
    """An ONNX graph reduced to supported nodes in topological order.

    ``constants`` holds every initializer, bound input and folded subgraph value;
    ``shapes`` the inferred shape of every non-constant tensor (batch included).
    """

    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]              # non-constant graph inputs (the data input first)
    outputs: tuple[str, ...]
    constants: dict[str, np.ndarray] = field(hash=False, compare=False)
    shapes: dict[str, tuple[int, ...]] = field(hash=False, compare=False)
    metadata: dict | None = field(default=None, hash=False, compare=False)
    source: str = ""
    sha256: str = ""
    input_dtype: str = "float32"         # numpy dtype of the data input
    annotations: dict = field(default_factory=dict, hash=False, compare=False)  # tensor -> FINN datatype
    batch_axis: bool = True              # False: the declared input shape is one whole sample
    notes: tuple[str, ...] = ()          # front-end repairs the user should know of (carried into the plan)

    def verify(self) -> None:
        known = set(self.inputs) | set(self.constants)
        for node in self.nodes:
            if not isinstance(node.op, Op):
                raise IRError(f"node '{node.name}': op {node.op!r} is not an ir.Op")
            for name in node.inputs:
                if name and name not in known:
                    raise IRError(f"node '{node.name}' reads '{name}' before it is produced")
            for name in node.outputs:
                if name in known:
                    raise IRError(f"tensor '{name}' produced twice (node '{node.name}')")
                known.add(name)
        for name in self.outputs:
            if name not in known:
                raise IRError(f"graph output '{name}' is never produced")

    def with_nodes(self, nodes) -> "Graph":
        return replace(self, nodes=tuple(nodes))


# -- integer level --------------------------------------------------------------------------
class IntKind(enum.Enum):
    """Integer layer kinds; one per plan layer kind (docs/plan.md)."""

    MATVEC = "matvec"
    CONV = "conv"
    REQUANT = "requant"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    ADD = "add"
    ARGMAX = "argmax"
    REORDER = "reorder"          # DepthToSpace, nearest Resize: a row-wise stream reordering


@dataclass(frozen=True)
class IntTensor:
    """An integer tensor in stream order (no batch axis)."""

    shape: tuple[int, ...]
    type: IntType
    scale: tuple[float, ...] = (1.0,)    # informational: real = scale * (code - zero_point)
    zero_point: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class IntLayer:
    """One integer layer. ``params`` holds the plan keys of its kind (JSON-ready values,
    except numpy arrays which the emitter moves into plan.npz)."""

    kind: IntKind
    name: str
    inputs: tuple[str, ...]
    output: str
    onnx_nodes: tuple[str, ...]
    params: dict = field(hash=False, compare=False)

    def with_params(self, **updates) -> "IntLayer":
        return replace(self, params={**self.params, **updates})


MAC_KINDS = (IntKind.MATVEC, IntKind.CONV)


@dataclass(frozen=True)
class IntGraph:
    layers: tuple[IntLayer, ...]
    tensors: dict[str, IntTensor] = field(hash=False, compare=False)
    input: dict = field(hash=False, compare=False)       # plan "input" block
    output: dict = field(hash=False, compare=False)      # plan "output" block
    notes: tuple[str, ...] = ()                          # inexactness and other warnings

    def verify(self) -> None:
        known = {self.input["tensor"]}
        if self.input["tensor"] not in self.tensors:
            raise IRError(f"input tensor '{self.input['tensor']}' has no IntTensor")
        names = set()
        for layer in self.layers:
            if not isinstance(layer.kind, IntKind):
                raise IRError(f"layer '{layer.name}': kind {layer.kind!r} is not an IntKind")
            if layer.name in names:
                raise IRError(f"layer name '{layer.name}' used twice")
            names.add(layer.name)
            for t in layer.inputs:
                if t not in known:
                    raise IRError(f"layer '{layer.name}' reads '{t}' before it is produced")
            if layer.output in known:
                raise IRError(f"tensor '{layer.output}' produced twice")
            if layer.output not in self.tensors:
                raise IRError(f"layer '{layer.name}' output '{layer.output}' has no IntTensor")
            known.add(layer.output)
            if layer.kind in MAC_KINDS:
                w = layer.params["weight"]
                if w.ndim != 2 or w.shape[0] != layer.params["channels"] or w.shape[1] != layer.params["fan_in"]:
                    raise IRError(f"layer '{layer.name}': weight shape {w.shape} disagrees with channels/fan_in")
                wt = layer.params["weight_type"]
                if w.size and (w.min() < wt.min or w.max() > wt.max):
                    raise IRError(f"layer '{layer.name}': weights leave {wt}")
        if self.output["tensor"] not in known:
            raise IRError(f"output tensor '{self.output['tensor']}' is never produced")

    def with_layers(self, layers, **kw) -> "IntGraph":
        return replace(self, layers=tuple(layers), **kw)
