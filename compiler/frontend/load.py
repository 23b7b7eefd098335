"""Front end: an ONNX file -> :class:`compiler.ir.Graph`, or one :class:`UserError`.

Steps: read the file (external data only from inside the model's folder), check it,
bind extra graph inputs to constants, treat initializers listed as inputs (old IR) as
constants, propagate shapes, fold constant subgraphs (Shape/Gather/Concat/... chains,
arithmetic on constants; a Clip of integer weight codes read by DequantizeLinear is kept
for lower, which types the weight by its range), and reject every unsupported node at
once with a hint.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from accumulus.errors import UserError

from ..ir import OP_BY_ONNX, Graph, Node, Op, domain_family
from . import shapes as shape_rules

__all__ = ["load", "parse_binds", "FOLD_ONLY_OPS"]

MAX_MODEL_BYTES = 2 << 30

# Standard ops that are accepted only when every input is constant (folded away here).
FOLD_ONLY_OPS = {"Shape", "Gather", "Concat", "Cast", "Constant", "ConstantOfShape", "Slice", "Range",
                 "Expand", "Size", "Equal", "Where", "Sqrt", "Pow", "Neg", "Abs", "Floor", "Ceil",
                 "Round", "ReduceProd", "ReduceSum", "Max", "Min", "Exp", "Log", "Reciprocal"}
# Accepted ops that are folded too when all inputs are constant (weight preprocessing).
FOLDABLE_OPS = {Op.ADD, Op.MUL, Op.DIV, Op.SUB, Op.RESHAPE, Op.TRANSPOSE, Op.FLATTEN, Op.SQUEEZE,
                Op.UNSQUEEZE, Op.IDENTITY, Op.RELU, Op.CLIP}

HINTS = {
    "Sigmoid": "float activations have no integer form: quantize after a ReLU instead",
    "Tanh": "float activations have no integer form: use ReLU/hardtanh with a Quant",
    "LSTM": "recurrent layers are not supported",
    "LayerNormalization": "normalization must be BatchNormalization (folded into thresholds)",
}
DEFAULT_HINT = ("supported: QONNX Quant/BipolarQuant/Trunc/MultiThreshold, MatMul/Gemm/Conv, Add/Mul/Div/Sub, "
                "BatchNormalization, Relu/Clip, Max/Average pooling, layout ops, Softmax/ArgMax/TopK at the "
                "output, QuantizeLinear/DequantizeLinear and the QLinear/Integer ops; see docs/plan.md")


def parse_binds(items) -> dict[str, np.ndarray]:
    """``["NAME=FILE.npy", ...]`` -> {name: array}."""
    binds = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--bind '{item}': expected NAME=FILE.npy")
        name, path = item.split("=", 1)
        try:
            binds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise UserError(f"--bind {name}: cannot read '{path}' as a .npy array ({exc})") from None
    return binds


def _read_model(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    if not path.exists():
        raise UserError(f"{path}: no such file; pass the .onnx exported by 'accumulus export' or your tool")
    if path.is_dir():
        cand = path / "model.onnx"
        if not cand.exists():
            raise UserError(f"{path} is a folder without model.onnx; pass the .onnx file")
        path = cand
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise UserError(f"{path}: {size} bytes is larger than the 2 GB protobuf limit")
    raw = path.read_bytes()
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {str(exc)[:120]})") from None
    except Exception as exc:  # protobuf raises assorted internal errors on garbage
        raise UserError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise UserError(f"{path}: the ONNX model has no graph nodes (empty or truncated file?)")
    _load_external(model, path.parent.resolve(), path)
    return model, path, hashlib.sha256(raw).hexdigest()


def _load_external(model, base: Path, path: Path) -> None:
    """Fill external tensors, refusing any location outside the model's folder."""
    from onnx import TensorProto

    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                tensors.append(a.t)
    for t in tensors:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (base / loc).resolve()
        if not loc or os.path.isabs(loc) or not target.is_relative_to(base):
            raise UserError(f"{path}: tensor '{t.name}' stores its data at '{loc}', outside the model's folder "
                            f"{base}; move the data file next to the model")
        if not target.is_file():
            raise UserError(f"{path}: tensor '{t.name}': external data file '{loc}' not found next to the model")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise UserError(f"{path}: tensor '{t.name}': bad external data offset/length") from None
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read() if length is None else f.read(length)
        t.raw_data = data
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT


