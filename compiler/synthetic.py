"""Synthetic plans: random integer MLPs/CNNs built straight as plans, no ONNX.

For design-space sweeps and benchmarks (MAC utilisation on a K x N layer, cost-model
calibration) and for testing hw/ and sim/ on shapes no trained model has. Weights are
random codes; thresholds are random sorted values inside each channel's exact range,
so every output code is reachable.
"""
from __future__ import annotations

import numpy as np

from .accumulators import group_channels, layer_widths, pe_widths
from .plan import FORMAT_VERSION, Plan
from .types import IntType, signed_bits


def _thresholds(rng, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    n = lo.size
    t = np.empty((n, levels), dtype=np.int64)
    for c in range(n):
        t[c] = np.sort(rng.integers(lo[c], hi[c] + 2, size=levels))
    return t


def _mac_layer(name, kind, inp, out, w, wtype, itype, out_type, pe, simd, rng, arrays, conv=None, target=None):
    lw = layer_widths(w, wtype, itype, target)
    order = group_channels(lw.exact, pe)
    arrays[f"{name}.weight"] = w
    layer = {
        "name": name, "kind": kind, "inputs": [inp], "output": out, "onnx_nodes": [],
        "weight": f"{name}.weight", "weight_type": wtype.to_json(), "input_type": itype.to_json(),
        "fan_in": int(w.shape[1]), "channels": int(w.shape[0]), "conv": conv,
        "acc": {
            "bits": {"datatype": lw.datatype, "a2q": lw.a2q.tolist(), "a2q_plus": lw.a2q_plus.tolist(),
                     "exact": lw.exact.tolist(), "target": target},
            "range": np.stack([lw.lo, lw.hi], axis=1).tolist(),
        },
        "requant": None,
        "folding": {"pe": pe, "simd": simd, "channel_order": order.tolist(),
                    "pe_acc_bits": pe_widths(lw.exact, pe, order).tolist()},
    }
    pixels = 1 if conv is None else conv["out_shape"][0] * conv["out_shape"][1]
    layer["cycles_per_frame"] = (w.shape[0] // pe) * (w.shape[1] // simd) * pixels
    if out_type is not None:
        levels = (1 << out_type.bits) - 1
        arrays[f"{name}.thresholds"] = _thresholds(rng, lw.lo, lw.hi, levels)
        arrays[f"{name}.descending"] = np.zeros(w.shape[0], dtype=bool)
        layer["requant"] = {
            "kind": "thresholds", "thresholds": f"{name}.thresholds", "descending": f"{name}.descending",
            "out_scale": 1, "out_bias": out_type.min, "out_type": out_type.to_json(),
            "threshold_bits": max(signed_bits(l, h + 1) for l, h in zip(lw.lo, lw.hi)),
        }
    return layer, lw


def mlp_plan(widths=(64, 64, 10), input_type=IntType(4, False), weight_bits=4, act_bits=4,
             pe=None, simd=None, argmax=False, seed=0, sparsity=0.0) -> Plan:
    """A random MLP plan: ``widths[0]`` inputs, then one matvec per following width.

    ``pe``/``simd`` are per-layer lists (default: 1 PE, SIMD = 1). Hidden layers requantize
    by thresholds to ``act_bits`` unsigned; the last layer outputs accumulators.
    """
    rng = np.random.default_rng(seed)
    n_layers = len(widths) - 1
    pe = list(pe or [1] * n_layers)
    simd = list(simd or [1] * n_layers)
    wtype = IntType(weight_bits, True)
    arrays: dict[str, np.ndarray] = {}
    tensors = {"x": {"shape": [widths[0]], "type": input_type.to_json(), "scale": 1.0}}
    layers, itype, inp = [], input_type, "x"
    for i in range(n_layers):
        k, n = widths[i], widths[i + 1]
        w = rng.integers(wtype.min, wtype.max + 1, size=(n, k))
        if sparsity:
            w[rng.random(w.shape) < sparsity] = 0
        last = i == n_layers - 1
        out_type = None if last else IntType(act_bits, False)
        name, out = f"fc{i}", f"t{i}"
        layer, lw = _mac_layer(name, "matvec", inp, out, w, wtype, itype, out_type, pe[i], simd[i], rng, arrays)
        if out_type is None:
            out_type = IntType(max(int(b) for b in lw.exact), True)
        tensors[out] = {"shape": [n], "type": out_type.to_json(), "scale": 1.0}
        layers.append(layer)
        itype, inp = out_type, out
    out_kind = "codes"
    if argmax:
        layers.append({"name": "argmax", "kind": "argmax", "inputs": [inp], "output": "class", "onnx_nodes": [],
                       "cycles_per_frame": widths[-1]})
        tensors["class"] = {"shape": [1], "type": IntType(max(1, (widths[-1] - 1).bit_length()), False).to_json()}
        inp, out_kind = "class", "argmax"
    doc = {
        "format_version": FORMAT_VERSION,
        "source": {"model": f"synthetic:mlp{list(widths)}:seed{seed}", "sha256": "", "metadata": None},
        "input": {"tensor": "x", "onnx_name": "x", "onnx_shape": [1, widths[0]], "scale": 1.0, "zero_point": 0,
                  "type": input_type.to_json(), "rounding_mode": "ROUND"},
        "tensors": tensors,
        "layers": layers,
        "output": {"tensor": inp, "onnx_name": "y", "kind": out_kind, "dequant": None, "trailing": []},
        "estimate": {"cycles_per_frame": max(l["cycles_per_frame"] for l in layers)},
        "options": {"synthetic": True},
    }
    return Plan(doc, arrays)


def conv_plan(in_shape=(8, 8, 1), channels=(8,), kernel=3, stride=1, pad=1, input_type=IntType(5, False),
              weight_bits=4, act_bits=4, pe=None, simd=None, seed=0) -> Plan:
    """A random chain of 2-D convolutions (HWC stream order) ending in accumulators."""
    rng = np.random.default_rng(seed)
    wtype = IntType(weight_bits, True)
    arrays: dict[str, np.ndarray] = {}
    h, wd, c = in_shape
    tensors = {"x": {"shape": [h, wd, c], "type": input_type.to_json(), "scale": 1.0}}
    layers, itype, inp = [], input_type, "x"
    pe = list(pe or [1] * len(channels))
    simd = list(simd or [1] * len(channels))
    for i, n in enumerate(channels):
        oh = (h + 2 * pad - kernel) // stride + 1
        ow = (wd + 2 * pad - kernel) // stride + 1
        conv = {"in_shape": [h, wd, c], "out_shape": [oh, ow, n], "kernel": [kernel, kernel],
                "stride": [stride, stride], "pads": [pad] * 4, "dilation": [1, 1], "groups": 1, "pad_value": 0}
        w = rng.integers(wtype.min, wtype.max + 1, size=(n, kernel * kernel * c))
        last = i == len(channels) - 1
        out_type = None if last else IntType(act_bits, False)
        name, out = f"conv{i}", f"t{i}"
        layer, lw = _mac_layer(name, "conv", inp, out, w, wtype, itype, out_type, pe[i], simd[i], rng, arrays, conv)
        if out_type is None:
            out_type = IntType(max(int(b) for b in lw.exact), True)
        tensors[out] = {"shape": [oh, ow, n], "type": out_type.to_json(), "scale": 1.0}
        layers.append(layer)
        itype, inp, h, wd, c = out_type, out, oh, ow, n
    doc = {
        "format_version": FORMAT_VERSION,
        "source": {"model": f"synthetic:conv:seed{seed}", "sha256": "", "metadata": None},
        "input": {"tensor": "x", "onnx_name": "x", "onnx_shape": [1, in_shape[2], in_shape[0], in_shape[1]],
                  "scale": 1.0, "zero_point": 0, "type": input_type.to_json(), "rounding_mode": "ROUND"},
        "tensors": tensors, "layers": layers,
        "output": {"tensor": inp, "onnx_name": "y", "kind": "codes", "dequant": None, "trailing": []},
        "estimate": {"cycles_per_frame": max(l["cycles_per_frame"] for l in layers)},
        "options": {"synthetic": True},
    }
    return Plan(doc, arrays)
