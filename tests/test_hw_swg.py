"""Sliding-window generator against the golden model's im2col, under gaps and stalls."""
from __future__ import annotations

import numpy as np
import pytest

from accumulus.compiler.golden import _im2col
from accumulus.compiler.types import IntType
from accumulus.hw.simstream import Sink, Source, pack, run, unpack
from accumulus.hw.swg import SWGSpec

CASES = [
    dict(in_shape=(5, 6, 2), kernel=3, stride=1, pads=1, simd=1),
    dict(in_shape=(6, 5, 4), kernel=3, stride=2, pads=(1, 0, 1, 1), simd=2),
    dict(in_shape=(4, 4, 2), kernel=2, stride=2, pads=0, simd=2),
    dict(in_shape=(7, 7, 1), kernel=(3, 2), stride=(2, 1), pads=(0, 1, 2, 0), simd=1, dilation=(2, 1)),
    dict(in_shape=(2, 2, 3), kernel=3, stride=1, pads=1, simd=3),
    dict(in_shape=(3, 3, 2), kernel=3, stride=1, pads=0, simd=1),
    dict(in_shape=(4, 9, 2), kernel=1, stride=1, pads=0, simd=2),
    # beats of several whole pixels (simd a multiple of C): one read port per pixel
    dict(in_shape=(5, 5, 1), kernel=3, stride=1, pads=1, simd=3),
    dict(in_shape=(5, 5, 1), kernel=3, stride=1, pads=1, simd=9),
    dict(in_shape=(5, 4, 2), kernel=3, stride=2, pads=(1, 0, 1, 1), simd=6),
    dict(in_shape=(6, 6, 2), kernel=2, stride=1, pads=0, simd=4),
]


def golden_windows(spec, x):
    conv = {"kernel": list(spec.kernel), "stride": list(spec.stride), "pads": list(spec.pads),
            "dilation": list(spec.dilation), "out_shape": list(spec.out_hw), "pad_value": spec.pad_value}
    return _im2col(x, conv).reshape(x.shape[0], -1)


def simulate(spec, x, gap, stall, seed=0):
    s, t = spec.simd, spec.elem
    dut = spec.create()
    src = Source(dut.i, [pack(v, t.bits) for v in x.reshape(-1, spec.word_elems)], gap=gap)
    snk = Sink(dut.o, x.shape[0] * spec.out_beats, stall=stall)
    run(dut, [src], [snk], seed=seed, settle=16)
    got = np.array([unpack(b, s, t.bits, t.signed) for b in snk.beats]).reshape(x.shape[0], -1)
    return got, snk.times


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['in_shape']}k{c['kernel']}s{c['stride']}")
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.35, 0.35)])
def test_windows_match_golden(case, gap, stall):
    elem = IntType(4, True)
    spec = SWGSpec(elem=elem, pad_value=-3, **case)
    rng = np.random.default_rng(7)
    x = rng.integers(elem.min, elem.max + 1, size=(3,) + spec.in_shape)
    want = golden_windows(spec, x)
    assert np.array_equal(spec.compute(x).reshape(3, -1), want)
    got, _ = simulate(spec, x, gap, stall, seed=int(gap * 100))
    np.testing.assert_array_equal(got, want)


def test_pixel_lanes_keep_one_beat_per_cycle():
    """simd = 9 on one channel: a whole 3x3 window per beat, one beat per output pixel."""
    spec = SWGSpec((6, 6, 1), 3, 1, 1, elem=IntType(5, False), simd=9)
    assert spec.lanes == 9 and spec.word_elems == 1 and spec.window_beats == 1
    x = np.random.default_rng(2).integers(0, 32, size=(4, 6, 6, 1))
    got, times = simulate(spec, x, 0.0, 0.0)
    np.testing.assert_array_equal(got, golden_windows(spec, x))
    ends = times[spec.out_beats - 1::spec.out_beats]
    assert max(np.diff(ends)) <= spec.in_beats + 2  # input-bound: 36 pixels in, 36 windows out


def test_extreme_codes_and_pad_value():
    elem = IntType(8, False)
    spec = SWGSpec((4, 4, 2), 3, 1, 1, pad_value=255, elem=elem, simd=2)
    x = np.stack([np.zeros((4, 4, 2)), np.full((4, 4, 2), 255), np.full((4, 4, 2), 128)]).astype(np.int64)
    got, _ = simulate(spec, x, 0.2, 0.2)
    np.testing.assert_array_equal(got, golden_windows(spec, x))


def test_steady_state_one_beat_per_cycle():
    """Frames follow each other without a gap: the interval is the output beat count."""
    spec = SWGSpec((6, 6, 2), 3, 1, 1, elem=IntType(4, False), simd=1)
    x = np.random.default_rng(1).integers(0, 16, size=(4, 6, 6, 2))
    got, times = simulate(spec, x, 0.0, 0.0)
    np.testing.assert_array_equal(got, golden_windows(spec, x))
    ends = times[spec.out_beats - 1::spec.out_beats]
    assert list(np.diff(ends)) == [spec.out_beats] * 3
    assert spec.rows >= 3 + 1 and spec.rows & (spec.rows - 1) == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_shape=(4, 4), kernel=3), "in_shape"),
    (dict(in_shape=(4, 4, 3), kernel=3, simd=2), "simd"),
    (dict(in_shape=(4, 4, 2), kernel=3, simd=4), "simd"),   # 2 pixels do not tile a 9-pixel window
    (dict(in_shape=(4, 4, 2), kernel=0), "kernel"),
    (dict(in_shape=(4, 4, 2), kernel=3, stride=0), "stride"),
    (dict(in_shape=(4, 4, 2), kernel=3, pads=3), "pads"),
    (dict(in_shape=(4, 4, 2), kernel=3, pads=(1, 1, 1)), "pads"),
    (dict(in_shape=(4, 4, 2), kernel=3, pad_value=16), "pad_value"),
    (dict(in_shape=(2, 2, 2), kernel=5, pads=1), "kernel"),
])
def test_parameter_validation(kwargs, match):
    kwargs.setdefault("elem", IntType(4, False))
    with pytest.raises((ValueError, TypeError), match=match):
        SWGSpec(**kwargs)


def test_elem_type_checked():
    with pytest.raises(TypeError, match="elem"):
        SWGSpec((4, 4, 2), 3, elem="uint4")
