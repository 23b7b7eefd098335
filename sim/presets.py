"""Plans shaped like the canonical MLP presets, for co-simulation without trained models.

Random weights and thresholds (``compiler.synthetic``) in the presets' shapes, input
types and bit widths (DESIGN.md, canonical models), folded so that a frame takes about a
thousand cycles: long enough to exercise every fold, short enough that 100 frames stay
well under two minutes on Icarus. A trained preset's plan (``accumulus compile``) is
simulated the same way.
"""
from __future__ import annotations

from accumulus.compiler.plan import Plan
from accumulus.compiler.synthetic import mlp_plan
from accumulus.compiler.types import IntType
from accumulus.errors import UserError

__all__ = ["PRESET_SHAPES", "preset_plan"]

PRESET_SHAPES = {
    # 64-64-64-10 on 5-bit digits codes: (64/1)*(64/4) = 1024 cycles in the first two layers
    "digits-mlp": dict(widths=(64, 64, 64, 10), input_type=IntType(5, False), pe=[1, 1, 1], simd=[4, 4, 4]),
    # 784-64-64-64-10 on 8-bit MNIST codes: (64/8)*(784/8) = 784 cycles in the first layer
    "mnist-tfc": dict(widths=(784, 64, 64, 64, 10), input_type=IntType(8, False), pe=[8, 2, 2, 1],
                      simd=[8, 4, 4, 4]),
}


def preset_plan(name: str, seed: int = 0) -> Plan:
    """A random plan with the shape, widths and folding of MLP preset ``name``."""
    try:
        shape = PRESET_SHAPES[name]
    except KeyError:
        raise UserError(f"no synthetic shape for preset '{name}': choose one of {', '.join(PRESET_SHAPES)}") from None
    return mlp_plan(weight_bits=4, act_bits=4, seed=seed, **shape)
