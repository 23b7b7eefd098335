"""Residual add at full width: ``y = ((a - za)*ma << sa) + ((b - zb)*mb << sb)``.

The two inputs arrive as two streams with the same number of elements per beat; a beat
leaves when both inputs have one (a join), through one output register. Nothing is
rounded or dropped: the output type is the plan's, wide enough for the whole range.
The FIFO that lets the skip branch wait for the main branch lives in the top
(:mod:`accumulus.hw.top`), sized there from the branch's buffering.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.types import IntType

from .fifo import beat_signature, check_int

__all__ = ["AddSpec", "Add"]


def _align(name, d):
    if not isinstance(d, dict):
        raise TypeError(f"{name} must be a dict with mult, shift, zero_point; got {d!r}")
    try:
        mult = check_int(f"{name}.mult", d["mult"], -(1 << 62))
        shift = check_int(f"{name}.shift", d["shift"], 0)
        zp = check_int(f"{name}.zero_point", d["zero_point"], -(1 << 62))
    except KeyError as exc:
        raise ValueError(f"{name} lacks key {exc}") from None
    return mult, shift, zp


class AddSpec:
    """Parameters of a residual add, its numpy model and its hardware.

    Parameters
    ----------
    a_type, b_type : IntType
        Input element types.
    align : [dict, dict]
        ``{"mult", "shift", "zero_point"}`` for a and b (docs/plan.md, ``add``).
    out_type : IntType
        Output element type; must hold every sum the input types can produce.
    elems : int
        Elements per beat on all three streams.
    """

    def __init__(self, a_type: IntType, b_type: IntType, align, out_type: IntType, elems: int = 1):
        for name, t in (("a_type", a_type), ("b_type", b_type), ("out_type", out_type)):
            if not isinstance(t, IntType):
                raise TypeError(f"{name} must be an IntType, got {t!r}")
        if not isinstance(align, (list, tuple)) or len(align) != 2:
            raise TypeError(f"align must be a pair of dicts (for a and b), got {align!r}")
        self.a_type, self.b_type, self.out_type = a_type, b_type, out_type
        self.align = (_align("align[0]", align[0]), _align("align[1]", align[1]))
        self.elems = check_int("elems", elems, 1)
        lo, hi = self.range
        if not out_type.contains(lo, hi):
            raise ValueError(f"out_type {out_type} cannot hold the sum's range [{lo}, {hi}]")

    @property
    def range(self) -> tuple[int, int]:
        """Range of y over every pair of input codes."""
        lo = hi = 0
        for t, (mult, shift, zp) in zip((self.a_type, self.b_type), self.align):
            ends = [((v - zp) * mult) << shift for v in (t.min, t.max)]
            lo, hi = lo + min(ends), hi + max(ends)
        return lo, hi

    latency = 1
    """Cycles from both inputs valid to the output valid."""

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        (ma, sa, za), (mb, sb, zb) = self.align
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        return (((a - za) * ma) << sa) + (((b - zb) * mb) << sb)

    def create(self) -> "Add":
        return Add(self)


class Add(wiring.Component):
    """Residual add of an :class:`AddSpec`.

    Members
    -------
    a : ``In(beat_signature(a_type, elems))``
    b : ``In(beat_signature(b_type, elems))``
    o : ``Out(beat_signature(out_type, elems))``
    """

    def __init__(self, spec: AddSpec):
        if not isinstance(spec, AddSpec):
            raise TypeError(f"spec must be an AddSpec, got {spec!r}")
        self.spec = spec
        super().__init__({
            "a": In(beat_signature(spec.a_type, spec.elems)),
            "b": In(beat_signature(spec.b_type, spec.elems)),
            "o": Out(beat_signature(spec.out_type, spec.elems)),
        })

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        (ma, sa, za), (mb, sb, zb) = s.align
        take = Signal()
        m.d.comb += [
            take.eq(self.a.valid & self.b.valid & (~self.o.valid | self.o.ready)),
            self.a.ready.eq(take),
            self.b.ready.eq(take),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(take):
            m.d.sync += self.o.valid.eq(1)
            for e in range(s.elems):
                y = (((self.a.payload[e] - za) * ma) << sa) + (((self.b.payload[e] - zb) * mb) << sb)
                m.d.sync += self.o.payload[e].eq(y)
        return m
