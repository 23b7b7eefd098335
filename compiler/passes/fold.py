"""Pass ``fold``: PE/SIMD per MAC layer, channel grouping, cycles per frame.

requires: a sized IntGraph (every MAC layer has ``acc``).
ensures:  every layer has ``cycles_per_frame``; every MAC layer has ``folding`` with
          ``pe | channels``, ``simd | fan_in``, a width-grouping ``channel_order`` and
          per-PE built widths; the graph's estimate fits ``budget`` when any folding does.

Targets (FINN's cycle model, ``(N/PE)·(K/SIMD)·OH·OW`` per MAC layer):
* ``target_cycles`` (from ``--target-fps F --clock-mhz C``: C·1e6/F): each layer gets the
  fewest MAC lanes (PE·SIMD) that meet it, SIMD preferred on ties (wider ROM words, fewer
  accumulators);
* ``max_pes`` N: the fastest folding whose MAC lanes (PE·SIMD summed over layers) are <= N;
* neither: ``DEFAULT_TARGET_CYCLES`` (1024: an mnist-tfc-sized MLP then runs a frame in ~1k
  cycles with a few dozen lanes per layer).
With a board budget the target is relaxed (x1.25 steps) until the cost model fits.
"""
from __future__ import annotations

import math

import numpy as np

from accumulus.errors import UserError

from .. import cost as cost_model
from ..accumulators import group_channels, pe_widths
from ..ir import MAC_KINDS, IntGraph, IntKind

DEFAULT_TARGET_CYCLES = 1024


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _pixels(layer) -> int:
    conv = layer.params.get("conv")
    return 1 if conv is None else conv["out_shape"][0] * conv["out_shape"][1]


