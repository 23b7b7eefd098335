"""ArgMax unit: the index of the first maximum of each frame (ties to the lowest index,
ONNX ``select_last_index=0``; numpy's ``argmax``).

Elements arrive ``elems`` per beat in index order; a running (best value, best index)
pair is updated with the beat's elements in order using a strict ``>`` so that an equal
later value never wins. The index leaves as one beat per frame.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.types import IntType

from .fifo import beat_signature, check_int, element_shape

__all__ = ["ArgMaxSpec", "ArgMax"]


class ArgMaxSpec:
    """Parameters of an ArgMax unit, its numpy model and its hardware.

    Parameters
    ----------
    elem : IntType
        Element type of the scores.
    length : int
        Elements per frame (the number of classes).
    elems : int
        Elements per input beat; must divide ``length``.
    index_bits : int or None
        Width of the output index (default: enough for ``length - 1``).
    """

    def __init__(self, elem: IntType, length: int, elems: int = 1, index_bits: int | None = None):
        if not isinstance(elem, IntType):
            raise TypeError(f"elem must be an IntType, got {elem!r}")
        self.elem = elem
        self.length = check_int("length", length, 1)
        self.elems = check_int("elems", elems, 1)
        if self.length % self.elems:
            raise ValueError(f"elems={elems} must divide length={length}")
        need = max(1, (self.length - 1).bit_length())
        if index_bits is None:
            index_bits = need
        self.index_bits = check_int("index_bits", index_bits, 1)
        if self.index_bits < need:
            raise ValueError(f"index_bits={index_bits} cannot hold index {self.length - 1}")

    @property
    def out_type(self) -> IntType:
        return IntType(self.index_bits, False)

    @property
    def in_beats(self) -> int:
        return self.length // self.elems

    @property
    def cycles_per_frame(self) -> int:
        return self.in_beats

    latency = 1
    """Cycles from the frame's last input beat to the index being offered."""

    def compute(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).reshape(-1, self.length)
        return np.argmax(x, axis=1).astype(np.int64)

    def create(self) -> "ArgMax":
        return ArgMax(self)


class ArgMax(wiring.Component):
    """ArgMax unit of an :class:`ArgMaxSpec`.

    Members
    -------
    i : ``In(beat_signature(elem, elems))``
        ``length/elems`` beats per frame.
    o : ``Out(stream.Signature(unsigned(index_bits)))``
        One beat per frame: the index of the first maximum.
    """

    def __init__(self, spec: ArgMaxSpec):
        if not isinstance(spec, ArgMaxSpec):
            raise TypeError(f"spec must be an ArgMaxSpec, got {spec!r}")
        self.spec = spec
        super().__init__({"i": In(beat_signature(spec.elem, spec.elems)),
                          "o": Out(stream.Signature(unsigned(spec.index_bits)))})

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        shape = element_shape(s.elem)
        beats = s.in_beats
        best = Signal(shape)
        best_idx = Signal(s.index_bits)
        beat = Signal(range(beats))
        first = beat == 0
        last = beat == beats - 1
        base = Signal(s.index_bits)          # index of the beat's element 0
        # Chain through the beat's elements; the running best enters only after beat 0.
        cur_v, cur_i = best, best_idx
        for e in range(s.elems):
            v = self.i.payload[e]
            take = (v > cur_v) if e > 0 else (first | (v > cur_v))
            nv, ni = Signal(shape, name=f"v{e}"), Signal(s.index_bits, name=f"i{e}")
            m.d.comb += [nv.eq(Mux(take, v, cur_v)), ni.eq(Mux(take, base + e, cur_i))]
            cur_v, cur_i = nv, ni
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [best.eq(cur_v), best_idx.eq(cur_i)]
            with m.If(last):
                m.d.sync += [beat.eq(0), base.eq(0), self.o.valid.eq(1), self.o.payload.eq(cur_i)]
            with m.Else():
                m.d.sync += [beat.eq(beat + 1), base.eq(base + s.elems)]
        return m
