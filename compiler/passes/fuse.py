"""Pass ``fuse``: fold a requant layer into the MAC/avg-pool layer that feeds it.

requires: an IntGraph from ``lower`` (MAC layers with ``requant: None``, avg-pool layers
          with an identity requant, requant layers reading them).
ensures:  every requant whose input is the sole output use of a MAC or avg-pool layer is
          that layer's ``requant``; the intermediate accumulator tensor disappears.
"""
from __future__ import annotations

from ..ir import MAC_KINDS, IntGraph, IntKind


def fuse(ig: IntGraph) -> IntGraph:
    uses: dict[str, int] = {}
    for layer in ig.layers:
        for t in layer.inputs:
            uses[t] = uses.get(t, 0) + 1
    producer = {l.output: l for l in ig.layers}
    out_tensor = ig.output["tensor"]
    merged: dict[str, object] = {}
    dropped = set()
    for layer in ig.layers:
        if layer.kind is not IntKind.REQUANT:
            continue
        src = layer.inputs[0]
        p = producer.get(src)
        if p is None or uses.get(src) != 1 or src == out_tensor or p.name in merged:
            continue
        ident = p.kind is IntKind.AVGPOOL and p.params["requant"]["kind"] == "multshift"
        if p.kind in MAC_KINDS and p.params["requant"] is None or ident:
            merged[p.name] = layer
            dropped.add(layer.name)
    if not merged:
        return ig
    layers = []
    tensors = dict(ig.tensors)
    for layer in ig.layers:
        if layer.name in dropped:
            continue
        r = merged.get(layer.name)
        if r is not None:
            tensors.pop(layer.output, None)
            layer = type(layer)(layer.kind, layer.name, layer.inputs, r.output, layer.onnx_nodes + r.onnx_nodes,
                                {**layer.params, "requant": r.params["requant"], "acc_tensor": layer.output,
                                 "acc_type": ig.tensors[layer.output].type,
                                 "onnx_tensor": r.params.get("onnx_tensor")})
        layers.append(layer)
    return ig.with_layers(layers, tensors=tensors)
