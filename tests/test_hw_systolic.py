"""The systolic array against its numpy model, with pipeline stalls, bubbles and deskew."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from accumulus.compiler.accumulators import exact_range
from accumulus.compiler.types import IntType
from accumulus.hw.stream_util import pack_beat
from accumulus.hw.systolic import ArraySpec, exact_tree_bits, tree_shape

WT, IT = IntType(4, True), IntType(4, False)


def Z(shape):
    return np.zeros(shape, dtype=np.int64)


def _steps(rng, depth, sum_len, sums, bubble):
    """A step sequence of ``sums`` sums of ``sum_len`` valid steps each, with bubbles."""
    addr, valid, first, last = [], [], [], []
    for _ in range(sums):
        base = rng.integers(0, depth - sum_len + 1)
        for s in range(sum_len):
            while rng.random() < bubble:
                addr.append(0); valid.append(False); first.append(False); last.append(False)
            addr.append(base + s); valid.append(True); first.append(s == 0); last.append(s == sum_len - 1)
    return np.array(addr), np.array(valid), np.array(first), np.array(last)


def _run(spec, addr, x, valid, first, last, rng, stall):
    dut = spec.create()
    got = []
    n = len(addr)

    async def bench(ctx):
        t, idle = 0, 0
        while idle < spec.latency + 4:
            en = not (stall and rng.random() < stall)
            ctx.set(dut.en, en)
            if t < n:
                ctx.set(dut.addr, int(addr[t]))
                ctx.set(dut.x, pack_beat(x[t], spec.input_type.bits))
                ctx.set(dut.valid, int(valid[t]))
                ctx.set(dut.first, int(first[t]))
                ctx.set(dut.last, int(last[t]))
            else:
                ctx.set(dut.valid, 0)
                idle += 1
            _, _, av, acc = await ctx.tick().sample(dut.acc_valid, dut.acc)
            if en and av:
                got.append([int(a) for a in acc])
            if en and t < n:
                t += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got, dtype=np.int64).reshape(-1, spec.cols)


@pytest.mark.parametrize("cols,rows,sum_len,stall,bubble,every", [
    (3, 5, 4, 0.0, 0.0, 2),     # sum_len >= cols: results held in place
    (4, 4, 2, 0.3, 0.2, 1),     # sum_len < cols: deskew delay lines
    (5, 1, 1, 0.2, 0.3, 2),     # one row (no adder tree), one step per sum
    (2, 7, 3, 0.4, 0.1, 1),     # odd rows: a node passes through a level
    (1, 8, 1, 0.0, 0.0, 2),
    (3, 16, 2, 0.2, 0.2, 3),
])
def test_array_matches_model(cols, rows, sum_len, stall, bubble, every):
    rng = np.random.default_rng(cols * 100 + rows)
    depth = max(sum_len, 3) + 2
    w = rng.integers(WT.min, WT.max + 1, size=(cols, depth, rows))
    w[0, 0] = WT.max                                  # extreme weights at the first address
    spec = ArraySpec(w, WT, IT, [16] * cols, sum_len=sum_len, register_every=every)
    addr, valid, first, last = _steps(rng, depth, sum_len, 8, bubble)
    x = rng.integers(IT.min, IT.max + 1, size=(len(addr), rows))
    x[:sum_len] = IT.max
    want = spec.compute(addr, x, valid, first, last)
    got = _run(spec, addr, x, valid, first, last, rng, stall)
    assert want.shape == (8, cols)
    assert np.array_equal(got, want)
    # the model against plain matrix arithmetic (no width is narrower than exact here)
    steps = np.nonzero(valid)[0].reshape(8, sum_len)
    direct = np.array([[sum(int(w[c, addr[t]] @ x[t]) for t in seq) for c in range(cols)] for seq in steps])
    assert np.array_equal(want, direct)


def test_exact_tree_widths_hold_the_extremes_and_no_less():
    rng = np.random.default_rng(7)
    w = rng.integers(WT.min, WT.max + 1, size=(6, 8))
    bits = exact_tree_bits(w, IT)
    shape = tree_shape(8)
    assert [len(level) for level in bits] == [8, 4, 2, 1]
    lo, hi = exact_range(w, IT)                      # root over a step = one row's range
    root = bits[-1][0]
    assert -(1 << (root - 1)) <= lo.min() and hi.max() <= (1 << (root - 1)) - 1
    assert not (-(1 << (root - 2)) <= lo.min() and hi.max() <= (1 << (root - 2)) - 1)
    for level, spans in zip(bits, shape):
        for b, (s, e) in zip(level, spans):
            lo, hi = exact_range(w[:, s:e], IT)
            assert -(1 << (b - 1)) <= lo.min() and hi.max() <= (1 << (b - 1)) - 1


def test_narrow_tree_wraps_like_the_model():
    """Nodes narrower than their exact range wrap in hardware exactly as the model says."""
    rng = np.random.default_rng(11)
    cols, rows, depth = 2, 4, 4
    w = np.full((cols, depth, rows), WT.min)
    tree = [[[6] * 4, [6] * 2, [6]] for _ in range(cols)]
    spec = ArraySpec(w, WT, IT, [6, 6], sum_len=2, tree_bits=tree)
    addr, valid, first, last = _steps(rng, depth, 2, 4, 0.0)
    x = np.full((len(addr), rows), IT.max)
    want = spec.compute(addr, x, valid, first, last)
    got = _run(spec, addr, x, valid, first, last, rng, 0.0)
    assert np.array_equal(got, want)
    assert not np.array_equal(want, np.full_like(want, 2 * rows * WT.min * IT.max))


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(weights=Z((2, 3)), acc_bits=[8, 8], sum_len=1), ValueError, "weights"),
    (dict(weights=Z((2, 3, 4)), acc_bits=[8], sum_len=1), ValueError, "acc_bits"),
    (dict(weights=Z((2, 3, 4)) + 9, acc_bits=[8, 8], sum_len=1), ValueError, "weight_type"),
    (dict(weights=Z((2, 3, 4)), acc_bits=[8, 8], sum_len=0), ValueError, "sum_len"),
    (dict(weights=np.zeros((2, 3, 4), dtype=float), acc_bits=[8, 8], sum_len=1), TypeError, "weights"),
    (dict(weights=Z((2, 3, 4)), acc_bits=[8, 8], sum_len=1, tree_bits=[[[8]]] * 2), ValueError, "tree_bits"),
])
def test_array_spec_validation(kwargs, exc, word):
    kwargs = dict(kwargs)
    with pytest.raises(exc, match=word):
        ArraySpec(kwargs.pop("weights"), WT, IT, **kwargs)
