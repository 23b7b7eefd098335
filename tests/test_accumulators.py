"""Property tests of compiler/accumulators.py: every bound the reports use is sound."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import require_module

require_module("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from accumulus.compiler.accumulators import (  # noqa: E402
    a2q_l1_budget, a2q_plus_l1_budget, datatype_bits, exact_bits, exact_range, layer_widths,
    worst_case_inputs,
)
from accumulus.compiler.types import IntType, signed_bits  # noqa: E402


@st.composite
def layer(draw, zero_sum=False):
    w_bits = draw(st.integers(2, 8))
    in_type = IntType(draw(st.integers(1, 8)), draw(st.booleans()))
    w_type = IntType(w_bits, True, narrow=draw(st.booleans()))
    channels, fan_in = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    w = np.array(draw(st.lists(st.integers(w_type.min, w_type.max), min_size=channels * fan_in,
                               max_size=channels * fan_in)), dtype=np.int64).reshape(channels, fan_in)
    if zero_sum:
        # Make each row sum to zero by appending its negated sum split into in-range pieces.
        rows = []
        for r in w:
            s, extra = int(r.sum()), []
            while s != 0:
                step = max(w_type.min, min(w_type.max, -s))
                extra.append(step)
                s += step
            rows.append(list(r) + extra)
        width = max(len(r) for r in rows)
        w = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)
        assert not w.sum(axis=1).any()
    return w, w_type, in_type


def _dot(w, x):
    return (w * x).sum(axis=1)


@settings(max_examples=200, deadline=None)
@given(layer())
def test_exact_bound_is_reached_by_worst_case_inputs(case):
    w, _, in_type = case
    lo, hi = exact_range(w, in_type)
    x_hi, x_lo = worst_case_inputs(w, in_type)
    assert x_hi.min() >= in_type.min and x_hi.max() <= in_type.max
    np.testing.assert_array_equal(_dot(w, x_hi), hi)
    np.testing.assert_array_equal(_dot(w, x_lo), lo)
    bits = exact_bits(w, in_type)
    for c in range(len(w)):
        assert bits[c] == signed_bits(lo[c], hi[c])
        assert bits[c] == 1 or not (-(1 << (bits[c] - 2)) <= lo[c] and hi[c] <= (1 << (bits[c] - 2)) - 1)


@settings(max_examples=200, deadline=None)
@given(layer(), st.integers(0, 2**31 - 1))
def test_random_inputs_stay_inside_exact_range(case, seed):
    w, _, in_type = case
    lo, hi = exact_range(w, in_type)
    x = np.random.default_rng(seed).integers(in_type.min, in_type.max + 1, size=(16,) + w.shape[1:])
    acc = x @ w.T
    assert (acc >= lo).all() and (acc <= hi).all()


@settings(max_examples=300, deadline=None)
@given(layer(), st.integers(2, 32))
def test_a2q_bound_covers_exact_when_l1_constraint_holds(case, p):
    w, _, in_type = case
    l1 = np.abs(w).sum(axis=1)
    ok = l1 <= a2q_l1_budget(p, in_type)
    assert (exact_bits(w, in_type)[ok] <= p).all()
    widths = layer_widths(w, case[1], in_type)
    assert (widths.a2q >= widths.exact).all()


@settings(max_examples=300, deadline=None)
@given(layer(zero_sum=True), st.integers(2, 32))
def test_a2q_plus_bound_covers_exact_for_zero_sum_weights(case, p):
    w, w_type, in_type = case
    l1 = np.abs(w).sum(axis=1)
    ok = l1 <= a2q_plus_l1_budget(p, in_type)
    assert (exact_bits(w, in_type)[ok] <= p).all()
    widths = layer_widths(w, w_type, in_type)
    assert (widths.a2q_plus >= widths.exact).all()


@settings(max_examples=300, deadline=None)
@given(layer())
def test_datatype_bound_covers_exact(case):
    w, w_type, in_type = case
    assert (exact_bits(w, in_type) <= datatype_bits(w_type, in_type, w.shape[1])).all()


def test_a2q_plus_needs_zero_sum():
    # All-positive weights over unsigned 8-bit inputs: L1 = 16 fits A2Q+'s P=12 budget (16.05),
    # but the range [0, 16*255] needs 13 bits -- the bound is a report column, not a width.
    in_type = IntType(8, False)
    w = np.ones((1, 16), dtype=np.int64)
    assert 16 <= a2q_plus_l1_budget(12, in_type)
    assert exact_bits(w, in_type)[0] == 13


def test_group_channels_keeps_natural_order_unless_it_saves_width():
    from accumulus.compiler.accumulators import group_channels, pe_widths

    exact = np.array([12, 9, 12, 9, 12, 9, 12, 9])
    # one PE serves every channel: no permutation can narrow it
    assert group_channels(exact, 1).tolist() == list(range(8))
    # already grouped (PE 0 gets the wide channels in natural order): nothing to gain
    assert group_channels(np.array([12, 9] * 4), 2).tolist() == list(range(8))
    # wide channels spread over both PEs: grouping them on one PE narrows the other
    spread = np.array([12, 12, 9, 9, 9, 9, 12, 12])
    order = group_channels(spread, 2)
    assert sorted(order.tolist()) == list(range(8))
    assert pe_widths(spread, 2, order).sum() < pe_widths(spread, 2).sum()
