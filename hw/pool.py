"""Pooling engines: max-pool, and the window sum of an average pool.

A :class:`~accumulus.hw.swg.SlidingWindow` delivers each output pixel's window in
``(kh, kw, c)`` order, ``simd`` channels per beat; a reducer keeps one running value per
channel word and emits the pixel's ``C/simd`` beats as the window's last position passes
through. Max-pool pads with the input type's minimum (docs/plan.md); the average pool
emits the window *sum* at full width (pad value: the zero-point code) and leaves the
``1/window`` factor to the requantization behind it, as the plan's ``avgpool`` says.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.types import IntType, signed_bits

from .fifo import beat_signature
from .swg import SWGSpec

__all__ = ["PoolSpec", "Pool"]


class PoolSpec:
    """Parameters of a pooling engine, its numpy model and its hardware.

    Parameters
    ----------
    kind : "max" | "avg"
    in_shape, kernel, stride, pads : as :class:`SWGSpec`
    elem : IntType
        Input element type.
    simd : int
        Channels per beat in and out (divides C).
    pad_value : int or None
        Average pool only: the padding code (default 0). Max-pool always pads with
        ``elem.min``.
    """

    def __init__(self, kind, in_shape, kernel, stride=None, pads=0, *, elem: IntType, simd: int = 1, pad_value=None):
        if kind not in ("max", "avg"):
            raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
        if not isinstance(elem, IntType):
            raise TypeError(f"elem must be an IntType, got {elem!r}")
        self.kind = kind
        if stride is None:
            stride = kernel
        if kind == "max":
            if pad_value is not None and pad_value != elem.min:
                raise ValueError(f"pad_value of a max-pool is the input type's minimum {elem.min}, got {pad_value}")
            pad_value = elem.min
        elif pad_value is None:
            pad_value = 0
        self.swg = SWGSpec(in_shape, kernel, stride, pads, pad_value=pad_value, elem=elem, simd=simd)
        self.elem = elem
        self.simd = simd
        taps = self.taps
        if kind == "max":
            self.out_type = elem
        else:
            # The sum of `taps` codes: the type's range times taps, as two's complement.
            lo, hi = elem.min * taps, elem.max * taps
            self.out_type = IntType(signed_bits(lo, hi), True) if lo < 0 else IntType(max(1, hi.bit_length()), False)

    @property
    def taps(self) -> int:
        return self.swg.kernel[0] * self.swg.kernel[1]

    @property
    def out_shape(self):
        return (*self.swg.out_hw, self.swg.in_shape[2])

    @property
    def out_beats(self) -> int:
        oh, ow = self.swg.out_hw
        return oh * ow * self.swg.channel_words

    @property
    def in_beats(self) -> int:
        return self.swg.in_beats

    @property
    def cycles_per_frame(self) -> int:
        return self.swg.cycles_per_frame

    @property
    def latency(self) -> int:
        return self.swg.latency + (self.taps - 1) * self.swg.channel_words

    def compute(self, x: np.ndarray) -> np.ndarray:
        """(B, H, W, C) -> (B, OH, OW, C): max or sum over each window."""
        win = self.swg.compute(x)
        b = win.shape[0]
        oh, ow = self.swg.out_hw
        win = win.reshape(b, oh, ow, self.taps, self.swg.in_shape[2])
        return win.max(axis=3) if self.kind == "max" else win.sum(axis=3)

    def create(self) -> "Pool":
        return Pool(self)


class Pool(wiring.Component):
    """Max-pool or window-sum engine of a :class:`PoolSpec`.

    Members
    -------
    i : ``In(beat_signature(elem, simd))``
        The image, ``H*W*C/simd`` beats per frame.
    o : ``Out(beat_signature(out_type, simd))``
        The pooled image, ``OH*OW*C/simd`` beats per frame.
    """

    def __init__(self, spec: PoolSpec):
        if not isinstance(spec, PoolSpec):
            raise TypeError(f"spec must be a PoolSpec, got {spec!r}")
        self.spec = spec
        super().__init__({"i": In(beat_signature(spec.elem, spec.simd)),
                          "o": Out(beat_signature(spec.out_type, spec.simd))})

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        m.submodules.swg = swg = s.swg.create()
        wiring.connect(m, wiring.flipped(self.i), swg.i)
        win = swg.o
        words = s.swg.channel_words
        taps = s.taps
        layout = self.o.payload.shape()
        # One running value per channel word, kept as a ring: the word being merged is
        # always acc[0] (a shift instead of a C/simd-way multiplexer).
        acc = [Signal(layout, name=f"acc{k}") for k in range(words)]
        tap = Signal(range(taps))
        cw = Signal(range(words))
        last = tap == taps - 1
        cur = acc[0]
        merged = Signal(layout)
        for e in range(s.simd):
            a, x = cur[e], win.payload[e]
            if s.kind == "max":
                m.d.comb += merged[e].eq(Mux(tap == 0, x, Mux(x > a, x, a)))
            else:
                m.d.comb += merged[e].eq(Mux(tap == 0, x, a + x))
        m.d.comb += [
            self.o.payload.eq(merged),
            self.o.valid.eq(win.valid & last),
            win.ready.eq(~last | self.o.ready),
        ]
        with m.If(win.valid & win.ready):
            m.d.sync += [a.eq(b) for a, b in zip(acc, acc[1:])]
            m.d.sync += acc[-1].eq(merged)
            with m.If(cw == words - 1):
                m.d.sync += [cw.eq(0), tap.eq(Mux(last, 0, tap + 1))]
            with m.Else():
                m.d.sync += cw.eq(cw + 1)
        return m