def _attrs(node) -> tuple:
    from onnx import helper

    out = []
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list):
            v = tuple(x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v)
        elif hasattr(v, "dims"):  # TensorProto attribute
            from onnx import numpy_helper
            v = numpy_helper.to_array(v)
        out.append((a.name, v))
    return tuple(out)


def _fold_standard(node, values: list, opset: int):
    """Evaluate one standard-domain node on constants with onnx's reference evaluator."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
    new = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))], name="fold")
    new.attribute.extend(node.attribute)
    feeds = {n: v for n, v in zip(names, values) if n}
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None)
           for n, v in feeds.items()]
    outs = [helper.make_value_info(f"o{k}", helper.TypeProto()) for k in range(len(node.output))]
    g = helper.make_graph([new], "fold", ins, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    res = ReferenceEvaluator(m).run(None, {n: np.asarray(v) for n, v in feeds.items()})
    del numpy_helper
    return [np.asarray(r) for r in res]


def _typed_weight_clip(n, consts: dict, readers: dict, outputs: set) -> bool:
    """True for a Clip of an integer constant read only by DequantizeLinear: QCDQ weights
    (``int8 initializer -> Clip(-7, 7) -> DequantizeLinear``). Folding it here would keep
    only the int8 storage type; lower takes the clip range as the weight's type instead."""
    if n.op_type != "Clip" or not n.input or n.input[0] not in consts or n.output[0] in outputs:
        return False
    users = readers.get(n.output[0], [])
    return (np.issubdtype(np.asarray(consts[n.input[0]]).dtype, np.integer) and bool(users)
            and all(domain_family(u.domain) == "" and u.op_type == "DequantizeLinear" for u in users))


def _add_custom_opsets(model) -> list[str]:
    """Add the opset import of every QONNX custom domain a node uses but the model does not
    declare. Brevitas and FINN exports often leave it out; the ONNX checker then rejects the
    model, while qonnx executes it. Version 1 is what qonnx assumes for a missing import."""
    from onnx import helper

    declared = {o.domain for o in model.opset_import}
    used = sorted({n.domain for n in model.graph.node if n.domain and domain_family(n.domain) == "qonnx"})
    missing = [d for d in used if d not in declared]
    for d in missing:
        model.opset_import.append(helper.make_opsetid(d, 1))
    return [f"the model has no opset import for domain '{d}' (used by its nodes): added as version 1"
            for d in missing]


