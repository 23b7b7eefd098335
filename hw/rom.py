"""Read-only memories for weights and thresholds.

A :class:`ROM` is an ``amaranth.lib.memory.Memory`` with ``init`` and one synchronous read
port: Yosys maps such a memory to block RAM when it is large enough (a combinational
read would force LUTs). :func:`pack_words` turns a ``(depth, lanes)`` integer array into
the words, lane ``j`` in bits ``[j*lane_bits, (j+1)*lane_bits)`` as two's complement.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Elaboratable, Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["ROM", "pack_words", "check_int", "lanes_fit"]


def check_int(name: str, value, lo: int | None = 1) -> int:
    """``value`` as an int, else TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def lanes_fit(values: np.ndarray, bits: int, signed: bool) -> bool:
    values = np.asarray(values)
    if values.size == 0:
        return True
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return int(values.min()) >= lo and int(values.max()) <= hi


def pack_words(values, lane_bits: int, signed: bool = True) -> list[int]:
    """Pack a ``(depth, lanes)`` integer array into ``depth`` words of ``lanes*lane_bits`` bits."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be (depth, lanes), got shape {values.shape}")
    lane_bits = check_int("lane_bits", lane_bits)
    if not lanes_fit(values, lane_bits, signed):
        raise ValueError(
            f"values span [{values.min()}, {values.max()}], which does not fit "
            f"{'signed' if signed else 'unsigned'} lane_bits={lane_bits}")
    mask = (1 << lane_bits) - 1
    words = []
    for row in values.tolist():
        word = 0
        for j, v in enumerate(row):
            word |= (int(v) & mask) << (j * lane_bits)
        words.append(word)
    return words


class ROM(wiring.Component):
    """Synchronous-read ROM.

    Parameters
    ----------
    words : list of int
        Contents, one unsigned integer per row (see :func:`pack_words`).
    width : int
        Word width in bits.

    Members
    -------
    addr : ``In(ceil_log2(depth))``
        Row to read.
    en : ``In(1, init=1)``
        When 0 the read data holds its value (pipeline stall).
    data : ``Out(width)``
        ``words[addr]`` one cycle after ``addr`` was presented with ``en`` high.
    """

    latency = 1

    def __init__(self, words, width: int):
        width = check_int("width", width)
        words = [int(w) for w in words]
        if not words:
            raise ValueError("words must hold at least one row")
        if any(w < 0 or w >> width for w in words):
            raise ValueError(f"every word must be an unsigned {width}-bit value")
        self.words, self.width, self.depth = words, width, len(words)
        super().__init__({
            "addr": In(ceil_log2(self.depth)),
            "en": In(1, init=1),
            "data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.depth, init=self.words)
        port = mem.read_port()
        m.d.comb += [port.addr.eq(self.addr), port.en.eq(self.en), self.data.eq(port.data)]
        return m
