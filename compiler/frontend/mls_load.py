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

The MLS plan is a dict ``{"format": "accumulus-mls-plan", "version": 2, "source",
"input": {"name", "shape", "bits", "scale", "signed"}, "tensors", "output", "layers": [...]}``
plus integer arrays (``MLSPlan``); layouts are the ONNX ones (NCHW).

Fixed point between MLS layers (docs/mls.md, "Integer semantics"): every tensor is an
integer tensor ``X`` with a real scale ``sigma`` (the graph input: its pixel codes and the
dataset's input scale; a layer output: ``2^-f``). An MLS layer quantizes ``X`` per sample
with integer operations (``compiler.mls.quantize_int``, tensor scale ``S = max|X|``),
computes the integer dot accumulators ``T`` and requantizes each output channel ``c`` as

    Y = relu( rne(T * S * A_c, r) + B_c )

(``rne(v, r)``: ``v / 2^r`` rounded half to even), with ``A_c = rint(coef_c * 2^r)``,
``coef_c = S_w * mult_c * 2^-shift * sigma_in / sigma_out`` held to ``MULT_BITS``
significant bits and ``B_c = rint(b_c / sigma_out)``. ``sigma_out = 2^-f`` is chosen so that
the layer's static bound ``|y_c| <= ||w_c||_1 * bound_in * |mult_c| + |b_c|`` (a quantized
input never exceeds its tensor scale) fits ``act_bits`` signed bits.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accumulus.errors import UserError

from .. import mls

__all__ = ["MLSPlan", "is_mls_model", "is_mls_plan", "lower_mls", "reference_evaluator", "verify_mls",
           "cost_estimate", "MLS_DOMAIN", "MLS_OP", "PLAN_FORMAT", "ACT_BITS", "MULT_BITS"]

