"""Synthetic stand-ins for the canonical presets, for reports before trained plans exist.

``preset_plan("digits-mlp")`` / ``preset_plan("mnist-tfc")`` are random integer plans
(``compiler.synthetic.mlp_plan``) with the presets' shapes, types and folding: W4 weights,
4-bit unsigned hidden activations, the dataset's input codes (digits 5-bit 0..16, MNIST
8-bit), an ArgMax at the end, and -- like A2Q+ at P=12 -- hidden layers whose integer-weight
L1 norms fit a 12-bit accumulator (weights are thinned until the exact width is <= 12,
and the plan records ``target = 12`` for those layers). Every report says which plan it used.
"""
from __future__ import annotations

import numpy as np

from accumulus.compiler.accumulators import a2q_plus_bits, pe_widths
from accumulus.compiler.synthetic import mlp_plan
from accumulus.compiler.types import IntType
from accumulus.errors import UserError

__all__ = ["PRESETS", "preset_plan"]

PRESETS = {
    # widths, input type, per-layer PE, per-layer SIMD, constrained target P (layers 2..)
    "digits-mlp": {"widths": (64, 64, 64, 10), "input": IntType(5, False),
                   "pe": [2, 2, 2], "simd": [4, 4, 4], "target": 12, "board": "icebreaker"},
    # mnist-tfc: 4x8 + 3x(2x8) = 80 multiplier lanes, within the ECP5-85F's 156 DSPs.
    "mnist-tfc": {"widths": (784, 64, 64, 64, 10), "input": IntType(8, False),
                  "pe": [4, 2, 2, 2], "simd": [8, 8, 8, 8], "target": 12, "board": "ulx3s-85f"},
}


def preset_plan(name: str, seed: int = 0, pe=None, simd=None):
    """(plan, description) of the synthetic stand-in for preset ``name``."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    target = p["target"]
    pe = list(pe or p["pe"])
    simd = list(simd or p["simd"])
    # Thin the weights until every constrained layer fits the target, as A2Q+ training does.
    for sparsity in np.arange(0.0, 0.96, 0.05):
        plan = mlp_plan(p["widths"], input_type=p["input"], weight_bits=4, act_bits=4, pe=pe, simd=simd,
                        argmax=True, seed=seed, sparsity=float(sparsity))
        macs = [l for l in plan.layers if l["kind"] == "matvec"]
        if all(max(l["acc"]["bits"]["exact"]) <= target for l in macs[1:]):
            break
    else:  # pragma: no cover - 95% sparsity always fits
        raise UserError(f"could not thin preset '{name}' to P={target}")
    for layer, lpe in zip(macs, pe):
        # Natural channel order: each fold's channels are one contiguous block, so the
        # engine restores the order by a lane permutation instead of a double buffer of
        # N codes (the buffer's flip-flops alone overflow the iCE40's logic cells).
        order = np.arange(int(layer["channels"]))
        layer["folding"]["channel_order"] = order.tolist()
        layer["folding"]["pe_acc_bits"] = pe_widths(np.asarray(layer["acc"]["bits"]["exact"]), lpe, order).tolist()
    for layer in macs[1:]:
        layer["acc"]["bits"]["target"] = target
        w = plan.array(layer["weight"])
        # the A2Q+ bound of the stored integers, which a real A2Q+ export would also satisfy
        assert int(a2q_plus_bits(w, IntType.from_json(layer["input_type"])).max()) <= target + 1
    plan.doc["source"]["model"] = f"synthetic:{name}:seed{seed}:sparsity{sparsity:.2f}"
    plan.doc["options"].update({"synthetic": True, "preset": name, "target_p": target})
    desc = (f"synthetic stand-in for {name} (compiler.synthetic.mlp_plan, seed {seed}): widths "
            f"{list(p['widths'])}, input {p['input']}, W4 A4, hidden-layer weights thinned to {sparsity:.0%} zeros "
            f"so that layers 2.. have exact accumulators <= {target} bits (as A2Q+ P={target}); "
            f"PE {pe}, SIMD {simd}; not a trained model")
    return plan, desc
