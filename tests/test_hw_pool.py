"""Max-pool and average-pool window sums against the golden model, under gaps and stalls."""
from __future__ import annotations

import numpy as np
import pytest

from accumulus.compiler.golden import _pool_windows
from accumulus.compiler.types import IntType
from accumulus.hw.pool import PoolSpec
from accumulus.hw.simstream import Sink, Source, pack, run, unpack

CASES = [
    dict(kind="max", in_shape=(4, 4, 2), kernel=2, simd=1),
    dict(kind="max", in_shape=(5, 5, 4), kernel=3, stride=2, pads=1, simd=2),
    dict(kind="max", in_shape=(6, 6, 3), kernel=2, simd=3),
    dict(kind="avg", in_shape=(4, 6, 3), kernel=2, simd=3),
    dict(kind="avg", in_shape=(5, 5, 2), kernel=3, stride=1, pads=1, simd=1, pad_value=2),
]


def golden(spec, x):
    layer = {"kernel": list(spec.swg.kernel), "stride": list(spec.swg.stride), "pads": list(spec.swg.pads),
             "out_shape": list(spec.swg.out_hw)}
    w = _pool_windows(x, layer, spec.swg.pad_value)
    return (w.max(axis=(3, 4)) if spec.kind == "max" else w.sum(axis=(3, 4))).reshape(x.shape[0], -1)


def simulate(spec, x, gap, stall, seed=0):
    s, t, ot = spec.simd, spec.elem, spec.out_type
    dut = spec.create()
    src = Source(dut.i, [pack(v, t.bits) for v in x.reshape(-1, s)], gap=gap)
    snk = Sink(dut.o, x.shape[0] * spec.out_beats, stall=stall)
    run(dut, [src], [snk], seed=seed, settle=16)
    return np.array([unpack(b, s, ot.bits, ot.signed) for b in snk.beats]).reshape(x.shape[0], -1), snk.times


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['kind']}{c['in_shape']}k{c['kernel']}")
@pytest.mark.parametrize("elem", [IntType(4, True), IntType(3, False)], ids=str)
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.3, 0.3)])
def test_pool_matches_golden(case, elem, gap, stall):
    spec = PoolSpec(elem=elem, **case)
    rng = np.random.default_rng(3)
    x = rng.integers(elem.min, elem.max + 1, size=(3,) + spec.swg.in_shape)
    want = golden(spec, x)
    assert np.array_equal(spec.compute(x).reshape(3, -1), want)
    got, _ = simulate(spec, x, gap, stall, seed=int(gap * 10))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_extremes(kind):
    elem = IntType(4, True)
    spec = PoolSpec(kind, (4, 4, 2), 2, elem=elem, simd=2)
    x = np.stack([np.full((4, 4, 2), -8), np.full((4, 4, 2), 7),
                  np.where(np.indices((4, 4, 2)).sum(0) % 2, 7, -8)]).astype(np.int64)
    got, times = simulate(spec, x, 0.0, 0.0)
    np.testing.assert_array_equal(got, golden(spec, x))
    if kind == "avg":
        assert spec.out_type == IntType(6, True)  # 4 * [-8, 7] = [-32, 28]
    assert list(np.diff(times[spec.out_beats - 1::spec.out_beats])) == [spec.cycles_per_frame] * 2


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(kind="min", in_shape=(4, 4, 2), kernel=2), ValueError, "kind"),
    (dict(kind="max", in_shape=(4, 4, 2), kernel=2, pad_value=0), ValueError, "pad_value"),
    (dict(kind="max", in_shape=(4, 4, 3), kernel=2, simd=2), ValueError, "simd"),
    (dict(kind="avg", in_shape=(4, 4, 2), kernel=(2,)), TypeError, "kernel"),
])
def test_parameter_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PoolSpec(elem=IntType(4, True), **kwargs)
