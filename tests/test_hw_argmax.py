"""ArgMax unit: first maximum (ties to the lowest index), as numpy and the golden model."""
from __future__ import annotations

import numpy as np
import pytest

from accumulus.compiler.types import IntType
from accumulus.hw.argmax import ArgMaxSpec
from accumulus.hw.simstream import Sink, Source, pack, run


def simulate(spec, x, gap, stall, seed=0):
    e = spec.elems
    dut = spec.create()
    src = Source(dut.i, [pack(v, spec.elem.bits) for v in x.reshape(-1, e)], gap=gap)
    snk = Sink(dut.o, x.shape[0], stall=stall)
    run(dut, [src], [snk], seed=seed, settle=8)
    return np.array(snk.beats), snk.times


@pytest.mark.parametrize("elem", [IntType(6, True), IntType(3, False)], ids=str)
@pytest.mark.parametrize("length,elems", [(10, 1), (10, 2), (10, 5), (12, 4), (1, 1)])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.3, 0.5)])
def test_argmax_matches_numpy(elem, length, elems, gap, stall):
    spec = ArgMaxSpec(elem, length, elems)
    rng = np.random.default_rng(length * elems)
    x = rng.integers(elem.min, elem.max + 1, size=(12, length))
    # ties: all equal, all min, max at both ends, repeated maxima inside a beat
    x[0] = elem.min
    x[1] = elem.max
    x[2] = elem.min
    x[2, [0, -1]] = elem.max
    x[3] = 0
    x[3, length // 2:] = elem.max
    got, _ = simulate(spec, x, gap, stall)
    np.testing.assert_array_equal(got, np.argmax(x, axis=1))
    np.testing.assert_array_equal(spec.compute(x), np.argmax(x, axis=1))


def test_one_frame_per_beat_count():
    spec = ArgMaxSpec(IntType(8, True), 16, 4)
    x = np.random.default_rng(0).integers(-128, 128, size=(5, 16))
    got, times = simulate(spec, x, 0.0, 0.0)
    np.testing.assert_array_equal(got, np.argmax(x, axis=1))
    assert list(np.diff(times)) == [spec.cycles_per_frame] * 4


@pytest.mark.parametrize("args,exc,match", [
    ((IntType(4, True), 10, 3), ValueError, "elems"),
    ((IntType(4, True), 0, 1), ValueError, "length"),
    ((IntType(4, True), 10, 1, 3), ValueError, "index_bits"),
    (("int4", 10, 1), TypeError, "elem"),
    ((IntType(4, True), 10.0, 1), TypeError, "length"),
])
def test_parameter_validation(args, exc, match):
    with pytest.raises(exc, match=match):
        ArgMaxSpec(*args)
