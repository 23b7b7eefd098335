"""Stream width converters: ``a`` elements per beat in, ``b`` elements per beat out.

Engines emit as many elements per beat as they compute per cycle (an MVU: PE) and consume
as many as they reduce per cycle (an MVU: SIMD). Between them a converter regroups the
element sequence without changing it: ``gather`` packs ``b/a`` input beats into one,
``split`` emits one input beat as ``a/b`` output beats, and any other ratio goes through
``gcd(a, b)`` elements per beat. Each stage moves one beat per cycle on its wider side.
"""
from __future__ import annotations

import math

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.types import IntType

from .fifo import beat_signature, check_int, element_shape

__all__ = ["WidthConverter"]


class WidthConverter(wiring.Component):
    """Regroup a stream of ``elem`` elements from ``a`` per beat to ``b`` per beat.

    Parameters
    ----------
    elem : IntType
        Element type (unchanged).
    a, b : int
        Elements per input beat and per output beat (>= 1).
    frame : int or None
        Elements per frame; when given, both ``a`` and ``b`` must divide it so that beats
        never straddle frames.

    Members
    -------
    i : ``In(beat_signature(elem, a))``
    o : ``Out(beat_signature(elem, b))``
    """

    def __init__(self, elem: IntType, a: int, b: int, frame: int | None = None):
        try:
            self._elem = elem
            element_shape(elem)  # validates the type
            self._a = check_int("a", a, 1)
            self._b = check_int("b", b, 1)
            if frame is not None:
                frame = check_int("frame", frame, 1)
                for name, v in (("a", self._a), ("b", self._b)):
                    if frame % v:
                        raise ValueError(f"{name}={v} elements per beat does not divide the frame of {frame} elements")
        except (TypeError, ValueError):
            self._MustUse__silence = True  # a rejected object is not an unused design
            raise
        self._frame = frame
        super().__init__({"i": In(beat_signature(elem, self._a)), "o": Out(beat_signature(elem, self._b))})

    @property
    def latency(self) -> int:
        """Cycles from the last element of an output beat entering to that beat being offered."""
        return 0 if self._b % self._a == 0 and self._a != self._b or self._a == self._b else 1

    def elaborate(self, platform):
        m = Module()
        a, b = self._a, self._b
        if a == b:
            wiring.connect(m, wiring.flipped(self.i), wiring.flipped(self.o))
        elif b % a == 0:
            _gather(m, self.i, self.o, b // a, a, element_shape(self._elem).width)
        elif a % b == 0:
            _split(m, self.i, self.o, a // b, b, element_shape(self._elem).width)
        else:
            g = math.gcd(a, b)
            m.submodules.split = s = WidthConverter(self._elem, a, g)
            m.submodules.gather = gth = WidthConverter(self._elem, g, b)
            wiring.connect(m, wiring.flipped(self.i), s.i)
            wiring.connect(m, s.o, gth.i)
            wiring.connect(m, gth.o, wiring.flipped(self.o))
        return m


def _gather(m, i, o, n, a, w):
    """n input beats -> one output beat; the last piece passes straight through."""
    piece = a * w
    held = [Signal(piece, name=f"held{k}") for k in range(n - 1)]
    count = Signal(range(n))
    last = count == n - 1
    m.d.comb += [
        o.valid.eq(i.valid & last),
        o.payload.as_value().eq(Cat(*held, i.payload.as_value())),
        i.ready.eq(~last | o.ready),
    ]
    with m.If(i.valid & i.ready):
        m.d.sync += count.eq(Mux(last, 0, count + 1))
        for k in range(n - 1):
            with m.If(count == k):
                m.d.sync += held[k].eq(i.payload.as_value())


def _split(m, i, o, n, b, w):
    """One input beat -> n output beats, one per cycle; refilled in the cycle it empties."""
    piece = b * w
    buf = Signal(n * piece)
    full = Signal()
    count = Signal(range(n))
    last = count == n - 1
    pieces = Array(buf[k * piece:(k + 1) * piece] for k in range(n))
    m.d.comb += [
        o.valid.eq(full),
        o.payload.as_value().eq(pieces[count]),
        i.ready.eq(~full | (last & o.ready)),
    ]
    with m.If(o.valid & o.ready):
        m.d.sync += count.eq(Mux(last, 0, count + 1))
        with m.If(last):
            m.d.sync += full.eq(0)
    with m.If(i.valid & i.ready):
        m.d.sync += [buf.eq(i.payload.as_value()), full.eq(1), count.eq(0)]
