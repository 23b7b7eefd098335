"""Accumulator widths: the one source of truth (DESIGN.md, "Accumulator widths").

Every width here is a two's-complement width over weights only (bias excluded), and the
input range is the quantizer's representable code range, not the data's. numpy only.

* data-type bound (hls4ml's rule): ``M + N + ceil(log2 K)``, plus one bit when both
  operands are unsigned (the result is then unsigned; as two's complement it needs one more);
* A2Q bound: ``||q||_1 <= (2^(P-1)-1) * 2^(s_x-N)`` -> the smallest such P;
* A2Q+ bound: ``||q||_1 <= (2^P-2) / (2^N-1)`` -> the smallest such P (assumes zero-sum
  weights: a report column, never a width hardware relies on);
* exact bound: smallest width holding ``[sum min_x w*x, sum max_x w*x]`` -- the range of
  every partial sum, in any order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import IntType, signed_bits

__all__ = [
    "LayerWidths", "a2q_bits", "a2q_plus_bits", "a2q_l1_budget", "a2q_plus_l1_budget",
    "datatype_bits", "exact_bits", "exact_range", "layer_widths", "pe_widths",
    "group_channels", "worst_case_inputs", "ceil_log2",
]


def ceil_log2(v: int) -> int:
    """ceil(log2(v)) for an integer v >= 1, exactly (no float)."""
    v = int(v)
    if v < 1:
        raise ValueError(f"ceil_log2 needs v >= 1, got {v}")
    return (v - 1).bit_length()


def _as_matrix(weights) -> np.ndarray:
    w = np.asarray(weights)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2:
        raise ValueError(f"weights must be (channels, fan_in), got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.integer):
        if not np.all(np.equal(np.round(w), w)):
            raise ValueError("weights must be integers (the quantizer's integer codes)")
    return w.astype(np.int64)


def datatype_bits(weight_type: IntType, input_type: IntType, fan_in: int) -> int:
    """hls4ml's accumulator rule, as a two's-complement width."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    bits = weight_type.bits + input_type.bits + ceil_log2(fan_in)
    return bits if (weight_type.signed or input_type.signed) else bits + 1


def exact_range(weights, input_type: IntType) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (lo, hi) of ``sum_k w_k x_k`` over every input code vector."""
    w = _as_matrix(weights)
    a, b = w * input_type.min, w * input_type.max
    return np.minimum(a, b).sum(axis=1), np.maximum(a, b).sum(axis=1)


def exact_bits(weights, input_type: IntType) -> np.ndarray:
    lo, hi = exact_range(weights, input_type)
    return np.array([signed_bits(l, h) for l, h in zip(lo, hi)], dtype=np.int64)


def worst_case_inputs(weights, input_type: IntType) -> tuple[np.ndarray, np.ndarray]:
    """Input code vectors (channels, fan_in) that drive each channel to its hi and lo bound."""
    w = _as_matrix(weights)
    x_hi = np.where(w >= 0, input_type.max, input_type.min).astype(np.int64)
    x_lo = np.where(w >= 0, input_type.min, input_type.max).astype(np.int64)
    return x_hi, x_lo


def a2q_bits(weights, input_type: IntType) -> np.ndarray:
    """Smallest P with ||q||_1 <= (2^(P-1)-1) * 2^(s_x - N), per channel."""
    l1 = np.abs(_as_matrix(weights)).sum(axis=1)
    shift = input_type.bits - (1 if input_type.signed else 0)
    # 2^(P-1) - 1 >= l1 * 2^shift  <=>  P = 1 + ceil_log2(l1 * 2^shift + 1)
    return np.array([1 + ceil_log2((int(v) << shift) + 1) for v in l1], dtype=np.int64)


def a2q_plus_bits(weights, input_type: IntType) -> np.ndarray:
    """Smallest P with ||q||_1 <= (2^P - 2) / (2^N - 1), per channel."""
    l1 = np.abs(_as_matrix(weights)).sum(axis=1)
    span = (1 << input_type.bits) - 1
    return np.array([ceil_log2(int(v) * span + 2) for v in l1], dtype=np.int64)


def a2q_l1_budget(acc_bits: int, input_type: IntType) -> float:
    """The largest integer-weight L1 norm A2Q allows for a P-bit accumulator."""
    s = 1 if input_type.signed else 0
    return ((1 << (acc_bits - 1)) - 1) * 2.0 ** (s - input_type.bits)


def a2q_plus_l1_budget(acc_bits: int, input_type: IntType) -> float:
    """The largest integer-weight L1 norm A2Q+ allows for a P-bit accumulator."""
    return ((1 << acc_bits) - 2) / ((1 << input_type.bits) - 1)


@dataclass(frozen=True)
class LayerWidths:
    """The four widths of DESIGN.md for one layer, per output channel."""

    datatype: int
    a2q: np.ndarray
    a2q_plus: np.ndarray
    exact: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    l1: np.ndarray
    target: int | None = None

    def violations(self) -> list[int]:
        """Channels whose exact width exceeds the trained target P (empty if no target)."""
        if self.target is None:
            return []
        return [int(c) for c in np.nonzero(self.exact > self.target)[0]]


def layer_widths(weights, weight_type: IntType, input_type: IntType, target: int | None = None) -> LayerWidths:
    w = _as_matrix(weights)
    if w.min(initial=0) < weight_type.min or w.max(initial=0) > weight_type.max:
        raise ValueError(
            f"weights span [{w.min()}, {w.max()}], outside {weight_type} [{weight_type.min}, {weight_type.max}]"
        )
    lo, hi = exact_range(w, input_type)
    return LayerWidths(
        datatype=datatype_bits(weight_type, input_type, w.shape[1]),
        a2q=a2q_bits(w, input_type),
        a2q_plus=a2q_plus_bits(w, input_type),
        exact=np.array([signed_bits(l, h) for l, h in zip(lo, hi)], dtype=np.int64),
        lo=lo, hi=hi, l1=np.abs(w).sum(axis=1), target=target,
    )


def group_channels(exact: np.ndarray, pe: int) -> np.ndarray:
    """A channel order that puts channels of similar width on the same PE.

    PE ``p`` serves channels ``order[p::pe]`` (one per fold step). Sorting channels by
    width and giving each PE a contiguous run of the sorted list minimises the sum of
    per-PE built widths (each PE is as wide as its widest channel). When that saves no
    width (one PE, or widths already grouped), the natural order is kept: a permuted
    order costs the engine an output reorder buffer.
    """
    exact = np.asarray(exact)
    n = exact.size
    if pe < 1 or n % pe:
        raise ValueError(f"pe={pe} must divide the {n} output channels")
    fold = n // pe
    ranked = np.argsort(-exact, kind="stable")           # widest first
    order = np.empty(n, dtype=np.int64)
    for p in range(pe):
        run = ranked[p * fold:(p + 1) * fold]
        order[p + pe * np.arange(fold)] = run             # PE p gets one contiguous run
    natural = np.arange(n, dtype=np.int64)
    if pe_widths(exact, pe, order).sum() >= pe_widths(exact, pe, natural).sum():
        return natural
    return order


def pe_widths(exact: np.ndarray, pe: int, order: np.ndarray | None = None) -> np.ndarray:
    """Built width of each PE: the widest channel it serves (PE p serves order[p::pe])."""
    exact = np.asarray(exact)
    if order is None:
        order = np.arange(exact.size)
    if pe < 1 or exact.size % pe:
        raise ValueError(f"pe={pe} must divide the {exact.size} output channels")
    return np.array([int(exact[order[p::pe]].max()) for p in range(pe)], dtype=np.int64)
