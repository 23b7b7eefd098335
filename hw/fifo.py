"""Stream plumbing: element beats, FIFOs and forks between the layer engines.

Every stream between engines carries a beat of ``n`` integer elements of one
:class:`~accumulus.compiler.types.IntType`, element ``i`` in bits ``[i*w, (i+1)*w)`` (the
same packing as the AXI-Stream ports, DESIGN.md). :func:`beat_layout` gives that payload
as an ``amaranth.lib.data.ArrayLayout`` so engines index elements by position and keep
their sign. Frames are not marked inside: every engine knows its frame length in beats
from the plan, so only the top-level ports carry ``tlast``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Shape, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.types import IntType

__all__ = ["element_shape", "beat_layout", "beat_signature", "StreamFIFO", "Fork", "check_int"]


def check_int(name: str, value, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``; TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(f"{name} must be an int, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def element_shape(itype: IntType | Shape) -> Shape:
    """Amaranth shape of one element of ``itype`` (its code width, signed or not)."""
    if isinstance(itype, Shape):
        return itype
    if not isinstance(itype, IntType):
        raise TypeError(f"element type must be an IntType or an amaranth Shape, got {itype!r}")
    return signed(itype.bits) if itype.signed else unsigned(itype.bits)


def beat_layout(itype: IntType | Shape, n: int) -> data.ArrayLayout:
    """Payload of a beat of ``n`` elements of ``itype``, element 0 in the low bits."""
    n = check_int("n", n, 1)
    return data.ArrayLayout(element_shape(itype), n)


def beat_signature(itype: IntType | Shape, n: int) -> stream.Signature:
    return stream.Signature(beat_layout(itype, n))


class StreamFIFO(wiring.Component):
    """A FIFO between two streams of the same payload (``amaranth.lib.fifo.SyncFIFOBuffered``).

    Buffered, so that Yosys maps deep FIFOs to block RAM (synchronous read).

    Parameters
    ----------
    shape : ShapeLike
        Payload shape.
    depth : int
        Entries (>= 1).

    Members
    -------
    i : ``In(stream.Signature(shape))``
    o : ``Out(stream.Signature(shape))``
    """

    def __init__(self, shape, depth: int):
        self._shape = shape
        try:
            self._depth = check_int("depth", depth, 1)
        except (TypeError, ValueError):
            self._MustUse__silence = True  # a rejected object is not an unused design
            raise
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def latency(self) -> int:
        """Cycles from a beat entering an empty FIFO to it being offered at the output."""
        return 1 if self._depth == 1 else 2

    def elaborate(self, platform):
        m = Module()
        width = Shape.cast(self._shape).width
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=width, depth=self._depth)
        m.d.comb += [
            q.w_data.eq(self.i.payload.as_value() if hasattr(self.i.payload, "as_value") else self.i.payload),
            q.w_en.eq(self.i.valid),
            self.i.ready.eq(q.w_rdy),
            self.o.valid.eq(q.r_rdy),
            q.r_en.eq(self.o.ready),
        ]
        out = self.o.payload.as_value() if hasattr(self.o.payload, "as_value") else self.o.payload
        m.d.comb += out.eq(q.r_data)
        return m


class Fork(wiring.Component):
    """Broadcast one stream to ``n`` consumers; a beat leaves once every consumer took it.

    Each output's ``valid`` depends only on the input and on registered "already taken"
    flags, never on another consumer's ``ready``: a consumer whose ``ready`` looks at its
    ``valid`` cannot make a combinational loop through the fork.

    Members
    -------
    i : ``In(stream.Signature(shape))``
    o0 .. o{n-1} : ``Out(stream.Signature(shape))``
    """

    def __init__(self, shape, n: int = 2):
        try:
            self._n = check_int("n", n, 1)
        except (TypeError, ValueError):
            self._MustUse__silence = True
            raise
        members = {"i": In(stream.Signature(shape))}
        for k in range(self._n):
            members[f"o{k}"] = Out(stream.Signature(shape))
        super().__init__(members)

    @property
    def outputs(self):
        return [getattr(self, f"o{k}") for k in range(self._n)]

    def elaborate(self, platform):
        m = Module()
        outs = self.outputs
        taken = [Signal(name=f"taken{k}") for k in range(self._n)]
        done = [Signal(name=f"done{k}") for k in range(self._n)]
        for o, t, d in zip(outs, taken, done):
            src = self.i.payload.as_value() if hasattr(self.i.payload, "as_value") else self.i.payload
            dst = o.payload.as_value() if hasattr(o.payload, "as_value") else o.payload
            m.d.comb += [dst.eq(src), o.valid.eq(self.i.valid & ~t), d.eq(t | o.ready)]
        all_done = Signal()
        m.d.comb += all_done.eq(Cat(*done).all())
        m.d.comb += self.i.ready.eq(all_done)
        for o, t in zip(outs, taken):
            with m.If(self.i.valid & all_done):
                m.d.sync += t.eq(0)
            with m.Elif(o.valid & o.ready):
                m.d.sync += t.eq(1)
        return m
