"""A small MAC engine emitted with Amaranth, for testing the synthesis flow on its own.

``toy_mac_verilog(simd, weight_bits, input_bits, acc_bits)`` is SIMD multipliers
(submodule ``mul``), an adder tree (``tree``) and an accumulator (``acc``): the same
split the report uses, on a design small enough to synthesise in seconds. The real
targets are the generated engines of ``hw/``; this exists so that the boards flow can be
tested without them.
"""
from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, Signal, signed, unsigned
from amaranth.back import verilog


class _Mul(Elaboratable):
    def __init__(self, simd, wbits, xbits):
        self.w = [Signal(signed(wbits), name=f"w{i}") for i in range(simd)]
        self.x = [Signal(unsigned(xbits), name=f"x{i}") for i in range(simd)]
        self.p = [Signal(signed(wbits + xbits + 1), name=f"p{i}") for i in range(simd)]

    def elaborate(self, platform):
        m = Module()
        for w, x, p in zip(self.w, self.x, self.p):
            m.d.comb += p.eq(w * x)
        return m


class _Tree(Elaboratable):
    def __init__(self, simd, pbits):
        self.p = [Signal(signed(pbits), name=f"p{i}") for i in range(simd)]
        self.s = Signal(signed(pbits + max(1, (simd - 1).bit_length())))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.s.eq(sum(self.p))
        return m


class _Acc(Elaboratable):
    def __init__(self, in_bits, acc_bits):
        self.d = Signal(signed(in_bits))
        self.clear = Signal()
        self.q = Signal(signed(acc_bits))

    def elaborate(self, platform):
        m = Module()
        with m.If(self.clear):
            m.d.sync += self.q.eq(self.d)
        with m.Else():
            m.d.sync += self.q.eq(self.q + self.d)
        return m


class ToyMAC(Elaboratable):
    """SIMD lanes of ``weight_bits x input_bits`` products summed into an ``acc_bits`` accumulator."""

    def __init__(self, simd=4, weight_bits=4, input_bits=4, acc_bits=16):
        for name, v in (("simd", simd), ("weight_bits", weight_bits), ("input_bits", input_bits),
                        ("acc_bits", acc_bits)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ToyMAC.{name} must be a positive int, got {v!r}")
        self.simd, self.wbits, self.xbits, self.acc_bits = simd, weight_bits, input_bits, acc_bits
        self.w = Signal(simd * weight_bits)
        self.x = Signal(simd * input_bits)
        self.clear = Signal()
        self.acc = Signal(signed(acc_bits))

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = _Mul(self.simd, self.wbits, self.xbits)
        m.submodules.tree = tree = _Tree(self.simd, self.wbits + self.xbits + 1)
        m.submodules.acc = acc = _Acc(len(tree.s), self.acc_bits)
        for i in range(self.simd):
            m.d.comb += [mul.w[i].eq(self.w[i * self.wbits:(i + 1) * self.wbits]),
                         mul.x[i].eq(self.x[i * self.xbits:(i + 1) * self.xbits]),
                         tree.p[i].eq(mul.p[i])]
        # Registered inputs and product sum keep the logic between flip-flops, as in an engine.
        m.d.comb += [acc.d.eq(tree.s), acc.clear.eq(self.clear), self.acc.eq(acc.q)]
        return m


def toy_mac_verilog(simd=4, weight_bits=4, input_bits=4, acc_bits=16, name="toy_mac") -> str:
    top = ToyMAC(simd, weight_bits, input_bits, acc_bits)
    return verilog.convert(top, name=name, ports=[top.w, top.x, top.clear, top.acc])


class ToyStreamTop(Elaboratable):
    """A stream top with the generated design's AXI-Stream ports: a MAC over each frame.

    Each input beat of ``simd`` unsigned ``input_bits`` codes is multiplied by constant
    signed weights and accumulated; on ``tlast`` the accumulator leaves as one output beat
    (``acc_bits`` padded to whole bytes). Enough to exercise place and route and the
    bitstream flow without ``hw/``.
    """

    def __init__(self, simd=4, weight_bits=4, input_bits=5, acc_bits=16, seed=0):
        import numpy as np

        rng = np.random.default_rng(seed)
        lo, hi = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
        self.weights = [int(v) for v in rng.integers(lo, hi + 1, size=simd)]
        self.simd, self.xbits, self.acc_bits = simd, input_bits, acc_bits
        self.out_bits = (acc_bits + 7) // 8 * 8
        self.clk = Signal()
        self.rst = Signal()
        self.s_axis_tdata = Signal(simd * input_bits)
        self.s_axis_tvalid = Signal()
        self.s_axis_tready = Signal()
        self.s_axis_tlast = Signal()
        self.m_axis_tdata = Signal(self.out_bits)
        self.m_axis_tvalid = Signal()
        self.m_axis_tready = Signal()
        self.m_axis_tlast = Signal()

    def compute(self, frame) -> int:
        """The output beat for one frame (list of codes), as the hardware sends it."""
        total = sum(self.weights[i % self.simd] * int(x) for i, x in enumerate(frame))
        v = total & ((1 << self.acc_bits) - 1)        # the accumulator wraps at acc_bits
        if v >> (self.acc_bits - 1):
            v -= 1 << self.acc_bits
        return v & ((1 << self.out_bits) - 1)          # sign-extended into the padded beat

    def elaborate(self, platform):
        from amaranth.hdl import ClockDomain, Const

        m = Module()
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.clk), cd.rst.eq(self.rst)]
        acc = Signal(signed(self.acc_bits))
        prod = sum(Const(w, signed(8)) * self.s_axis_tdata[i * self.xbits:(i + 1) * self.xbits]
                   for i, w in enumerate(self.weights))
        m.d.comb += [self.s_axis_tready.eq(~self.m_axis_tvalid), self.m_axis_tlast.eq(1)]
        with m.If(self.m_axis_tvalid & self.m_axis_tready):
            m.d.sync += self.m_axis_tvalid.eq(0)
        with m.If(self.s_axis_tvalid & self.s_axis_tready):
            m.d.sync += acc.eq(acc + prod)
            with m.If(self.s_axis_tlast):
                m.d.sync += [acc.eq(0), self.m_axis_tvalid.eq(1),
                             self.m_axis_tdata.eq((acc + prod).as_signed())]
        return m


def toy_stream_top_verilog(simd=4, weight_bits=4, input_bits=5, acc_bits=16, seed=0) -> str:
    """Verilog module ``accumulus_top`` with ``clk``, ``rst`` and the AXI-Stream ports."""
    top = ToyStreamTop(simd, weight_bits, input_bits, acc_bits, seed)
    ports = [top.clk, top.rst, top.s_axis_tdata, top.s_axis_tvalid, top.s_axis_tready, top.s_axis_tlast,
             top.m_axis_tdata, top.m_axis_tvalid, top.m_axis_tready, top.m_axis_tlast]
    return verilog.convert(top, name="accumulus_top", ports=ports)
