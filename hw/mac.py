"""MAC cells: multiply-accumulate for integer operands of any width and signedness, and the
XNOR-popcount cell for bipolar (1-bit, +-1) layers.

Accumulators are two's complement of a given width and wrap (DESIGN.md): the width is the
caller's decision (the plan's exact width under the ``exact`` policy).
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.types import IntType

from .rom import check_int

__all__ = ["MACSpec", "MAC", "BipolarMACSpec", "BipolarMAC", "wrap"]


def wrap(values, bits) -> np.ndarray:
    """Two's-complement wrap of integers to ``bits`` (scalar or broadcastable array), exact
    at any width (Python integers); int64 when every width is at most 63."""
    v = np.asarray(values, dtype=object)
    b = np.broadcast_to(np.asarray(bits, dtype=object), v.shape)
    half = np.left_shift(1, b - 1)
    out = (v + half) % (2 * half) - half
    return out.astype(np.int64) if b.size == 0 or max(b.flat) <= 63 else out


def _check_type(name: str, t) -> IntType:
    if not isinstance(t, IntType):
        raise TypeError(f"{name} must be an accumulus.compiler.types.IntType, got {t!r}")
    return t


def _shape(t: IntType):
    return signed(t.bits) if t.signed else unsigned(t.bits)


class MACSpec:
    """A multiply-accumulate cell: ``acc = (first ? 0 : acc) + w*x`` wrapping at ``acc_bits``.

    Parameters
    ----------
    weight_type, input_type : IntType
        Operand types (any width, signed or unsigned).
    acc_bits : int
        Two's-complement accumulator width.
    """

    def __init__(self, weight_type: IntType, input_type: IntType, acc_bits: int):
        self.weight_type = _check_type("weight_type", weight_type)
        self.input_type = _check_type("input_type", input_type)
        self.acc_bits = check_int("acc_bits", acc_bits)

    latency = 1
    """Cycles from operands to the updated accumulator."""

    def compute(self, w, x, first) -> np.ndarray:
        """Accumulator after each step of a sequence of (w, x, first) operands."""
        w, x, first = (np.asarray(a) for a in (w, x, first))
        acc, out = 0, []
        for wi, xi, fi in zip(w.tolist(), x.tolist(), first.tolist()):
            acc = (0 if fi else acc) + wi * xi
            acc = int(wrap(acc, self.acc_bits))
            out.append(acc)
        return np.array(out, dtype=object)

    def create(self) -> "MAC":
        return MAC(self)


class MAC(wiring.Component):
    """One MAC cell (see :class:`MACSpec`).

    Members
    -------
    w, x : In
        Operands, at their types' widths.
    en : In(1)
        Update the accumulator this cycle.
    first : In(1)
        Start a new sum (the accumulator's old value is dropped).
    acc : Out(signed(acc_bits))
        The accumulator register.
    """

    def __init__(self, spec: MACSpec):
        if not isinstance(spec, MACSpec):
            raise TypeError(f"spec must be a MACSpec, got {spec!r}")
        self.spec = spec
        super().__init__({
            "w": In(_shape(spec.weight_type)), "x": In(_shape(spec.input_type)),
            "en": In(1), "first": In(1), "acc": Out(signed(spec.acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        product = Signal(signed(self.spec.weight_type.bits + self.spec.input_type.bits + 1))
        m.d.comb += product.eq(self.w * self.x)
        with m.If(self.en):
            m.d.sync += self.acc.eq(Mux(self.first, 0, self.acc) + product)
        return m


class BipolarMACSpec:
    """XNOR-popcount cell for bipolar layers: ``lanes`` weight and activation bits per cycle,
    bit 1 meaning +1 and bit 0 meaning -1; each cycle adds ``sum_j w_j * x_j =
    2*popcount(~(w ^ x)) - lanes`` to a ``acc_bits`` accumulator (wrapping)."""

    def __init__(self, lanes: int, acc_bits: int):
        self.lanes = check_int("lanes", lanes)
        self.acc_bits = check_int("acc_bits", acc_bits, lo=2)

    latency = 1

    def compute(self, w_bits, x_bits, first) -> np.ndarray:
        """``w_bits``, ``x_bits``: (steps, lanes) arrays of 0/1; accumulator after each step."""
        w = np.where(np.asarray(w_bits) > 0, 1, -1)
        x = np.where(np.asarray(x_bits) > 0, 1, -1)
        acc, out = 0, []
        for s in range(w.shape[0]):
            acc = (0 if first[s] else acc) + int((w[s] * x[s]).sum())
            acc = int(wrap(acc, self.acc_bits))
            out.append(acc)
        return np.array(out, dtype=object)

    def create(self) -> "BipolarMAC":
        return BipolarMAC(self)


class BipolarMAC(wiring.Component):
    """XNOR-popcount cell (see :class:`BipolarMACSpec`).

    Members
    -------
    w, x : In(lanes)
        Bit ``j`` is lane ``j`` (1 = +1, 0 = -1).
    en, first : In(1)
        As in :class:`MAC`.
    acc : Out(signed(acc_bits))
    """

    def __init__(self, spec: BipolarMACSpec):
        if not isinstance(spec, BipolarMACSpec):
            raise TypeError(f"spec must be a BipolarMACSpec, got {spec!r}")
        self.spec = spec
        super().__init__({
            "w": In(spec.lanes), "x": In(spec.lanes), "en": In(1), "first": In(1),
            "acc": Out(signed(spec.acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self.spec.lanes
        agree = Signal(lanes)
        m.d.comb += agree.eq(~(self.w ^ self.x))
        count = Signal(range(lanes + 1))
        m.d.comb += count.eq(sum(agree[j] for j in range(lanes)))
        step = Signal(signed(max(2, lanes.bit_length() + 2)))
        m.d.comb += step.eq((count << 1) - lanes)
        with m.If(self.en):
            m.d.sync += self.acc.eq(Mux(self.first, 0, self.acc) + step)
        return m
