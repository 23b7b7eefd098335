"""The linear threshold form (compiler/linthresh.py, hw/requant.py ``linear``): thresholds of
an affine map followed by a uniform quantizer, as trained models give them, become
``clip((m·a' + b) >> s, c0, c1)`` exactly on the accumulators' range; the requantizer built
on it equals the threshold count (the golden model's semantics) in simulation under
back-pressure; thresholds with no such form keep their comparators."""
from __future__ import annotations

import math

import numpy as np
import pytest

from accumulus.compiler.linthresh import check_fit, fit_channel, fit_layer, linear_counts
from accumulus.compiler.plan import Plan
from accumulus.compiler.types import IntType


def affine_thresholds(rng, n, levels, lo, hi):
    """Per channel: the thresholds of ``clip(round(alpha·a + beta), 0, levels)`` (computed by
    brute force over a wide range), ascending for alpha > 0, descending for alpha < 0."""
    t = np.empty((n, levels), dtype=np.int64)
    desc = np.zeros(n, dtype=bool)
    for c in range(n):
        span = hi[c] - lo[c]
        alpha = rng.uniform(0.6, 3.0) * levels / span * (-1 if c % 3 == 2 else 1)
        beta = rng.uniform(-0.3, 0.3) * levels + (levels / 2 - alpha * (lo[c] + hi[c]) / 2)
        a = np.arange(lo[c] - 4 * span, hi[c] + 4 * span + 1)
        code = np.clip(np.floor(alpha * a + beta + 0.5), 0, levels).astype(np.int64)
        desc[c] = alpha < 0
        for j in range(1, levels + 1):
            # ascending: the smallest a with code >= j; descending: the largest a with code >= j
            idx = np.nonzero(code >= j)[0]
            t[c, j - 1] = a[idx[0]] if not desc[c] else a[idx[-1]]
    return t, desc


def brute_count(row, desc, limit, a):
    return sum(1 for v in row[:limit] if (v >= a if desc else v <= a))


@pytest.mark.parametrize("levels", [1, 3, 15, 63])
def test_affine_thresholds_have_an_exact_linear_form(levels):
    rng = np.random.default_rng(levels)
    n = 8
    lo = -rng.integers(50, 3000, size=n)
    hi = rng.integers(50, 3000, size=n)
    t, desc = affine_thresholds(rng, n, levels, lo, hi)
    limit = np.full(n, levels)
    fits = fit_layer(t, desc, limit, lo, hi)
    assert fits is not None
    for c, f in enumerate(fits):
        assert f["m"] >= 0 and f["s"] >= 0 and f["desc"] == bool(desc[c])
        a = np.arange(lo[c], hi[c] + 1)
        got = linear_counts(f, a)
        want = np.array([brute_count(t[c], desc[c], levels, int(v)) for v in a[:: max(1, len(a) // 997)]])
        assert np.array_equal(got[:: max(1, len(a) // 997)], want)
        assert check_fit(f, t[c], bool(desc[c]), levels, lo[c], hi[c])


def test_a_changed_constant_is_caught():
    """check_fit fails when the form is off by one anywhere: the check can fail."""
    rng = np.random.default_rng(7)
    lo, hi = np.array([-400]), np.array([500])
    t, desc = affine_thresholds(rng, 1, 15, lo, hi)
    f = fit_channel(t[0], bool(desc[0]), 15, -400, 500)
    assert check_fit(f, t[0], bool(desc[0]), 15, -400, 500)
    for key, delta in (("b", 1 << f["s"]), ("m", 1), ("c1", -1)):
        bad = dict(f, **{key: f[key] + delta})
        assert not check_fit(bad, t[0], bool(desc[0]), 15, -400, 500), key


def test_no_form_for_a_double_step_and_constant_channels():
    # two thresholds at one value: the count jumps by two, no floor of a line does that
    assert fit_channel(np.array([-5, 3, 3, 9]), False, 4, -20, 20) is None
    # every threshold outside the range: a constant count, no hardware
    f = fit_channel(np.array([-50, -40, 100]), False, 3, -20, 20)
    assert f["m"] == 0 and f["c0"] == f["c1"] == 2
    assert np.array_equal(linear_counts(f, np.arange(-20, 21)), np.full(41, 2))
    # limit cuts the thresholds that can never count
    f = fit_channel(np.array([-10, 0, 10, 10**6]), False, 3, -20, 20)
    assert check_fit(f, np.array([-10, 0, 10, 10**6]), False, 3, -20, 20)


@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.3, 0.3)])
def test_linear_requant_hardware_equals_threshold_count(gap, stall):
    from conftest import require_module

    require_module("amaranth")
    from test_hw_requant import _run

    from accumulus.hw.requant import RequantSpec

    rng = np.random.default_rng(3)
    n, levels = 6, 15
    lo = -rng.integers(100, 2000, size=n)
    hi = rng.integers(100, 2000, size=n)
    t, desc = affine_thresholds(rng, n, levels, lo, hi)
    plan = Plan({}, {"t": t, "d": desc})
    rq = {"kind": "thresholds", "thresholds": "t", "descending": "d", "out_scale": 1, "out_bias": 0,
          "out_type": IntType(4, False).to_json()}
    bits = [int(max(-l, h)).bit_length() + 1 for l, h in zip(lo, hi)]
    spec = RequantSpec(plan, rq, n, bits, None, "auto", beat_interval=1, acc_range=(lo, hi))
    assert spec.search == "linear" and spec.latency == 3
    acc = np.stack([rng.integers(l, h + 1, size=60) for l, h in zip(lo, hi)], axis=1)
    edges = np.stack([np.clip(np.stack([t[:, j] - 1, t[:, j], t[:, j] + 1]), lo, hi) for j in range(levels)])
    acc = np.concatenate([acc, edges.reshape(-1, n), lo[None], hi[None]]).astype(np.int64)
    want = np.array([[brute_count(t[c], desc[c], levels, int(a[c])) for c in range(n)] for a in acc])
    assert np.array_equal(spec.compute(acc), want)
    got, _ = _run(spec, acc, rng, gap, stall)
    assert np.array_equal(got, want)
    # without the ranges, or asked for parallel, the comparators stay
    assert RequantSpec(plan, rq, n, bits, None, "auto", beat_interval=1).search == "parallel"
    assert RequantSpec(plan, rq, n, bits, None, "parallel", beat_interval=1, acc_range=(lo, hi)).search == "parallel"
    assert math.isfinite(spec.linear_adder_bits) and spec.linear_adder_bits > 0
