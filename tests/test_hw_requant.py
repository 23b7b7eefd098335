"""Requantizers against compiler/golden.py's requantize: thresholds (binary search, parallel)
and multiplier/shift, at the clipping edges, under input gaps and output stalls."""
from __future__ import annotations

import numpy as np
import pytest

from accumulus.compiler import golden
from accumulus.compiler.plan import Plan
from accumulus.compiler.types import IntType
from accumulus.hw.requant import RequantSpec
from accumulus.hw.stream_util import pack_beats, simulate_stream, unpack_beats


def _threshold_plan(rng, n, levels, acc_bits, desc_every=3):
    """Thresholds sorted inside [lo, hi+1] of each channel; channel 0 spans its whole
    width, so its top threshold hi+1 does not fit the accumulator width."""
    lo = np.empty(n, dtype=np.int64)
    hi = np.empty(n, dtype=np.int64)
    t = np.empty((n, levels), dtype=np.int64)
    desc = np.zeros(n, dtype=bool)
    for c in range(n):
        b = acc_bits[c]
        lo[c], hi[c] = -(1 << (b - 1)), (1 << (b - 1)) - 1
        if c % 2:
            lo[c] //= 2
            hi[c] //= 3
        row = np.sort(rng.integers(lo[c], hi[c] + 2, size=levels))
        row[0], row[-1] = lo[c], hi[c] + 1               # both clipping edges present
        desc[c] = c % desc_every == desc_every - 1
        t[c] = row[::-1] if desc[c] else row
    plan = Plan({}, {"t": t, "d": desc})
    rq = {"kind": "thresholds", "thresholds": "t", "descending": "d", "out_scale": 1, "out_bias": 0,
          "out_type": IntType(max(1, levels.bit_length()), False).to_json()}
    return plan, rq, lo, hi


def _acc_vectors(rng, lo, hi, frames):
    acc = np.stack([rng.integers(l, h + 1, size=frames) for l, h in zip(lo, hi)], axis=1)
    acc[0], acc[1] = lo, hi                              # all-min and all-max
    return acc


def _run(spec, acc, rng, gap, stall):
    order = spec.channel_order
    lanes = acc[:, order].reshape(-1, spec.pe)             # beat f lane p = channel order[p + pe*f]
    width = max(spec.acc_bits)
    dut = spec.create()
    res = simulate_stream(dut, pack_beats(lanes, spec.pe, width), lanes.shape[0], rng=rng, gap=gap, stall=stall)
    got = unpack_beats(res["out"], spec.pe, spec.out_bits, spec.out_type.signed, 1).reshape(acc.shape[0], -1)
    natural = np.empty_like(got)
    natural[:, order] = got
    return natural, res


MIXED, FULL = [7, 9, 7, 8, 6, 9], [8] * 6    # FULL: even channels' hi+1 exceeds the width


@pytest.mark.parametrize("search,levels,pe,gap,stall,acc_bits", [
    ("binary", 15, 2, 0.3, 0.3, MIXED),
    ("binary", 6, 3, 0.2, 0.5, MIXED),       # T not 2^b-1: probes past T never count
    ("parallel", 15, 2, 0.3, 0.3, MIXED),
    ("parallel", 3, 6, 0.0, 0.0, MIXED),
    ("binary", 7, 2, 0.2, 0.2, FULL),
    ("parallel", 7, 3, 0.2, 0.2, FULL),
])
def test_thresholds_match_golden(search, levels, pe, gap, stall, acc_bits):
    rng = np.random.default_rng(levels * 10 + pe)
    n = 6
    plan, rq, lo, hi = _threshold_plan(rng, n, levels, acc_bits)
    order = rng.permutation(n)
    lane_bits = [max(acc_bits[c] for c in order[p::pe]) for p in range(pe)]
    spec = RequantSpec(plan, rq, pe, lane_bits, order, search=search)
    assert spec.search == search
    if acc_bits is FULL:
        assert (spec.limit < levels).any()               # the cut-off path is exercised
    acc = _acc_vectors(rng, lo, hi, 12)
    want = golden.requantize(plan, rq, acc)
    assert np.array_equal(spec.compute(acc), want)
    got, _ = _run(spec, acc, rng, gap, stall)
    assert np.array_equal(got, want)
    # the extremes reach both ends (a threshold at lo always counts, one at hi+1 never does)
    assert want.min() <= 1 and want.max() >= levels - 1