def _simd_options(layer) -> list[int]:
    """SIMD values the layer's input stream can deliver at one beat per cycle. A conv's
    sliding-window generator (hw/swg.py) emits SIMD elements per beat only when SIMD divides
    the input channels C or is a whole number of pixels (a multiple of C dividing the window);
    any other divisor of the fan-in would be fed at gcd(SIMD, C) per beat, slower than the
    cycle model says, so it is not offered."""
    K = layer.params["fan_in"]
    conv = layer.params.get("conv")
    if conv is None:
        return _divisors(K)
    c = conv["in_shape"][2]
    window = conv["kernel"][0] * conv["kernel"][1]
    return [s for s in _divisors(K) if c % s == 0 or (s % c == 0 and window % (s // c) == 0)]


def _choose(layer, target: float) -> tuple[int, int]:
    N, K = layer.params["channels"], layer.params["fan_in"]
    pix = _pixels(layer)
    best = None
    for pe in _divisors(N):
        for simd in _simd_options(layer):
            cyc = (N // pe) * (K // simd) * pix
            if cyc <= target:
                key = (pe * simd, -simd)
                if best is None or key < best[0]:
                    best = (key, pe, simd)
    if best is None:
        return N, K
    return best[1], best[2]


def _stream_cycles(ig: IntGraph, layer) -> int:
    if layer.kind is IntKind.ARGMAX:
        return int(ig.tensors[layer.inputs[0]].shape[-1])
    if layer.kind in (IntKind.MAXPOOL, IntKind.AVGPOOL):
        return int(np.prod(layer.params["in_shape"]))
    return int(np.prod(ig.tensors[layer.output].shape))


def _assign(ig: IntGraph, target: float):
    out = {}
    for layer in ig.layers:
        if layer.kind in MAC_KINDS:
            out[layer.name] = _choose(layer, target)
    return out


def _cost(ig: IntGraph, choice, coeff):
    costs = []
    for layer in ig.layers:
        if layer.kind in MAC_KINDS:
            pe, simd = choice[layer.name]
            p = layer.params
            exact = np.asarray(p["acc"]["bits"]["exact"])
            order = group_channels(exact, pe)
            widths = pe_widths(exact, pe, order)
            rq = p["requant"]
            levels = np.asarray(rq["thresholds"]).shape[1] if rq and rq["kind"] == "thresholds" else 0
            tb = rq.get("threshold_bits", 0) if rq else 0
            costs.append(cost_model.mac_layer_cost(p["weight_type"].bits, p["input_type"].bits, p["channels"],
                                                   p["fan_in"], pe, simd, widths, levels, tb, coeff))
        elif layer.kind is IntKind.REORDER:
            costs.append(cost_model.reorder_layer_cost(ig.tensors[layer.output].type.bits,
                                                       layer.params["in_shape"], coeff))
        else:
            costs.append(cost_model.stream_layer_cost(ig.tensors[layer.output].type.bits, coeff))
    return cost_model.total(costs)


def _fits(total, budget) -> list[str]:
    if not budget:
        return []
    return [k for k in cost_model.RESOURCES if k in budget and budget[k] is not None and total[k] > budget[k]]


def fold(ig: IntGraph, target_cycles: float | None = None, max_pes: int | None = None,
         budget: dict | None = None, family: str | None = None) -> tuple[IntGraph, dict]:
    """Returns the folded graph and an estimate dict (cycles, bottleneck, cost, notes)."""
    if target_cycles is not None and (not math.isfinite(target_cycles) or target_cycles <= 0):
        raise UserError(f"target cycles per frame {target_cycles} must be positive")
    if max_pes is not None and max_pes < 1:
        raise UserError(f"--max-pes {max_pes} must be >= 1")
    coeff = cost_model.load_coefficients(family)
    macs = [l for l in ig.layers if l.kind in MAC_KINDS]
    notes = []
    worst = max([(l.params["channels"] * l.params["fan_in"] * _pixels(l)) for l in macs] + [1])
    if max_pes is not None:
        if max_pes < len(macs):
            raise UserError(f"--max-pes {max_pes}: the model has {len(macs)} MAC layers, each needs at least one lane")
        lo, hi = 1, worst
        while lo < hi:
            mid = (lo + hi) // 2
            ch = _assign(ig, mid)
            if sum(pe * simd for pe, simd in ch.values()) <= max_pes:
                hi = mid
            else:
                lo = mid + 1
        target = float(lo)
    else:
        target = float(target_cycles if target_cycles is not None else DEFAULT_TARGET_CYCLES)
    choice = _assign(ig, target)
    total = _cost(ig, choice, coeff)
    over = _fits(total, budget)
    relaxed = target
    while over and relaxed < worst:
        relaxed *= 1.25
        choice = _assign(ig, relaxed)
        total = _cost(ig, choice, coeff)
        over = _fits(total, budget)
    if relaxed != target:
        notes.append(f"target relaxed from {target:.0f} to {relaxed:.0f} cycles per frame to fit the board budget")
    if over:
        notes.append("even the most folded design exceeds the board budget in " + ", ".join(over))
    layers = []
    for layer in ig.layers:
        if layer.kind in MAC_KINDS:
            pe, simd = choice[layer.name]
            exact = np.asarray(layer.params["acc"]["bits"]["exact"])
            order = group_channels(exact, pe)
            p = layer.params
            cyc = (p["channels"] // pe) * (p["fan_in"] // simd) * _pixels(layer)
            layer = layer.with_params(folding={"pe": pe, "simd": simd, "channel_order": order.tolist(),
                                               "pe_acc_bits": pe_widths(exact, pe, order).tolist()},
                                      cycles_per_frame=int(cyc))
        else:
            layer = layer.with_params(cycles_per_frame=_stream_cycles(ig, layer))
        layers.append(layer)
    bott = max(layers, key=lambda l: l.params["cycles_per_frame"]) if layers else None
    estimate = {"cycles_per_frame": int(bott.params["cycles_per_frame"]) if bott else 0,
                "bottleneck": bott.name if bott else None, "target_cycles": relaxed,
                "cost": {k: round(v, 1) for k, v in total.items()}, "cost_family": family or "default",
                "mac_lanes": int(sum(pe * simd for pe, simd in choice.values())), "notes": notes}
    return ig.with_layers(layers), estimate
