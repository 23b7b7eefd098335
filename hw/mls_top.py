"""Building blocks of the per-layer MLS top (docs/mls.md, "Integer semantics"): the integer
MLS encoder that turns a buffered frame's fixed-point integers into MLS codes, after Zhong et
al., "Exploring the Potential of Low-bit Training of Convolutional Neural Networks" (2020).

The semantics are ``compiler/mls.py``'s :func:`~accumulus.compiler.mls.quantize_int`; both
units are combinational and compare shifted integers against the frame maximum ``S`` only
(no divider wider than the ``M`` mantissa bits, done as ``M`` restoring steps):

* :class:`MLSGroupExponent`: a group's maximum magnitude ``gmax`` and ``S`` -> the group
  exponent ``g`` the elements are coded with, and the code ``g_code`` stored (0 when the
  whole group rounds to zero);
* :class:`MLSElementEncoder`: an element's magnitude, its sign, the group's ``g`` and ``S``
  -> ``sign, exp, man, zero``.

The frame buffer, the frame maximum and the stream wiring around them (hw/stream_util.py)
are the remaining parts of the top (docs/mls.md, "Not done yet").
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.mls import MLSFormat

__all__ = ["MLSGroupExponent", "MLSElementEncoder"]


def _check(fmt, width):
    if not isinstance(fmt, MLSFormat):
        raise TypeError(f"fmt must be an accumulus.compiler.mls.MLSFormat, got {fmt!r}")
    if fmt.mantissa_bits < 1 or fmt.group_bits < 1:
        raise ValueError(f"the MLS hardware needs mantissa_bits >= 1 and group_bits >= 1, got {fmt.name}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int (bits of a magnitude), got {width!r}")


class MLSGroupExponent(wiring.Component):
    """``g`` = the smallest ``k`` in ``[0, 2^Eg-1]`` with ``gmax * 2^k >= S`` (else ``2^Eg-1``),
    minus one when ``gmax`` then rounds up to 2; ``g_code`` = 0 when ``gmax`` is 0 or rounds
    to zero at ``g`` (then every element of the group does), else ``g``."""

    def __init__(self, fmt: MLSFormat, width: int):
        _check(fmt, width)
        self.fmt, self.width = fmt, width
        super().__init__({"gmax": In(unsigned(width)), "s": In(unsigned(width)),
                          "g": Out(range(fmt.max_group_exponent + 1)),
                          "g_code": Out(range(fmt.max_group_exponent + 1))})

    def elaborate(self, platform):
        m = Module()
        f = self.fmt
        M, gmx, emax = f.mantissa_bits, f.max_group_exponent, f.max_exponent
        k = Signal(range(gmx + 1))
        m.d.comb += k.eq(gmx)
        for kk in range(gmx, -1, -1):                 # the last (smallest) match wins
            with m.If((self.gmax << kk) >= self.s):
                m.d.comb += k.eq(kk)
        over = Signal()
        m.d.comb += over.eq((k > 0) & ((self.gmax << (k + M + 1)) >= self.s * ((1 << (M + 2)) - 1)))
        m.d.comb += self.g.eq(Mux(self.gmax == 0, 0, Mux(over, k - 1, k)))
        rounds_to_zero = (self.gmax << (self.g + emax + 1)) <= self.s
        m.d.comb += self.g_code.eq(Mux((self.gmax == 0) | rounds_to_zero, 0, self.g))
        return m


class MLSElementEncoder(wiring.Component):
    """One element: magnitude ``a``, ``neg``, the group's ``g`` and the frame maximum ``s``
    -> MLS codes ``sign, exp, man, zero`` (nearest rounding, ties to even mantissa)."""

    def __init__(self, fmt: MLSFormat, width: int):
        _check(fmt, width)
        self.fmt, self.width = fmt, width
        super().__init__({"a": In(unsigned(width)), "neg": In(1), "g": In(range(fmt.max_group_exponent + 1)),
                          "s": In(unsigned(width)),
                          "sign": Out(1), "exp": Out(range(fmt.max_exponent + 1)),
                          "man": Out(unsigned(fmt.mantissa_bits)), "zero": Out(1)})

    def elaborate(self, platform):
        m = Module()
        f = self.fmt
        M, emax = f.mantissa_bits, f.max_exponent
        ag = Signal(unsigned(self.width + f.max_group_exponent))
        m.d.comb += ag.eq(self.a << self.g)
        e = Signal(range(emax + 1))
        normal = Signal()
        for kk in range(emax, -1, -1):                # smallest kk with ag * 2^kk >= S
            with m.If((ag << kk) >= self.s):
                m.d.comb += [e.eq(kk), normal.eq(self.a != 0)]
        under = Signal()
        m.d.comb += under.eq((self.a != 0) & ~normal & ((ag << (emax + 1)) > self.s))
        # N = ag * 2^(e+M) - S * 2^M, 0 <= N < S * 2^M: M quotient bits by restoring division
        nbits = self.width + f.max_group_exponent + emax + M + 1
        rem = Signal(unsigned(nbits), name="rem0")
        m.d.comb += rem.eq(Mux(normal, (ag << (e + M)) - (self.s << M), 0))
        q_bits = []
        for i in range(M - 1, -1, -1):
            nxt = Signal(unsigned(nbits), name=f"rem_{i}")
            bit = Signal(name=f"q_{i}")
            m.d.comb += bit.eq(rem >= (self.s << i))
            m.d.comb += nxt.eq(Mux(bit, rem - (self.s << i), rem))
            q_bits.append(bit)
            rem = nxt
        q = Signal(unsigned(M))
        for i, bit in zip(range(M - 1, -1, -1), q_bits):
            m.d.comb += q[i].eq(bit)
        up = Signal()
        m.d.comb += up.eq(((rem << 1) > self.s) | (((rem << 1) == self.s) & q[0]))
        mq = Signal(unsigned(M + 1))
        m.d.comb += mq.eq(q + up)
        carry = mq[M]
        zero = ~(normal | under)
        m.d.comb += [
            self.zero.eq(zero),
            self.sign.eq(~zero & self.neg),
            self.exp.eq(Mux(normal, Mux(carry, e - 1, e), Mux(under, emax, 0))),
            self.man.eq(Mux(normal & ~carry, mq[:M], 0)),
        ]
        return m
