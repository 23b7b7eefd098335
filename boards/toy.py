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
