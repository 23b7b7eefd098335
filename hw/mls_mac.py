"""MLS MAC cell and MLS dot-product engine (Zhong et al., "Exploring the Potential of Low-bit
Training of Convolutional Neural Networks": multi-level scaling, group-wise power-of-two
scales over sign/exponent/mantissa elements).

The integer semantics are those of ``compiler/mls.py`` (:func:`~accumulus.compiler.mls.mls_product`,
:func:`~accumulus.compiler.mls.mls_conv2d`): per element pair XOR the signs, add the
exponents, multiply the (M+1)-bit mantissas and shift the product left by ``D - e_w - e_x``
into an intra-group accumulator of ``MLSFormat.group_acc_bits(G*kh*kw)`` bits; across
groups, shift each group sum by ``2(2^Eg-1) - g_w - g_x`` into a dot accumulator of
``MLSFormat.dot_acc_bits`` bits. No multiplier is wider than (M+1)x(M+1) bits and every
shift is by a small constant range: this is why the paper calls the format "nearly fixed
point". The tensor scales are not applied here (requantization applies them once per output).
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.accumulators import ceil_log2
from accumulus.compiler.mls import MLSFormat, mls_product

from .mac import wrap
from .rom import check_int

__all__ = ["MLSMACSpec", "MLSMAC", "MLSDotSpec", "MLSDot"]

_FIELDS = ("sign", "exp", "man", "zero")


def _check_fmt(fmt) -> MLSFormat:
    if not isinstance(fmt, MLSFormat):
        raise TypeError(f"fmt must be an accumulus.compiler.mls.MLSFormat, got {fmt!r}")
    if fmt.mantissa_bits < 1 or fmt.group_bits < 1:
        raise ValueError(f"the MLS hardware needs mantissa_bits >= 1 and group_bits >= 1, got {fmt.name}")
    return fmt


def _aligned_term(m: Module, fmt: MLSFormat, ws, we, wm, wz, xs, xe, xm, xz, name: str) -> Signal:
    """One lane: the signed aligned product, ``fmt.term_bits`` wide (combinational)."""
    one = Const(1, 1)
    prod = Signal(unsigned(fmt.product_bits), name=f"{name}_prod")
    # (2^M + m_w) * (2^M + m_x): the hidden leading one on top of each M-bit mantissa
    m.d.comb += prod.eq(Cat(wm, one) * Cat(xm, one))
    shamt = Signal(range(fmt.exponent_shift_max + 1), name=f"{name}_shamt")
    m.d.comb += shamt.eq(fmt.exponent_shift_max - (we + xe))
    aligned = Signal(unsigned(fmt.product_bits + fmt.exponent_shift_max), name=f"{name}_aligned")
    m.d.comb += aligned.eq(prod << shamt)
    term = Signal(signed(fmt.term_bits), name=f"{name}_term")
    m.d.comb += term.eq(Mux(wz | xz, 0, Mux(ws ^ xs, -aligned, aligned)))
    return term


class MLSMACSpec:
    """One MLS MAC cell: ``acc = (first ? 0 : acc) + term(w, x)``, ``term`` the aligned signed
    product, at the intra-group width for ``terms_per_group = G*kh*kw`` products.

    Parameters
    ----------
    fmt : MLSFormat
    terms_per_group : int
        Products summed before the accumulator is restarted (``G * kh * kw``).
    """

    def __init__(self, fmt: MLSFormat, terms_per_group: int):
        self.fmt = _check_fmt(fmt)
        self.terms_per_group = check_int("terms_per_group", terms_per_group)
        self.acc_bits = fmt.group_acc_bits(self.terms_per_group)

    latency = 1
    """Cycles from operands to the updated accumulator."""

    def compute(self, w: dict, x: dict, first) -> np.ndarray:
        """Accumulator after each step; ``w``, ``x``: dicts of per-step code arrays
        ``sign, exp, man, zero``."""
        terms = mls_product(self.fmt, w["sign"], w["exp"], w["man"], w["zero"],
                            x["sign"], x["exp"], x["man"], x["zero"])
        acc, out = 0, []
        for t, f in zip(np.asarray(terms).tolist(), np.asarray(first).tolist()):
            acc = int(wrap((0 if f else acc) + t, self.acc_bits))
            out.append(acc)
        return np.array(out, dtype=np.int64)

    def create(self) -> "MLSMAC":
        return MLSMAC(self)


class MLSMAC(wiring.Component):
    """One MLS MAC cell (see :class:`MLSMACSpec`).

    Members
    -------
    w_sign, w_exp, w_man, w_zero, x_sign, x_exp, x_man, x_zero : In
        Element codes: sign (1), exponent (E), mantissa (M), zero flag (1).
    en : In(1)
        Update the accumulator this cycle.
    first : In(1)
        Start a new group sum.
    acc : Out(signed(acc_bits))
    """

    def __init__(self, spec: MLSMACSpec):
        if not isinstance(spec, MLSMACSpec):
            raise TypeError(f"spec must be an MLSMACSpec, got {spec!r}")
        self.spec = spec
        f = spec.fmt
        widths = {"sign": 1, "exp": f.exponent_bits, "man": f.mantissa_bits, "zero": 1}
        ports = {f"{o}_{k}": In(unsigned(widths[k])) for o in "wx" for k in _FIELDS}
        ports.update({"en": In(1), "first": In(1), "acc": Out(signed(spec.acc_bits))})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        term = _aligned_term(m, self.spec.fmt, self.w_sign, self.w_exp, self.w_man, self.w_zero,
                             self.x_sign, self.x_exp, self.x_man, self.x_zero, "lane")
        with m.If(self.en):
            m.d.sync += self.acc.eq(Mux(self.first, 0, self.acc) + term)
        return m


class MLSDotSpec:
    """An MLS dot-product engine: ``lanes`` element pairs per cycle, the intra-group
    accumulator over one group's ``G * taps`` products, then the shift-add of each group sum
    into the dot accumulator by its group exponents.

    One dot product is ``groups * steps_per_group`` valid steps, ``steps_per_group =
    (G / lanes) * taps``; the engine counts steps itself (it starts at step 0 after reset).
    The group exponents ``w_group``, ``x_group`` are sampled on a group's last step.

    Parameters
    ----------
    fmt : MLSFormat
    taps : int
        Kernel positions per group (``kh * kw``; 1 for a fully connected layer).
    groups : int
        Channel groups per dot product (``ceil(C / G)``).
    lanes : int, optional
        Element pairs per cycle, a divisor of ``G`` (default ``G``: one group per ``taps`` cycles).
    """

    def __init__(self, fmt: MLSFormat, taps: int, groups: int, lanes: int | None = None):
        self.fmt = _check_fmt(fmt)
        self.taps = check_int("taps", taps)
        self.groups = check_int("groups", groups)
        self.lanes = check_int("lanes", fmt.group_size if lanes is None else lanes)
        if fmt.group_size % self.lanes:
            raise ValueError(f"lanes must divide the group size {fmt.group_size}, got {self.lanes}")
        self.steps_per_group = (fmt.group_size // self.lanes) * self.taps
        self.terms_per_group = fmt.group_size * self.taps
        self.group_acc_bits = fmt.group_acc_bits(self.terms_per_group)
        self.acc_bits = fmt.dot_acc_bits(self.terms_per_group, self.groups)
        self.step_sum_bits = fmt.term_bits + ceil_log2(self.lanes)

    @property
    def steps_per_dot(self) -> int:
        """Valid input cycles per dot product."""
        return self.groups * self.steps_per_group

    latency = 2
    """Cycles from a dot product's last valid step to ``acc_valid``."""

    @property
    def dot_length(self) -> int:
        return self.groups * self.terms_per_group

    @property
    def register_bits(self) -> int:
        """Flip-flops of the engine: dot and group accumulators, step and group counters, the
        pending group sum's control (valid, first, last, shift) and ``acc_valid``."""
        def counter(n):
            return max(1, (n - 1).bit_length())
        return (self.acc_bits + self.group_acc_bits + counter(self.steps_per_group) + counter(self.groups)
                + 3 + counter(self.fmt.group_shift_max + 1) + 1)

    def arrange(self, w: dict, x: dict, w_group, x_group) -> dict:
        """The input stream of one dot product: ``w``, ``x`` dicts of (C, taps) code arrays
        ``sign, exp, man, zero``, ``w_group``, ``x_group`` (groups,) group exponents. Steps go
        group by group, tap by tap, then lane chunks of G; missing channels get the zero code.
        Returns dicts of (steps, lanes) arrays and per-step group exponents."""
        G, L = self.fmt.group_size, self.lanes
        c = np.asarray(w["sign"]).shape[0]
        if c > self.groups * G or np.asarray(w["sign"]).shape[1] != self.taps:
            raise ValueError(f"arrange: operands of shape {np.asarray(w['sign']).shape} do not fit "
                             f"{self.groups} groups of {G} channels x {self.taps} taps")
        out = {}
        for o, src in (("w", w), ("x", x)):
            for k in _FIELDS:
                a = np.zeros((self.groups * G, self.taps), np.int64)
                if k == "zero":
                    a[:] = 1
                a[:c] = np.asarray(src[k])
                # (groups, chunks, lanes, taps) -> (groups, taps, chunks, lanes)
                a = a.reshape(self.groups, G // L, L, self.taps).transpose(0, 3, 1, 2)
                out[f"{o}_{k}"] = a.reshape(-1, L)
        for o, g in (("w", w_group), ("x", x_group)):
            out[f"{o}_group"] = np.repeat(np.asarray(g, np.int64), self.steps_per_group)
        return out

    def compute(self, stream: dict) -> np.ndarray:
        """Dot accumulators of a stream of whole dot products (``arrange``'s layout,
        concatenated); wraps at the declared widths as the hardware does."""
        f = self.fmt
        terms = mls_product(f, *(stream[f"w_{k}"] for k in _FIELDS), *(stream[f"x_{k}"] for k in _FIELDS))
        steps = terms.shape[0]
        if steps % self.steps_per_dot:
            raise ValueError(f"compute: {steps} steps is not a whole number of {self.steps_per_dot}-step dot products")
        step_sums = terms.sum(axis=1)
        out, gacc, total = [], 0, 0
        for t in range(steps):
            k = t % self.steps_per_group
            gacc = int(wrap((0 if k == 0 else gacc) + int(step_sums[t]), self.group_acc_bits))
            if k == self.steps_per_group - 1:
                grp = (t // self.steps_per_group) % self.groups
                shift = f.group_shift_max - int(stream["w_group"][t]) - int(stream["x_group"][t])
                total = int(wrap((0 if grp == 0 else total) + (gacc << shift), self.acc_bits))
                if grp == self.groups - 1:
                    out.append(total)
        return np.array(out, dtype=np.int64)

    def create(self) -> "MLSDot":
        return MLSDot(self)


class MLSDot(wiring.Component):
    """MLS dot-product engine (see :class:`MLSDotSpec`).

    Members
    -------
    w_sign, w_zero, x_sign, x_zero : In(lanes)
        Bit ``i`` belongs to lane ``i``.
    w_exp, x_exp : In(lanes * E)
        Lane ``i`` in bits ``[i*E, (i+1)*E)``.
    w_man, x_man : In(lanes * M)
        Lane ``i`` in bits ``[i*M, (i+1)*M)``.
    w_group, x_group : In(Eg)
        Group exponents of the current group.
    valid : In(1)
        The lanes hold one step this cycle.
    acc : Out(signed(acc_bits))
        Dot accumulator; holds the finished dot product while ``acc_valid``.
    acc_valid : Out(1)
        One-cycle pulse, ``latency`` cycles after a dot product's last step.
    """

    def __init__(self, spec: MLSDotSpec):
        if not isinstance(spec, MLSDotSpec):
            raise TypeError(f"spec must be an MLSDotSpec, got {spec!r}")
        self.spec = spec
        f, L = spec.fmt, spec.lanes
        widths = {"sign": L, "exp": L * f.exponent_bits, "man": L * f.mantissa_bits, "zero": L}
        ports = {f"{o}_{k}": In(unsigned(widths[k])) for o in "wx" for k in _FIELDS}
        ports.update({"w_group": In(unsigned(f.group_bits)), "x_group": In(unsigned(f.group_bits)),
                      "valid": In(1), "acc": Out(signed(spec.acc_bits)), "acc_valid": Out(1)})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        s, f = self.spec, self.spec.fmt
        E, M = f.exponent_bits, f.mantissa_bits

        def lane(v, i, w):
            return v[i * w:(i + 1) * w]

        terms = [_aligned_term(m, f, lane(self.w_sign, i, 1), lane(self.w_exp, i, E), lane(self.w_man, i, M),
                               lane(self.w_zero, i, 1), lane(self.x_sign, i, 1), lane(self.x_exp, i, E),
                               lane(self.x_man, i, M), lane(self.x_zero, i, 1), f"lane{i}")
                 for i in range(s.lanes)]
        step_sum = Signal(signed(s.step_sum_bits))
        m.d.comb += step_sum.eq(sum(terms[1:], terms[0]))

        gacc = Signal(signed(s.group_acc_bits))
        step = Signal(range(s.steps_per_group))
        grp = Signal(range(s.groups))
        # a finished group sum waits one cycle in gacc while it is shifted into the dot sum
        pend = Signal()
        pend_first = Signal()
        pend_last = Signal()
        pend_shift = Signal(range(f.group_shift_max + 1))

        m.d.sync += pend.eq(0)
        with m.If(self.valid):
            m.d.sync += gacc.eq(Mux(step == 0, 0, gacc) + step_sum)
            with m.If(step == s.steps_per_group - 1):
                m.d.sync += [step.eq(0), pend.eq(1), pend_first.eq(grp == 0), pend_last.eq(grp == s.groups - 1),
                             pend_shift.eq(f.group_shift_max - (self.w_group + self.x_group))]
                m.d.sync += grp.eq(Mux(grp == s.groups - 1, 0, grp + 1))
            with m.Else():
                m.d.sync += step.eq(step + 1)
        shifted = Signal(signed(s.group_acc_bits + f.group_shift_max))
        m.d.comb += shifted.eq(gacc << pend_shift)
        with m.If(pend):
            m.d.sync += self.acc.eq(Mux(pend_first, 0, self.acc) + shifted)
        m.d.sync += self.acc_valid.eq(pend & pend_last)
        return m
