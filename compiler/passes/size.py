"""Pass ``size``: the four accumulator widths of every MAC layer (DESIGN.md).

requires: fused IntGraph; ``metadata`` is the model's ``accumulus`` metadata or None.
ensures:  every MAC layer has ``acc = {"bits": {...}, "range": [[lo, hi], ...]}`` from
          :mod:`compiler.accumulators`; a layer whose exact width exceeds its trained
          target P raises UserError naming the layer, channel, L1 norm and bound.
"""
from __future__ import annotations

import numpy as np

from accumulus.errors import UserError

from ..accumulators import a2q_plus_l1_budget, layer_widths
from ..ir import MAC_KINDS, IntGraph


def _target(metadata, layer) -> int | None:
    if not metadata:
        return None
    layers = metadata.get("layers") or {}
    if not isinstance(layers, dict):
        raise UserError("metadata 'accumulus': 'layers' must be an object keyed by node name")
    for node in layer.onnx_nodes:
        entry = layers.get(node)
        if isinstance(entry, dict) and entry.get("acc_bits") is not None:
            p = entry["acc_bits"]
            if not isinstance(p, int) or isinstance(p, bool) or not 2 <= p <= 64:
                raise UserError(f"metadata 'accumulus': layer '{node}' acc_bits {p!r} must be an integer in 2..64")
            return p
    return None


def size(ig: IntGraph, metadata: dict | None) -> IntGraph:
    layers = []
    for layer in ig.layers:
        if layer.kind not in MAC_KINDS:
            if layer.kind.value in ("requant",) and "acc" not in layer.params:
                lo = ig.tensors[layer.inputs[0]].type
                C = ig.tensors[layer.inputs[0]].shape[-1]
                layer = layer.with_params(acc={"range": [[lo.min, lo.max]] * C})
            layers.append(layer)
            continue
        p = layer.params
        target = _target(metadata, layer)
        lw = layer_widths(p["weight"], p["weight_type"], p["input_type"], target)
        bad = lw.violations()
        if bad:
            c = bad[0]
            raise UserError(
                f"layer '{layer.onnx_nodes[0]}' channel {c}: exact accumulator width {int(lw.exact[c])} bits "
                f"exceeds the trained target P={target} (integer-weight L1 norm {int(lw.l1[c])}, A2Q+ budget "
                f"{a2q_plus_l1_budget(target, p['input_type']):.1f}; {len(bad)} channel(s) over): the exported "
                "weights break the training guarantee; re-export with 'accumulus export' (it writes the quantized integers) or raise P")
        acc = {"bits": {"datatype": int(lw.datatype), "a2q": lw.a2q.tolist(), "a2q_plus": lw.a2q_plus.tolist(),
                        "exact": lw.exact.tolist(), "target": target},
               "range": np.stack([lw.lo, lw.hi], axis=1).tolist(), "l1": lw.l1.tolist()}
        layers.append(layer.with_params(acc=acc))
    return ig.with_layers(layers)
