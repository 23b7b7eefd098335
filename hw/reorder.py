"""Stream reordering engine for the plan's ``reorder`` layers (DepthToSpace, nearest Resize).

``y[oh, ow, c] = x[rows[oh], cols[ow], channels[(oh % ph)·pw + ow % pw][c]]`` (docs/plan.md):
every output row reads exactly one input row and ``rows`` never decreases within a frame, so
two input rows of buffer suffice (the double-buffered row of FINN's upsampler, generalised
to any row/column/channel map).

Structure: one synchronous-read memory of two input rows (``2·W·C`` elements). The writer
fills input rows into the two slots alternately; the reader walks the output in stream order
and reads its current source row's slot. One signed counter ``D`` = (input rows completely
written) - (global index of the reader's current source row) couples them: the reader emits
only while ``D >= 1`` (its row is complete), the writer writes only while ``D <= 1`` (the slot
it fills holds no row the reader still needs). Row indices are global, not per frame: at the
end of a frame the reader's source row jumps by ``H - rows[-1] + rows[0]``, so the writer
runs into the next frame while the reader finishes the current one and frames follow each
other without a gap. A read happens one cycle before its beat is offered; while the output
stalls the read port holds the beat (no read is issued), so nothing is lost or duplicated.
One element per beat in and out; width converters around it regroup beats.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accumulus.compiler.types import IntType

from .fifo import beat_signature, check_int, element_shape

__all__ = ["ReorderSpec", "Reorder"]


class ReorderSpec:
    """A ``reorder`` layer's parameters, its numpy model and its hardware.

    Parameters
    ----------
    in_shape : (H, W, C)
    rows : list of int
        Per output row, the input row it reads (non-decreasing, each in ``[0, H)``).
    cols : list of int
        Per output column, the input column it reads (each in ``[0, W)``).
    phase : (ph, pw)
        The channel map repeats every ``ph`` output rows and ``pw`` output columns.
    channels : list of ``ph*pw`` lists of OC ints
        Input channel of each output channel, per phase.
    elem : IntType
        Element type (in and out: a reordering changes no value).
    """

    def __init__(self, in_shape, rows, cols, phase, channels, *, elem: IntType):
        if not isinstance(elem, IntType):
            raise TypeError(f"elem must be an IntType, got {elem!r}")
        try:
            h, w, c = in_shape
        except (TypeError, ValueError):
            raise TypeError(f"in_shape must be (H, W, C), got {in_shape!r}") from None
        self.in_shape = (check_int("in_shape[0] (H)", h, 1), check_int("in_shape[1] (W)", w, 1),
                         check_int("in_shape[2] (C)", c, 1))
        H, W, C = self.in_shape
        self.rows = [check_int(f"rows[{k}]", r) for k, r in enumerate(rows)]
        self.cols = [check_int(f"cols[{k}]", v) for k, v in enumerate(cols)]
        try:
            ph, pw = phase
        except (TypeError, ValueError):
            raise TypeError(f"phase must be (ph, pw), got {phase!r}") from None
        self.phase = (check_int("phase[0]", ph, 1), check_int("phase[1]", pw, 1))
        self.channels = [[check_int("channels", v) for v in row] for row in channels]
        self.elem = elem
        if not self.rows or not self.cols:
            raise ValueError(f"rows ({len(self.rows)}) and cols ({len(self.cols)}) must be non-empty")
        if len(self.channels) != self.phase[0] * self.phase[1]:
            raise ValueError(f"channels has {len(self.channels)} rows, phase {self.phase} needs "
                             f"{self.phase[0] * self.phase[1]}")
        oc = {len(row) for row in self.channels}
        if len(oc) != 1 or 0 in oc:
            raise ValueError(f"every phase of channels must list the same, non-zero number of channels, got {sorted(oc)}")
        bad = [k for k in range(1, len(self.rows)) if self.rows[k] < self.rows[k - 1]]
        if bad:
            raise ValueError(f"rows must be non-decreasing (the engine holds two input rows): rows[{bad[0]}] = "
                             f"{self.rows[bad[0]]} < rows[{bad[0] - 1}] = {self.rows[bad[0] - 1]}")
        for name, vals, lim in (("rows", self.rows, H), ("cols", self.cols, W),
                                ("channels", [v for row in self.channels for v in row], C)):
            out = [v for v in vals if v >= lim]
            if out:
                raise ValueError(f"{name} value {out[0]} is outside the input (must be < {lim})")
        self.out_shape = (len(self.rows), len(self.cols), len(self.channels[0]))

    @classmethod
    def from_layer(cls, layer: dict, elem: IntType) -> "ReorderSpec":
        """The spec of a plan ``reorder`` layer (docs/plan.md)."""
        spec = cls(layer["in_shape"], layer["rows"], layer["cols"], layer["phase"], layer["channels"], elem=elem)
        if "out_shape" in layer and tuple(layer["out_shape"]) != spec.out_shape:
            raise ValueError(f"layer '{layer.get('name')}': out_shape {layer['out_shape']} does not match "
                             f"rows/cols/channels {spec.out_shape}")
        return spec

    @property
    def row_elems(self) -> int:
        """Elements of one input row (``W·C``): one memory slot."""
        return self.in_shape[1] * self.in_shape[2]

    @property
    def buffer_elems(self) -> int:
        """Elements of row buffer (two input rows)."""
        return 2 * self.row_elems

    @property
    def buffer_bits(self) -> int:
        return self.buffer_elems * self.elem.bits

    @property
    def in_beats(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_beats(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def row_deltas(self) -> list[int]:
        """Per output row, how far the source row (counted over frames) moves after it."""
        H = self.in_shape[0]
        r = self.rows
        return [b - a for a, b in zip(r, r[1:])] + [H - r[-1] + r[0]]

    @property
    def cycles_per_frame(self) -> int:
        """Steady-state cycles per frame (input every cycle, no stalls): one element per
        cycle on the slower side. Exact when every input row that is read is read for at least
        ``W·C`` cycles (DepthToSpace: ``b`` rows of ``W·C/b``; integer upsampling) and no row
        is skipped; rows skipped or read briefly make the reader wait for the writer."""
        return max(self.in_beats, self.out_beats)

    @property
    def latency(self) -> int:
        """Cycles from the first input beat to the first output beat (input every cycle):
        the rows up to ``rows[0]`` are written, then one cycle of memory read."""
        return (self.rows[0] + 1) * self.row_elems + 1

    def compute(self, x: np.ndarray) -> np.ndarray:
        """(B, H, W, C) -> (B, OH, OW, OC), the plan's definition."""
        ph, pw = self.phase
        rows, cols, chans = np.asarray(self.rows), np.asarray(self.cols), np.asarray(self.channels)
        oh, ow = np.arange(rows.size)[:, None], np.arange(cols.size)[None, :]
        c = chans[(oh % ph) * pw + ow % pw]
        x = np.asarray(x).reshape((-1,) + self.in_shape)
        return x[:, rows[:, None, None], cols[None, :, None], c]

    def create(self) -> "Reorder":
        return Reorder(self)


