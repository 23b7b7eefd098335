"""UART harness: makes a generated stream top placeable and usable on a real board.

The host sends one image as ``frame_elems`` bytes (one input code per byte, in stream
order); the harness packs them into ``in_elems``-element beats of the top's
``s_axis_tdata`` (element ``i`` in bits ``[i*in_width, (i+1)*in_width)``, ``tlast`` on the
frame's last beat) and sends every output beat back as ``ceil(out_bits/8)`` bytes, least
significant byte first. With an ArgMax unit at the end of the plan that is one byte per
image: the class. A FIFO between the receiver and the packer absorbs the bytes that
arrive while the accelerator is still busy with the previous frame.

Also the wrapper place and route uses: it needs three pins (clock, RX, TX), where the bare
stream top needs hundreds (TOOLCHAIN.md: such a design cannot be placed).
"""
from __future__ import annotations

import re

from amaranth.build import ResourceError
from amaranth.hdl import Cat, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import fifo

__all__ = ["UARTRx", "UARTTx", "UARTHarness", "VerilogTop", "verilog_ports"]


def _check(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class UARTRx(Elaboratable):
    """8N1 receiver; ``divisor`` clock cycles per bit. ``data``/``valid`` pulse for one cycle per byte."""

    def __init__(self, divisor: int):
        self.divisor = _check("divisor", divisor, 4)
        self.rx = Signal(init=1)
        self.data = Signal(8)
        self.valid = Signal()

    def elaborate(self, platform):
        m = Module()
        # Two flip-flops: the RX pin is asynchronous to the clock.
        sync_rx = Signal(2, init=0b11)
        m.d.sync += sync_rx.eq(Cat(self.rx, sync_rx[0]))
        rx = sync_rx[1]
        timer = Signal(range(self.divisor * 3 // 2 + 1))
        bit = Signal(range(9))
        shreg = Signal(8)
        m.d.sync += self.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # Sample data bits mid-bit: 1.5 bit times after the start edge.
                    m.d.sync += [timer.eq(self.divisor * 3 // 2 - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), bit.eq(bit + 1), timer.eq(self.divisor - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.d.sync += [self.data.eq(shreg), self.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
        return m


class UARTTx(Elaboratable):
    """8N1 transmitter: ``data`` is taken when ``valid & ready``."""

    def __init__(self, divisor: int):
        self.divisor = _check("divisor", divisor, 4)
        self.tx = Signal(init=1)
        self.data = Signal(8)
        self.valid = Signal()
        self.ready = Signal()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shreg = Signal(10, init=0x3FF)
        bits = Signal(range(11))
        m.d.comb += [self.ready.eq(bits == 0), self.tx.eq(shreg[0])]
        with m.If(bits == 0):
            with m.If(self.valid):
                m.d.sync += [shreg.eq(Cat(0, self.data, 1)), bits.eq(10), timer.eq(self.divisor - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits - 1), timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


def verilog_ports(text: str, module: str = "accumulus_top") -> dict[str, int]:
    """Port name -> width of ``module`` in Verilog ``text`` (ANSI or non-ANSI declarations)."""
    start = re.search(rf"module\s+\\?{re.escape(module)}\s*[(#;]", text)
    if not start:
        raise ValueError(f"module '{module}' not found in the Verilog text")
    end = text.find("endmodule", start.start())
    body = text[start.start():end]
    ports = {}
    for m in re.finditer(r"\b(input|output)\s+(?:wire|reg|logic)?\s*(?:signed\s+)?(\[(\d+)\s*:\s*(\d+)\])?\s*"
                         r"(\\?[A-Za-z_][\w$]*)", body):
        width = abs(int(m.group(3)) - int(m.group(4))) + 1 if m.group(2) else 1
        ports[m.group(5).lstrip("\\")] = width
    return ports


class VerilogTop(Elaboratable):
    """The generated ``accumulus_top`` (Verilog) as an Amaranth instance with AXI-Stream ports."""

    PORTS = ("s_axis_tdata", "s_axis_tvalid", "s_axis_tready", "s_axis_tlast",
             "m_axis_tdata", "m_axis_tvalid", "m_axis_tready", "m_axis_tlast")

    def __init__(self, in_bits: int, out_bits: int, module: str = "accumulus_top"):
        self.module = module
        self.rst = Signal()
        self.s_axis_tdata = Signal(_check("in_bits", in_bits))
        self.s_axis_tvalid = Signal()
        self.s_axis_tready = Signal()
        self.s_axis_tlast = Signal()
        self.m_axis_tdata = Signal(_check("out_bits", out_bits))
        self.m_axis_tvalid = Signal()
        self.m_axis_tready = Signal()
        self.m_axis_tlast = Signal()

    @classmethod
    def from_verilog(cls, text: str, module: str = "accumulus_top") -> "VerilogTop":
        ports = verilog_ports(text, module)
        missing = [p for p in cls.PORTS + ("clk", "rst") if p not in ports]
        if missing:
            raise ValueError(f"module '{module}' lacks the AXI-Stream ports {missing} (found {sorted(ports)})")
        return cls(ports["s_axis_tdata"], ports["m_axis_tdata"], module)

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = Instance(
            self.module,
            i_clk=ClockSignal("sync"), i_rst=self.rst,
            i_s_axis_tdata=self.s_axis_tdata, i_s_axis_tvalid=self.s_axis_tvalid,
            o_s_axis_tready=self.s_axis_tready, i_s_axis_tlast=self.s_axis_tlast,
            o_m_axis_tdata=self.m_axis_tdata, o_m_axis_tvalid=self.m_axis_tvalid,
            i_m_axis_tready=self.m_axis_tready, o_m_axis_tlast=self.m_axis_tlast,
        )
        return m


class UARTHarness(Elaboratable):
    """UART in, UART out, around a stream core (see the module docstring for the protocol).

    Parameters
    ----------
    core : Elaboratable
        Has the AXI-Stream signals of :class:`VerilogTop` as attributes (a
        :class:`VerilogTop`, or an Amaranth model with the same attributes in simulation).
    in_elems, in_width : int
        Elements per input beat and bits per element (each element arrives as one byte).
    frame_elems : int
        Input elements per image (a multiple of ``in_elems``).
    out_bits : int
        Width of ``m_axis_tdata``; each output beat leaves as ``ceil(out_bits/8)`` bytes.
    divisor : int
        Clock cycles per UART bit (clock frequency / baud rate).
    fifo_depth : int
        Bytes buffered between the receiver and the input packer.

    Members
    -------
    rx : in, tx : out
        The UART pins (idle high).
    led : out
        Toggles after every output beat is sent.
    """

    def __init__(self, core, *, in_elems: int, in_width: int, frame_elems: int, out_bits: int,
                 divisor: int, fifo_depth: int = 256):
        self.core = core
        self.in_elems = _check("in_elems", in_elems)
        self.in_width = _check("in_width", in_width)
        if in_width > 8:
            raise ValueError(f"in_width={in_width}: the UART harness sends one byte per element (<= 8 bits)")
        self.frame_elems = _check("frame_elems", frame_elems)
        if frame_elems % in_elems:
            raise ValueError(f"frame_elems={frame_elems} is not a multiple of in_elems={in_elems}")
        self.out_bits = _check("out_bits", out_bits)
        self.divisor = _check("divisor", divisor, 4)
        self.fifo_depth = _check("fifo_depth", fifo_depth, 2)
        self.rx = Signal(init=1)
        self.tx = Signal(init=1)
        self.led = Signal()

    @property
    def out_bytes(self) -> int:
        return (self.out_bits + 7) // 8

    @property
    def frame_beats(self) -> int:
        return self.frame_elems // self.in_elems

    def elaborate(self, platform):
        m = Module()
        core = self.core
        m.submodules.core = core
        if hasattr(core, "rst"):
            # Power-on reset for the core: board clock domains may have no reset at all.
            por = Signal(4, init=0, reset_less=True)
            with m.If(por != 15):
                m.d.sync += por.eq(por + 1)
            m.d.comb += core.rst.eq(por != 15)
        m.submodules.uart_rx = rx = UARTRx(self.divisor)
        m.submodules.uart_tx = tx = UARTTx(self.divisor)
        m.submodules.rx_fifo = q = fifo.SyncFIFOBuffered(width=8, depth=self.fifo_depth)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx)]
        m.d.comb += [q.w_data.eq(rx.data), q.w_en.eq(rx.valid)]

        # Input packer: in_elems bytes -> one beat; the last byte of a beat is presented
        # straight from the FIFO so that a beat costs no extra cycle.
        w, n = self.in_width, self.in_elems
        held = Signal(max(1, (n - 1) * w))
        elem = Signal(range(n))
        beat = Signal(range(self.frame_beats))
        last_elem = elem == n - 1
        m.d.comb += [
            core.s_axis_tdata.eq(Cat(held[:(n - 1) * w], q.r_data[:w])),
            core.s_axis_tvalid.eq(q.r_rdy & last_elem),
            core.s_axis_tlast.eq(beat == self.frame_beats - 1),
            q.r_en.eq(~last_elem | core.s_axis_tready),
        ]
        with m.If(q.r_rdy & q.r_en):
            with m.If(last_elem):
                m.d.sync += elem.eq(0)
                with m.If(beat == self.frame_beats - 1):
                    m.d.sync += beat.eq(0)
                with m.Else():
                    m.d.sync += beat.eq(beat + 1)
            with m.Else():
                m.d.sync += elem.eq(elem + 1)
                for k in range(n - 1):
                    with m.If(elem == k):
                        m.d.sync += held[k * w:(k + 1) * w].eq(q.r_data[:w])

        # Output: capture one beat, send its bytes LSB first, then accept the next beat.
        nbytes = self.out_bytes
        out = Signal(nbytes * 8)
        left = Signal(range(nbytes + 1))
        m.d.comb += core.m_axis_tready.eq(left == 0)
        with m.If(core.m_axis_tvalid & core.m_axis_tready):
            m.d.sync += [out.eq(core.m_axis_tdata), left.eq(nbytes)]
        m.d.comb += [tx.data.eq(out[:8]), tx.valid.eq(left != 0)]
        with m.If(tx.valid & tx.ready):
            m.d.sync += [out.eq(out >> 8), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += self.led.eq(~self.led)
        return m


class BoardTop(Elaboratable):
    """The harness on an amaranth-boards platform: clock from the board, UART pins, one LED."""

    def __init__(self, harness: UARTHarness):
        self.harness = harness

    def elaborate(self, platform):
        m = Module()
        m.submodules.harness = h = self.harness
        uart = platform.request("uart", 0)
        m.d.comb += [h.rx.eq(uart.rx.i), uart.tx.o.eq(h.tx)]
        try:
            led = platform.request("led", 0)
            m.d.comb += led.o.eq(h.led)
        except ResourceError:  # a board without a user LED still gets a working harness
            pass
        try:
            # ULX3S routes its FTDI TX through a buffer that must be enabled.
            en = platform.request("uart_tx_enable", 0)
            m.d.comb += en.o.eq(1)
        except ResourceError:
            pass
        return m