def load(path, binds: dict[str, np.ndarray] | None = None) -> Graph:
    """Read, check and simplify an ONNX model; raise one UserError listing every problem."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model, path, sha = _read_model(path)
    notes = _add_custom_opsets(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises ValidationError and assorted C++ errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: the ONNX checker rejects the model: {first[:300]}") from None
    g = model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    std_opset = opsets.get("", opsets.get("ai.onnx", 13))

    consts: dict[str, np.ndarray] = {}
    for init in g.initializer:
        try:
            consts[init.name] = numpy_helper.to_array(init)
        except Exception as exc:
            raise UserError(f"{path}: initializer '{init.name}' is unreadable ({str(exc)[:100]})") from None
    binds = dict(binds or {})
    declared = [i.name for i in g.input]
    unknown = sorted(set(binds) - set(declared))
    if unknown:
        raise UserError(f"--bind {', '.join(unknown)}: no such graph input (inputs: {', '.join(declared)})")
    consts.update({k: np.asarray(v) for k, v in binds.items()})
    data_inputs = [i for i in g.input if i.name not in consts]
    if not data_inputs:
        raise UserError(f"{path}: every graph input is constant; nothing to compile")
    if len(data_inputs) > 1:
        extra = ", ".join(i.name for i in data_inputs[1:])
        raise UserError(f"{path}: graph inputs {extra} besides the data input '{data_inputs[0].name}' are not "
                        f"constants; bind them with --bind NAME=FILE.npy")
    shapes: dict[str, tuple[int, ...]] = {}
    inp = data_inputs[0]
    dims = []
    for d in inp.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None)
    if not dims:
        raise UserError(f"{path}: data input '{inp.name}' has no shape; export with a fixed input shape")
    # a leading dimension of 1 (or symbolic) is the batch axis; a fixed larger one (ONNX node
    # tests) makes the declared shape one whole sample
    batch_axis = dims[0] is None or dims[0] == 1
    if dims[0] is None:
        dims[0] = 1
    if any(d is None for d in dims[1:]):
        raise UserError(f"{path}: data input '{inp.name}' has symbolic dimensions {dims}; export with a fixed shape")
    shapes[inp.name] = tuple(dims)

    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    nodes: list[Node] = []
    bad: list[str] = []
    cascade: list[str] = []     # nodes downstream of a rejected one: listed only if nothing else is
    for k, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{k}"
        fam = domain_family(n.domain)
        op = OP_BY_ONNX.get((fam, n.op_type)) if fam is not None else None
        ins = list(n.input)
        all_const = all((not i) or i in consts for i in ins)
        if fam == "" and (n.op_type in FOLD_ONLY_OPS or (op in FOLDABLE_OPS)) and all_const \
                and not _typed_weight_clip(n, consts, readers, graph_outputs):
            try:
                vals = _fold_standard(n, [consts.get(i) for i in ins if True], std_opset)
            except Exception as exc:
                bad.append(f"{n.op_type} '{name}' (constant folding failed: {str(exc).splitlines()[0][:100]})")
                continue
            for o, v in zip(n.output, vals):
                consts[o] = v
            continue
        if fam == "" and n.op_type == "Shape" and ins[0] in shapes:
            consts[n.output[0]] = np.array(shapes[ins[0]], dtype=np.int64)
            continue
        if op is None:
            dom = n.domain or "ai.onnx"
            why = HINTS.get(n.op_type, DEFAULT_HINT if n.op_type not in FOLD_ONLY_OPS
                            else "only supported on constant inputs (shape computations)")
            bad.append(f"{n.op_type} (domain {dom}) '{name}': {why}")
            continue
        for i in ins:
            if i and i not in consts and i not in shapes:
                cascade.append(f"{n.op_type} '{name}': input '{i}' is produced by an unsupported node")
                break
        else:
            node = Node(op, name, tuple(ins), tuple(n.output), _attrs(n), opsets.get(n.domain, 1))
            try:
                out_shapes = shape_rules.infer(node, shapes, consts)
            except UserError as exc:
                bad.append(str(exc))
                continue
            for o, s in zip(node.outputs, out_shapes):
                if o:
                    shapes[o] = s
            nodes.append(node)
    if cascade and not bad:
        bad = cascade
    if bad:
        more = f" (+{len(bad) - 12} more)" if len(bad) > 12 else ""
        raise UserError(f"{path}: {len(bad)} unsupported node(s): " + "; ".join(bad[:12]) + more)
    outputs = tuple(o.name for o in g.output)
    for o in outputs:
        if o not in shapes and o not in consts:
            raise UserError(f"{path}: graph output '{o}' is not produced by any node")
    meta = None
    for p in model.metadata_props:
        if p.key == "accumulus":
            try:
                meta = json.loads(p.value)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: metadata 'accumulus' is not JSON ({exc})") from None
            if not isinstance(meta, dict):
                raise UserError(f"{path}: metadata 'accumulus' must be a JSON object")
    from onnx import helper
    try:
        in_dtype = str(helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))
    except (KeyError, ValueError):
        raise UserError(f"{path}: data input '{inp.name}' has no usable element type") from None
    annotations = {}
    for qa in g.quantization_annotation:
        for kv in qa.quant_parameter_tensor_names:
            if kv.key == "finn_datatype":
                annotations[qa.tensor_name] = kv.value
    graph = Graph(tuple(nodes), (inp.name,), outputs, consts, shapes, meta, str(path), sha, in_dtype, annotations,
                  batch_axis, tuple(notes))
    graph.verify()
    return graph
