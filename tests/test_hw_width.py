"""Stream plumbing: width converters, FIFOs and forks keep every element, in order."""
from __future__ import annotations

import math

import numpy as np
import pytest

from accumulus.compiler.types import IntType
from accumulus.hw.fifo import Fork, StreamFIFO, beat_layout
from accumulus.hw.simstream import Sink, Source, pack, run, unpack
from accumulus.hw.width import WidthConverter

T = IntType(4, True)


@pytest.mark.parametrize("a,b", [(1, 1), (1, 4), (4, 1), (2, 3), (3, 2), (6, 4), (16, 8)])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.4)])
def test_width_converter_keeps_sequence(a, b, gap, stall):
    n = 48 * 3
    x = np.random.default_rng(a * 7 + b).integers(T.min, T.max + 1, size=n)
    x[:6] = [T.min, T.max, -1, 0, T.min, T.max]
    dut = WidthConverter(T, a, b, frame=48)
    src = Source(dut.i, [pack(x[k:k + a], 4) for k in range(0, n, a)], gap=gap)
    snk = Sink(dut.o, n // b, stall=stall)
    run(dut, [src], [snk], seed=a + b, settle=10)
    got = [v for w in snk.beats for v in unpack(w, b, 4, True)]
    assert got == list(x)
    if gap == 0 and stall == 0:
        # one beat per cycle on the narrower side (gcd(a, b) elements per beat inside
        # when neither divides the other)
        assert snk.times[-1] - snk.times[0] <= n // math.gcd(a, b) + 1


def test_width_converter_validation():
    with pytest.raises(ValueError, match="a=5"):
        WidthConverter(T, 5, 2, frame=48)
    with pytest.raises(ValueError, match="b"):
        WidthConverter(T, 1, 0)
    with pytest.raises(TypeError, match="element type"):
        WidthConverter("int4", 1, 2)


@pytest.mark.parametrize("depth", [1, 2, 5, 64])
def test_fifo_order_under_gaps_and_stalls(depth):
    layout = beat_layout(T, 2)
    x = [int(v) for v in np.random.default_rng(depth).integers(0, 256, size=200)]
    dut = StreamFIFO(layout, depth)
    src = Source(dut.i, list(x), gap=0.3)
    snk = Sink(dut.o, len(x), stall=0.5)
    run(dut, [src], [snk], settle=10)
    assert snk.beats == x


def test_fifo_validation():
    with pytest.raises(ValueError, match="depth"):
        StreamFIFO(beat_layout(T, 2), 0)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("stall", [0.0, 0.6])
def test_fork_delivers_every_beat_to_every_consumer(n, stall):
    dut = Fork(beat_layout(T, 1), n)
    x = [int(v) for v in np.random.default_rng(n).integers(0, 16, size=120)]
    src = Source(dut.i, x, gap=0.2)
    # consumers stall independently (different probabilities)
    sinks = [Sink(o, len(x), stall=stall * (k + 1) / n) for k, o in enumerate(dut.outputs)]
    run(dut, [src], sinks, seed=n, settle=10)
    for s in sinks:
        assert s.beats == x
    if stall == 0.0:
        assert sinks[0].times[-1] - sinks[0].times[0] < len(x) * 1.5  # no stall: about one beat per offered cycle