MLS_DOMAIN = "accumulus"
MLS_OP = "MLSQuant"
PLAN_FORMAT = "accumulus-mls-plan"
PLAN_VERSION = 2
ACT_BITS = 32          # signed width of the fixed-point activations between MLS layers
MULT_BITS = 24         # significant bits of the requantization multipliers A_c
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
        # int64: the stored int8/int16 codes would wrap in element_integers' shifts (a 4M2E
        # element is 31 << 3)
        return mls.MLSCodes(*(self.arrays[f"{w}.{k}"].astype(np.int64) for k in _CODE_FIELDS),
                            float(layer["weight_scale"]), self.format(layer))

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
    """True when the ONNX model (a ModelProto or a path) holds ``accumulus.MLSQuant`` nodes."""
    if not hasattr(model, "graph"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    return any(n.op_type == MLS_OP and n.domain == MLS_DOMAIN for n in model.graph.node)


def is_mls_plan(path) -> bool:
    """True when the project folder (or plan.json) at ``path`` holds an MLS plan."""
    p = Path(path)
    p = p if p.suffix == ".json" else p / "plan.json"
    try:
        return json.loads(p.read_text()).get("format") == PLAN_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


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


def lower_mls(path, act_bits: int = ACT_BITS) -> MLSPlan:
    """Lower the MLS ONNX model at ``path`` to an :class:`MLSPlan` (fixed point ``act_bits``)."""
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
    meta = {p.key: p.value for p in model.metadata_props}.get("accumulus")
    try:
        iq = json.loads(meta)["input"]
        in_spec = {"bits": int(iq["bits"]), "scale": float(iq["scale"]), "signed": bool(iq.get("signed", False))}
    except (TypeError, ValueError, KeyError):
        raise UserError(f"{path}: an MLS model needs the 'accumulus' metadata with the input quantizer "
                        "({'input': {'bits', 'scale', 'signed'}}), as 'accumulus export' writes it") from None
    doc = {"format": PLAN_FORMAT, "version": PLAN_VERSION,
           "source": {"model": str(path), "sha256": hashlib.sha256(data).hexdigest()},
           "input": {"name": inp.name, "shape": in_shape, **in_spec}, "output": out, "layers": layers}
    plan = MLSPlan(doc, arrays)
    _fixed_point(plan, act_bits)
    return plan


def _fixed_point(plan: MLSPlan, act_bits: int) -> None:
    """Choose every tensor's fixed-point scale and each MLS layer's integer requantization
    (module docstring); records ``plan.doc["tensors"]`` and ``layer["requant"]`` fields."""
    doc = plan.doc
    spec = doc["input"]
    lo = -(1 << (spec["bits"] - 1)) if spec["signed"] else 0
    hi = (1 << (spec["bits"] - 1)) - 1 if spec["signed"] else (1 << spec["bits"]) - 1
    tensors = {spec["name"]: {"scale": spec["scale"], "bits": spec["bits"] + (0 if spec["signed"] else 1),
                              "bound": max(abs(lo), hi) * spec["scale"], "max_int": max(abs(lo), hi),
                              "shape": list(spec["shape"])}}
    for layer in plan.layers:
        src = tensors[layer["input"]]
        shp = src["shape"]
        layer["in_shape"] = list(shp)
        if layer["kind"] == "flatten":
            out_shape = [int(np.prod(shp))]
        elif layer["kind"] == "maxpool":
            (kh, kw), (sh, sw) = layer["kernel"], layer["stride"]
            out_shape = [shp[0], (shp[1] - kh) // sh + 1, (shp[2] - kw) // sw + 1]
        elif layer["kind"] == "mls_conv":
            _, _, kh, kw = layer["weight_shape"]
            p, st = layer["padding"], layer["stride"]
            out_shape = [layer["weight_shape"][0], (shp[1] + 2 * p - kh) // st + 1, (shp[2] + 2 * p - kw) // st + 1]
        else:
            out_shape = [layer["weight_shape"][0]]
        layer["out_shape"] = out_shape
        if not layer["kind"].startswith("mls_"):
            tensors[layer["output"]] = {**src, "shape": out_shape}
            continue
        fmt = plan.format(layer)
        wc = plan.weight_codes(layer)
        wq = mls.dequantize(wc).reshape(wc.shape[0], -1)
        n = wc.shape[0]
        rq = layer["requant"]
        mult = np.asarray(rq["mult"], np.float64) if rq["mult"] is not None else np.ones(n)
        bias = np.asarray(rq["bias"], np.float64) if rq["bias"] is not None else np.zeros(n)
        l1 = np.abs(wq).sum(axis=1)
        bound = float(np.max(l1 * src["bound"] * np.abs(mult) + np.abs(bias))) * (1 + 1e-9)
        if rq["relu"]:
            bound = max(bound, 1e-30)
        top = max(int(np.ceil(np.log2(bound))), 0) if bound > 0 else 0
        frac = act_bits - 3 - top             # sign, one bit for rounding B_c and T*S*A_c, headroom
        sigma = 2.0 ** -frac
        coef = wc.tensor_scale * mult * 2.0 ** -fmt.output_shift * src["scale"] / sigma
        big = float(np.max(np.abs(coef)))
        r = MULT_BITS - 1 - int(np.floor(np.log2(big))) - 1 if big > 0 else 0
        r = max(r, 0)
        a = [int(v) for v in np.rint(coef * 2.0 ** r)]
        b = [int(v) for v in np.rint(bias / sigma)]
        max_int = int(np.ceil(bound / sigma)) + 2
        if max_int > (1 << (act_bits - 1)) - 1:
            raise UserError(f"MLS layer '{layer['name']}': outputs up to {bound:.4g} need more than "
                            f"{act_bits} fixed-point bits")
        t_max = int(np.max(np.ceil(l1 / wc.tensor_scale * 2.0 ** fmt.output_shift))) + 1
        rq.update(A=a, B=b, shift=r, in_scale=src["scale"], out_scale=sigma, out_frac=frac, out_bits=act_bits,
                  in_bits=src["bits"], in_max_int=src["max_int"], acc_max=t_max, bound=bound)
        tensors[layer["output"]] = {"scale": sigma, "bits": act_bits, "bound": bound, "max_int": max_int,
                                    "shape": out_shape}
    doc["tensors"] = tensors
    doc["act_bits"] = act_bits


# -- reference execution and the compile-time check ------------------------------------------
_OPRUN = None


def reference_op():
    """The onnx.reference ``OpRun`` of ``accumulus.MLSQuant``: :func:`compiler.mls.fake_quantize`
    (numpy, the one definition of the float quantizer)."""
    global _OPRUN
    if _OPRUN is None:
        from onnx.reference.op_run import OpRun

        class MLSQuant(OpRun):
            op_domain = MLS_DOMAIN

            def _run(self, x, mantissa_bits=None, exponent_bits=None, group_size=None, group_bits=None,
                     per_sample=None):
                fmt = mls.MLSFormat(int(mantissa_bits), int(exponent_bits), int(group_size), int(group_bits))
                return (mls.fake_quantize(x, fmt, per_sample=bool(1 if per_sample is None else per_sample)),)

        _OPRUN = MLSQuant
    return _OPRUN


def reference_evaluator(model, outputs=None):
    """onnx.reference ``ReferenceEvaluator`` of an MLS model (path or ModelProto) with the
    MLSQuant op; ``outputs`` (tensor names) replaces the graph outputs."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if outputs is not None:
        m = onnx.ModelProto.FromString(m.SerializeToString())
        del m.graph.output[:]
        for t in outputs:
            m.graph.output.append(helper.make_empty_tensor_value_info(t))
    return ReferenceEvaluator(m, new_ops=[reference_op()])


TIE_REL = 1e-5     # float32 evaluation of the reference: relative to the sample's largest magnitude


def calibration_batch(plan: MLSPlan, n: int, seed: int = 0) -> np.ndarray:
    """``n`` float inputs whose codes are uniform over the input quantizer's range."""
    spec = plan.doc["input"]
    lo = -(1 << (spec["bits"] - 1)) if spec["signed"] else 0
    hi = (1 << (spec["bits"] - 1)) - 1 if spec["signed"] else (1 << spec["bits"]) - 1
    rng = np.random.default_rng(seed)
    codes = rng.integers(lo, hi + 1, (n,) + tuple(spec["shape"]))
    return (codes * np.float32(spec["scale"])).astype(np.float32)


def verify_mls(plan: MLSPlan, model_path, x: np.ndarray | None = None, n: int = 32) -> dict:
    """The golden model (integers) beside onnx.reference (float, :func:`reference_op`).

    For each sample, the MLS codes of every MLS layer's input are compared in graph order
    (the golden model's integer codes, and ``quantize`` of the reference's float tensor). At
    the first layer where they differ, the two tensors must agree to ``TIE_REL`` of the
    sample's largest magnitude (the quantizer, a step function, saw an element within
    float32 / fixed-point rounding of a step: a tie), and the sample is excused from there on.
    A sample without any code difference must have the reference's logits to ``1e-4`` of
    their largest magnitude. Returns a JSON-able summary with ``ok``.
    """
    from .. import golden

    batch = calibration_batch(plan, n)
    if x is not None:
        x = np.asarray(x, np.float32)
        if tuple(x.shape[1:]) != tuple(plan.doc["input"]["shape"]):
            raise UserError(f"--calib: array of shape {x.shape}, the MLS model expects "
                            f"(B, {', '.join(map(str, plan.doc['input']['shape']))})")
        batch = np.concatenate([batch, x])
    # the reference reads exactly the golden model's input codes
    spec = plan.doc["input"]
    batch = (golden.mls_input_codes(plan, batch) * np.float32(spec["scale"])).astype(np.float32)
    env = golden.run_mls(plan, batch)
    layers = [l for l in plan.layers if l["kind"].startswith("mls_")]
    names = [l["input"] for l in layers] + [plan.doc["output"]]
    got = reference_evaluator(model_path, names).run(None, {spec["name"]: batch})
    ref = dict(zip(names, got))
    out = plan.doc["output"]
    ties, bad, first = [], [], None
    for i in range(len(batch)):
        verdict = None
        for l in layers:
            fmt = plan.format(l)
            gi = env[l["input"] + ".int"][i:i + 1]
            ca = mls.quantize_int(gi, fmt)
            cb = mls.quantize(ref[l["input"]][i:i + 1], fmt)
            if all(np.array_equal(getattr(ca, k), getattr(cb, k)) for k in _CODE_FIELDS):
                continue
            a, b = env[l["input"]][i], ref[l["input"]][i]
            d = float(np.abs(a.astype(np.float64) - b).max())
            if d <= TIE_REL * float(np.abs(b).max()):
                verdict = "tie"
            else:
                verdict = f"sample {i}: layer '{l['name']}' input codes differ, |golden - reference| = {d:.3g}"
            break
        if verdict is None:
            d = float(np.abs(env[out][i].astype(np.float64) - ref[out][i]).max())
            if d > 1e-4 * float(np.abs(ref[out][i]).max()):
                verdict = f"sample {i}: output differs by {d:.3g} with every MLS code equal"
        if verdict == "tie":
            ties.append(i)
        elif verdict:
            bad.append(i)
            first = first or verdict
    top1 = float(np.mean(env[out].argmax(1) == ref[out].argmax(1)))
    return {"reference": "onnx.reference (accumulus.MLSQuant: compiler/mls.py fake_quantize)",
            "samples": len(batch), "tie_samples": ties, "bad_samples": bad, "first_failure": first,
            "top1_agreement": top1, "ok": not bad}


def cost_estimate(plan: MLSPlan, lanes: int | None = None) -> list[dict]:
    """Per MLS layer: dot products, MACs, accumulator widths and the cycles of one
    ``hw/mls_mac.py`` engine with ``lanes`` (default ``G``) element pairs per cycle."""
    rows = []
    for layer in plan.layers:
        if not layer["kind"].startswith("mls_"):
            continue
        fmt = plan.format(layer)
        ws = layer["weight_shape"]
        n, c = ws[0], ws[1]
        taps = int(np.prod(ws[2:])) if len(ws) > 2 else 1
        outs = int(np.prod(layer["out_shape"][1:])) if layer["kind"] == "mls_conv" else 1
        groups = -(-c // fmt.group_size)
        L = lanes or fmt.group_size
        steps = groups * (-(-fmt.group_size // L)) * taps
        rows.append({"layer": layer["name"], "kind": layer["kind"], "format": fmt.name, "outputs": n, "pixels": outs,
                     "dot_length": c * taps, "macs": n * outs * c * taps,
                     "group_acc_bits": fmt.group_acc_bits(fmt.group_size * taps),
                     "dot_acc_bits": fmt.dot_acc_bits(fmt.group_size * taps, groups),
                     "act_bits": layer["requant"]["out_bits"], "lanes": L,
                     "cycles": n * outs * steps})
    return rows
