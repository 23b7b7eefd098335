"""Sliding-window generator (SWG): the im2col of a convolution or pooling layer, streamed.

Input: an ``[H, W, C]`` image in stream order (pixels row by row, channels fastest),
``simd`` channels per beat. Output: for every output pixel (row by row), its window of
``kh*kw*C`` elements in ``(kh, kw, c)`` order, ``simd`` elements per beat, with the pad
value wherever the window leaves the image -- exactly what the MVU of a conv layer reads
(hw/mvu.py) and what ``compiler.golden._im2col`` defines.

Structure: a line buffer of ``rows`` image rows (a power of two, at least the dilated
kernel height plus the row stride, so that the rows of the next output row arrive while
the current one is read) in one synchronous-read memory of ``rows*W*C/simd`` words. The
writer fills row after row into it and stalls only when it would overwrite a row the
current output row still needs; the reader starts an output pixel once the writer has
passed the window's last real pixel, then emits one beat per cycle. The writer may run
into the next frame while the reader finishes the current one, so frames follow each
other without a gap.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.types import IntType

from .fifo import beat_signature, check_int, element_shape

__all__ = ["SWGSpec", "SlidingWindow", "window_geometry"]


def _pair(name, value, minimum):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    return check_int(f"{name}[0]", a, minimum), check_int(f"{name}[1]", b, minimum)


def window_geometry(in_shape, kernel, stride=1, pads=0, dilation=1):
    """Validated geometry: ((H, W, C), (kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw), (OH, OW))."""
    try:
        h, w, c = in_shape
    except (TypeError, ValueError):
        raise TypeError(f"in_shape must be (H, W, C), got {in_shape!r}") from None
    h, w, c = check_int("in_shape[0] (H)", h, 1), check_int("in_shape[1] (W)", w, 1), check_int("in_shape[2] (C)", c, 1)
    kh, kw = _pair("kernel", kernel, 1)
    sh, sw = _pair("stride", stride, 1)
    dh, dw = _pair("dilation", dilation, 1)
    if isinstance(pads, (int, np.integer)) and not isinstance(pads, bool):
        pads = (pads,) * 4
    try:
        top, left, bottom, right = (check_int(f"pads[{i}]", p, 0) for i, p in enumerate(pads))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and "pads[" in str(exc):
            raise
        raise TypeError(f"pads must be an int or (top, left, bottom, right), got {pads!r}") from None
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if max(top, bottom) >= ekh or max(left, right) >= ekw:
        raise ValueError(f"pads {tuple(pads)} must be smaller than the (dilated) kernel {ekh}x{ekw}: "
                         "a window entirely in the padding is not supported")
    oh = (h + top + bottom - ekh) // sh + 1
    ow = (w + left + right - ekw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel {kh}x{kw} (dilation {dh}x{dw}) does not fit the padded image "
                         f"{h + top + bottom}x{w + left + right}")
    return (h, w, c), (kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw), (oh, ow)


class SWGSpec:
    """Parameters of a sliding-window generator, its numpy model and its hardware.

    Parameters
    ----------
    in_shape : (H, W, C)
    kernel, stride, dilation : int or (int, int)
    pads : int or (top, left, bottom, right)
    pad_value : int
        Code written where the window leaves the image (the input's zero point for conv,
        the type's minimum for max-pool); must be a code of ``elem``.
    elem : IntType
        Element type.
    simd : int
        Elements per output beat. Either it divides C (input beats carry ``simd``
        channels too), or it is a multiple of C covering whole pixels of the window
        (``simd/C`` divides ``kh*kw``; input beats carry one pixel, ``C`` elements, and
        the buffer gets one read port per pixel of a beat).
    slack_rows : int
        Rows of buffer beyond the minimum (kernel height + row stride), rounded up to a
        power of two with it: lets a bursty producer run further ahead.
    """

    def __init__(self, in_shape, kernel, stride=1, pads=0, dilation=1, *, pad_value=0,
                 elem: IntType = IntType(8, False), simd: int = 1, slack_rows: int = 0):
        (self.in_shape, self.kernel, self.stride, self.pads, self.dilation,
         out_hw) = window_geometry(in_shape, kernel, stride, pads, dilation)
        if not isinstance(elem, IntType):
            raise TypeError(f"elem must be an IntType, got {elem!r}")
        self.elem = elem
        self.pad_value = check_int("pad_value", pad_value, -(1 << 64))
        if not elem.min <= self.pad_value <= elem.max:
            raise ValueError(f"pad_value {pad_value} is not a code of {elem} ({elem.min}..{elem.max})")
        self.simd = check_int("simd", simd, 1)
        c = self.in_shape[2]
        kh, kw = self.kernel
        if c % self.simd == 0:
            self.word_elems, self.lanes = self.simd, 1
        elif self.simd % c == 0 and (kh * kw) % (self.simd // c) == 0:
            # A beat holds several whole pixels of the window: one read port per pixel.
            self.word_elems, self.lanes = c, self.simd // c
        else:
            raise ValueError(f"simd={simd} must divide the {c} input channels, or be a multiple of them "
                             f"that divides the {kh * kw}-pixel window into whole pixels")
        self.out_hw = out_hw
        ekh = (kh - 1) * self.dilation[0] + 1
        need = ekh + self.stride[0] + check_int("slack_rows", slack_rows, 0)
        self.rows = 1 << (need - 1).bit_length()

    # -- sizes ----------------------------------------------------------------------------
    @property
    def channel_words(self) -> int:
        """Memory words (of ``word_elems`` elements) per pixel."""
        return self.in_shape[2] // self.word_elems

    @property
    def window_beats(self) -> int:
        """Output beats per window."""
        return self.kernel[0] * self.kernel[1] * self.channel_words // self.lanes

    @property
    def window(self) -> int:
        """Elements per window (the K of the MVU behind it)."""
        return self.kernel[0] * self.kernel[1] * self.in_shape[2]

    @property
    def in_beats(self) -> int:
        h, w, _ = self.in_shape
        return h * w * self.channel_words

    @property
    def out_beats(self) -> int:
        oh, ow = self.out_hw
        return oh * ow * self.window_beats

    @property
    def cycles_per_frame(self) -> int:
        """Steady-state cycles per frame alone (one beat per cycle on its busier side)."""
        return max(self.in_beats, self.out_beats)

    @property
    def latency(self) -> int:
        """Cycles from the first input beat to the first window beat (input every cycle)."""
        h, w, _ = self.in_shape
        top, left = self.pads[0], self.pads[1]
        yl = min((self.kernel[0] - 1) * self.dilation[0] - top, h - 1)
        xl = min((self.kernel[1] - 1) * self.dilation[1] - left, w - 1)
        if self.out_hw == (1, 1):
            yl, xl = h - 1, w - 1
        return (yl * w + xl + 1) * self.channel_words + 1

    @property
    def buffer_words(self) -> int:
        return self.rows * self.in_shape[1] * self.channel_words

    # -- model and hardware ------------------------------------------------------------------
    def compute(self, x: np.ndarray) -> np.ndarray:
        """(B, H, W, C) codes -> (B, OH, OW, kh*kw*C) windows in (kh, kw, c) order."""
        x = np.asarray(x, dtype=np.int64)
        if x.shape[1:] != tuple(self.in_shape):
            raise ValueError(f"compute: x has shape {x.shape}, expected (B, {', '.join(map(str, self.in_shape))})")
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        top, left, bottom, right = self.pads
        oh, ow = self.out_hw
        xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=self.pad_value)
        out = np.empty((x.shape[0], oh, ow, kh, kw, x.shape[3]), dtype=np.int64)
        for oy in range(oh):
            for ox in range(ow):
                for i in range(kh):
                    for j in range(kw):
                        out[:, oy, ox, i, j, :] = xp[:, oy * sh + i * dh, ox * sw + j * dw, :]
        return out.reshape(x.shape[0], oh, ow, -1)

    def create(self) -> "SlidingWindow":
        return SlidingWindow(self)


class SlidingWindow(wiring.Component):
    """The sliding-window generator of an :class:`SWGSpec`.

    Members
    -------
    i : ``In(beat_signature(elem, word_elems))``
        The image, ``H*W*C/word_elems`` beats per frame.
    o : ``Out(beat_signature(elem, simd))``
        The windows, ``OH*OW*kh*kw*C/simd`` beats per frame.
    """

    def __init__(self, spec: SWGSpec):
        if not isinstance(spec, SWGSpec):
            raise TypeError(f"spec must be an SWGSpec, got {spec!r}")
        self.spec = spec
        super().__init__({"i": In(beat_signature(spec.elem, spec.word_elems)),
                          "o": Out(beat_signature(spec.elem, spec.simd))})

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        h, w, _ = s.in_shape
        cw_n = s.channel_words
        (kh, kw), (sh, sw), (dh, dw) = s.kernel, s.stride, s.dilation
        top, left, _, _ = s.pads
        oh, ow = s.out_hw
        rows = s.rows
        row_bits = (rows - 1).bit_length()
        lanes = s.lanes
        ew = element_shape(s.elem).width
        word = s.word_elems * ew

        m.submodules.buf = buf = memory.Memory(shape=unsigned(word), depth=s.buffer_words, init=[])
        wr = buf.write_port()
        rds = [buf.read_port() for _ in range(lanes)]

        def addr(slot, x, cw):
            return (slot * (w * cw_n) + x * cw_n + cw)[:len(wr.addr)]

        # Signed row/column arithmetic spans the padded image in both directions.
        coord = signed(max(h, w, oh * sh, ow * sw).bit_length() + max(h, w).bit_length() + 3)

        # -- writer state --
        wy = Signal(range(h + 1))
        wx = Signal(range(w + 1))
        wcw = Signal(range(cw_n))
        wslot = Signal(row_bits)
        wframe = Signal()
        # -- reader state --
        oy = Signal(range(oh))
        ox = Signal(range(ow))
        beats = kh * kw // lanes               # window positions per lane
        t = Signal(range(beats))
        rcw = Signal(range(cw_n))
        y0 = Signal(coord, init=-top)     # first input row of the current output row
        x0 = Signal(coord, init=-left)
        rbase = Signal(row_bits)          # buffer slot of row 0 of the reader's frame
        rframe = Signal()
        ahead = Signal()
        m.d.comb += ahead.eq(wframe != rframe)

        # Writer: it may fill row wy unless that row's slot still holds a row >= y0.
        w_rel = Signal(coord)
        m.d.comb += w_rel.eq(Mux(ahead, wy + h, wy))
        w_last = (wy == h - 1) & (wx == w - 1) & (wcw == cw_n - 1)
        w_ok = Signal()
        m.d.comb += w_ok.eq((w_rel < y0 + rows) & ~(ahead & w_last))
        m.d.comb += [
            self.i.ready.eq(w_ok),
            wr.addr.eq(addr(wslot, wx, wcw)),
            wr.data.eq(self.i.payload.as_value()),
            wr.en.eq(self.i.valid & w_ok),
        ]
        with m.If(self.i.valid & w_ok):
            with m.If(wcw == cw_n - 1):
                m.d.sync += wcw.eq(0)
                with m.If(wx == w - 1):
                    m.d.sync += [wx.eq(0), wslot.eq(wslot + 1)]
                    with m.If(wy == h - 1):
                        m.d.sync += [wy.eq(0), wframe.eq(~wframe)]
                    with m.Else():
                        m.d.sync += wy.eq(wy + 1)
                with m.Else():
                    m.d.sync += wx.eq(wx + 1)
            with m.Else():
                m.d.sync += wcw.eq(wcw + 1)

        # Reader: a pixel starts once the writer is past the last real pixel of its window
        # (the last pixel of a frame waits for the whole frame, so that the reader never
        # finishes a frame before the writer does).
        last_px = (oy == oh - 1) & (ox == ow - 1)
        yl = Signal(coord)
        xl = Signal(coord)
        m.d.comb += [
            yl.eq(Mux(last_px | (y0 + (kh - 1) * dh > h - 1), h - 1, y0 + (kh - 1) * dh)),
            xl.eq(Mux(last_px | (x0 + (kw - 1) * dw > w - 1), w - 1, x0 + (kw - 1) * dw)),
        ]
        at_start = (t == 0) & (rcw == 0)
        px_ready = ahead | (wy > yl) | ((wy == yl) & (wx > xl))
        go = Signal()
        m.d.comb += go.eq(~at_start | px_ready)

        out_valid = Signal()
        adv = Signal()
        m.d.comb += [adv.eq(~out_valid | self.o.ready), self.o.valid.eq(out_valid)]
        pad_word = Const(sum((s.pad_value & ((1 << ew) - 1)) << (k * ew) for k in range(s.word_elems)), word)
        lane_out = []
        for j, rd in enumerate(rds):
            # Lane j of beat t reads window position t*lanes + j: (row, column) offsets from tables.
            pos = [b * lanes + j for b in range(beats)]
            dy = Array(Const((p // kw) * dh, range((kh - 1) * dh + 1)) for p in pos)[t]
            dx = Array(Const((p % kw) * dw, range((kw - 1) * dw + 1)) for p in pos)[t]
            y = Signal(coord, name=f"y{j}")
            x = Signal(coord, name=f"x{j}")
            m.d.comb += [y.eq(y0 + dy), x.eq(x0 + dx)]
            pad = (y < 0) | (y >= h) | (x < 0) | (x >= w)
            slot = Signal(row_bits, name=f"slot{j}")
            m.d.comb += slot.eq((rbase + y)[:row_bits])
            out_pad = Signal(name=f"pad{j}")
            m.d.comb += [rd.en.eq(adv), rd.addr.eq(addr(slot, x[:max(1, (w - 1).bit_length())], rcw))]
            with m.If(adv):
                m.d.sync += out_pad.eq(pad)
            lane_out.append(Mux(out_pad, pad_word, rd.data))
        m.d.comb += self.o.payload.as_value().eq(Cat(*lane_out))
        with m.If(adv):
            m.d.sync += out_valid.eq(go)
            with m.If(go):
                with m.If(rcw == cw_n - 1):
                    m.d.sync += rcw.eq(0)
                    with m.If(t == beats - 1):
                        m.d.sync += t.eq(0)
                        # end of the window: next output pixel
                        with m.If(ox == ow - 1):
                            m.d.sync += [ox.eq(0), x0.eq(-left)]
                            with m.If(oy == oh - 1):
                                m.d.sync += [oy.eq(0), y0.eq(-top), rframe.eq(~rframe),
                                             rbase.eq((rbase + h)[:row_bits])]
                            with m.Else():
                                m.d.sync += [oy.eq(oy + 1), y0.eq(y0 + sh)]
                        with m.Else():
                            m.d.sync += [ox.eq(ox + 1), x0.eq(x0 + sw)]
                    with m.Else():
                        m.d.sync += t.eq(t + 1)
                with m.Else():
                    m.d.sync += rcw.eq(rcw + 1)
        return m