class Reorder(wiring.Component):
    """The engine of a :class:`ReorderSpec`.

    Members
    -------
    i : ``In(beat_signature(elem, 1))``
        The input image in stream order, ``H*W*C`` beats per frame.
    o : ``Out(beat_signature(elem, 1))``
        The reordered image in stream order, ``OH*OW*OC`` beats per frame.
    """

    def __init__(self, spec: ReorderSpec):
        if not isinstance(spec, ReorderSpec):
            raise TypeError(f"spec must be a ReorderSpec, got {spec!r}")
        self.spec = spec
        super().__init__({"i": In(beat_signature(spec.elem, 1)), "o": Out(beat_signature(spec.elem, 1))})

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        H, W, C = s.in_shape
        OH, OW, OC = s.out_shape
        ph, pw = s.phase
        RC = s.row_elems
        m.submodules.mem = mem = Memory(shape=element_shape(s.elem), depth=2 * RC, init=[])
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")

        deltas = s.row_deltas
        d_min = min(1 - max(deltas), -s.rows[0])
        # D = (rows written) - (global source row of the reader): see the module docstring.
        d = Signal(range(d_min, 3), init=-s.rows[0])

        # -- writer: element `wpos` of the row in slot `wslot` ------------------------------
        wpos = Signal(range(RC))
        wslot = Signal()
        w_fire = Signal()
        w_row_done = Signal()
        m.d.comb += [
            self.i.ready.eq(d <= 1),
            w_fire.eq(self.i.valid & self.i.ready),
            w_row_done.eq(w_fire & (wpos == RC - 1)),
            wp.addr.eq(Mux(wslot, RC, 0) + wpos),
            wp.data.eq(self.i.payload[0]),
            wp.en.eq(w_fire),
        ]
        with m.If(w_fire):
            with m.If(wpos == RC - 1):
                m.d.sync += [wpos.eq(0), wslot.eq(~wslot)]
            with m.Else():
                m.d.sync += wpos.eq(wpos + 1)

        # -- reader: output position (oh, ow, oc), its phase (php, pwp), source slot --------
        oh, ow, oc = Signal(range(OH)), Signal(range(OW)), Signal(range(OC))
        php, pwp = Signal(range(ph)), Signal(range(pw))
        rslot = Signal(init=s.rows[0] % 2)
        col_base = Array([Const(c * C, range(RC)) for c in s.cols])
        chans = Array([Const(c, range(C)) for row in s.channels for c in row])
        delta = Array([Const(v, range(max(deltas) + 1)) for v in deltas])
        v = Signal()          # the read port holds a beat not yet taken
        r_fire = Signal()
        r_row_done = Signal()
        m.d.comb += [
            r_fire.eq((d >= 1) & (~v | self.o.ready)),
            r_row_done.eq(r_fire & (ow == OW - 1) & (oc == OC - 1)),
            rp.en.eq(r_fire),
            rp.addr.eq(Mux(rslot, RC, 0) + col_base[ow] + chans[(php * pw + pwp) * OC + oc]),
            self.o.valid.eq(v),
            self.o.payload[0].eq(rp.data),
        ]
        with m.If(r_fire):
            m.d.sync += v.eq(1)
        with m.Elif(self.o.ready):
            m.d.sync += v.eq(0)
        with m.If(r_fire):
            with m.If(oc == OC - 1):
                m.d.sync += oc.eq(0)
                if pw > 1:
                    m.d.sync += pwp.eq(Mux(pwp == pw - 1, 0, pwp + 1))
                with m.If(ow == OW - 1):
                    m.d.sync += [ow.eq(0), pwp.eq(0), oh.eq(Mux(oh == OH - 1, 0, oh + 1))]
                    if ph > 1:
                        m.d.sync += php.eq(Mux((php == ph - 1) | (oh == OH - 1), 0, php + 1))
                    m.d.sync += rslot.eq(rslot ^ delta[oh][0])
                with m.Else():
                    m.d.sync += ow.eq(ow + 1)
            with m.Else():
                m.d.sync += oc.eq(oc + 1)

        m.d.sync += d.eq(d + w_row_done - Mux(r_row_done, delta[oh], 0))
        return m