def test_thresholds_are_stored_at_the_accumulator_width():
    rng = np.random.default_rng(1)
    plan, rq, lo, hi = _threshold_plan(rng, 4, 7, [8, 8, 8, 8], desc_every=2)
    # channels 0 and 2 fill 8 bits: their top ascending threshold hi+1 = 128 does not fit
    spec = RequantSpec(plan, rq, 2, [8, 8], [0, 1, 2, 3])
    assert spec.threshold_bits == [8, 8]
    assert spec.stored.max() <= 127 and spec.stored.min() >= -128
    assert spec.limit[0] == 6 and spec.limit[1] == 7
    acc = np.array([lo, hi, lo + 1, hi - 1])
    assert np.array_equal(spec.compute(acc), golden.requantize(plan, rq, acc))
    wide = RequantSpec(plan, rq, 2, [12, 12], [0, 1, 2, 3])
    assert wide.threshold_bits == [12, 12]
    assert np.array_equal(wide.stored, plan.array("t")) and np.all(wide.limit == 7)


def test_binary_search_rate_and_auto_choice():
    rng = np.random.default_rng(2)
    plan, rq, lo, hi = _threshold_plan(rng, 4, 15, [8] * 4)
    slow = RequantSpec(plan, rq, 4, [8] * 4, search="auto", beat_interval=3)
    fast = RequantSpec(plan, rq, 4, [8] * 4, search="auto", beat_interval=8)
    assert (slow.search, fast.search) == ("parallel", "binary")
    assert fast.cycles_per_beat == 5 and fast.latency == 5
    acc = _acc_vectors(rng, lo, hi, 16)
    got, res = _run(fast, acc, rng, 0.0, 0.0)
    assert np.array_equal(got, golden.requantize(plan, rq, acc))
    assert np.all(np.diff(res["in_times"]) == fast.cycles_per_beat)
    assert res["out_times"][0] - res["in_times"][0] == fast.latency


def _multshift_plan(rng, n, out_type, clip):
    bias = rng.integers(-50, 50, n)
    mult = rng.integers(-300, 300, n)
    mult[mult == 0] = 1
    shift = rng.integers(0, 12, n)
    shift[0] = 0
    plan = Plan({}, {"b": bias, "m": mult, "s": shift})
    rq = {"kind": "multshift", "bias": "b", "mult": "m", "shift": "s", "zero_point": 3, "clip": clip,
          "out_type": out_type.to_json()}
    return plan, rq


@pytest.mark.parametrize("out_type,clip", [(IntType(4, False), True), (IntType(8, True), True),
                                           (IntType(24, True), False)])
def test_multshift_matches_golden(out_type, clip):
    rng = np.random.default_rng(out_type.bits)
    n, pe, bits = 6, 3, 12
    plan, rq = _multshift_plan(rng, n, out_type, clip)
    order = rng.permutation(n)
    spec = RequantSpec(plan, rq, pe, [bits] * pe, order)
    lo, hi = np.full(n, -(1 << (bits - 1))), np.full(n, (1 << (bits - 1)) - 1)
    acc = _acc_vectors(rng, lo, hi, 20)
    # exact ties: (acc + bias) * mult an odd multiple of 2^(shift-1)
    s = plan.array("s")
    for c in range(n):
        if s[c] > 0:
            acc[2, c] = -plan.array("b")[c] + (1 << (s[c] - 1))
            acc[3, c] = -plan.array("b")[c] + 3 * (1 << (s[c] - 1))
    want = golden.requantize(plan, rq, acc)
    assert np.array_equal(spec.compute(acc), want)
    got, _ = _run(spec, acc, rng, 0.3, 0.3)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("change,exc,word", [
    (dict(pe=4), ValueError, "pe"),
    (dict(acc_bits=[8]), ValueError, "acc_bits"),
    (dict(search="cordic"), ValueError, "search"),
    (dict(channel_order=[0, 0, 1, 2, 3, 4]), ValueError, "channel_order"),
    (dict(requant="thresholds"), TypeError, "requant"),
])
def test_requant_spec_validation(change, exc, word):
    rng = np.random.default_rng(0)
    plan, rq, _, _ = _threshold_plan(rng, 6, 3, [8] * 6)
    kwargs = dict(requant=rq, pe=2, acc_bits=[8, 8], channel_order=None, search="auto")
    kwargs.update(change)
    with pytest.raises(exc, match=word):
        RequantSpec(plan, **kwargs)


def test_negative_shift_rejected():
    rng = np.random.default_rng(0)
    plan, rq = _multshift_plan(rng, 2, IntType(4, False), True)
    plan.arrays["s"] = np.array([1, -1])
    with pytest.raises(ValueError, match="shift"):
        RequantSpec(plan, rq, 2, [8, 8])
