"""MAC cells against their numpy models (and plain integer arithmetic), under wrapping."""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from accumulus.compiler.types import IntType
from accumulus.hw.mac import BipolarMACSpec, MACSpec, wrap


def _run_mac(spec, w, x, first, en):
    dut = spec.create()
    got = []

    async def bench(ctx):
        for t in range(len(w)):
            ctx.set(dut.w, int(w[t]))
            ctx.set(dut.x, int(x[t]))
            ctx.set(dut.first, int(first[t]))
            ctx.set(dut.en, int(en[t]))
            await ctx.tick()
            got.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("wt,it,acc_bits", [
    (IntType(4, True), IntType(4, False), 12),
    (IntType(8, True), IntType(8, True), 18),
    (IntType(3, False), IntType(5, True), 10),
    (IntType(1, True), IntType(2, False), 4),
    (IntType(4, True), IntType(8, False), 6),   # narrower than the products: must wrap
])
def test_mac_matches_model_and_integer_arithmetic(wt, it, acc_bits):
    rng = np.random.default_rng(acc_bits)
    steps = 120
    w = rng.integers(wt.min, wt.max + 1, steps)
    x = rng.integers(it.min, it.max + 1, steps)
    w[:10], x[:10] = wt.max, it.max          # extremes: all-max and all-min runs
    w[10:20], x[10:20] = wt.min, it.min
    w[20:30], x[20:30] = wt.min, it.max
    first = rng.random(steps) < 0.15
    first[[0, 10, 20, 30]] = True
    en = rng.random(steps) < 0.8
    en[:30] = True
    spec = MACSpec(wt, it, acc_bits)
    got = _run_mac(spec, w, x, first, en)
    keep = en.astype(bool)
    # the model sees only enabled steps; the register holds across disabled ones
    model = spec.compute(w[keep], x[keep], first[keep])
    expected, j, acc = [], 0, 0
    for t in range(steps):
        if keep[t]:
            acc = int(model[j]); j += 1
        expected.append(acc)
    assert got == expected
    # the model itself is integer arithmetic reduced mod 2^acc_bits
    direct, acc = [], 0
    for t in np.nonzero(keep)[0]:
        acc = (0 if first[t] else acc) + int(w[t]) * int(x[t])
        direct.append(int(wrap(acc, acc_bits)))
    assert [int(v) for v in model] == direct
    if acc_bits == 6:
        assert any(abs(v) != abs(d) for v, d in zip(model, np.cumsum(w[keep][:10] * x[keep][:10]))), \
            "the narrow case must actually wrap"


def test_bipolar_mac_is_xnor_popcount():
    rng = np.random.default_rng(3)
    lanes, steps = 7, 60
    spec = BipolarMACSpec(lanes, acc_bits=8)
    wb = rng.integers(0, 2, (steps, lanes))
    xb = rng.integers(0, 2, (steps, lanes))
    wb[:4], xb[:4] = 1, 1                       # every lane agrees: +lanes per step
    wb[4:8], xb[4:8] = 1, 0                     # every lane disagrees: -lanes per step
    first = rng.random(steps) < 0.1
    first[:8] = False
    first[[0, 4, 8]] = True
    dut = spec.create()
    got = []

    async def bench(ctx):
        for t in range(steps):
            ctx.set(dut.w, int(sum(int(b) << j for j, b in enumerate(wb[t]))))
            ctx.set(dut.x, int(sum(int(b) << j for j, b in enumerate(xb[t]))))
            ctx.set(dut.first, int(first[t]))
            ctx.set(dut.en, 1)
            await ctx.tick()
            got.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    model = [int(v) for v in spec.compute(wb, xb, first)]
    assert got == model
    assert model[3] == 4 * lanes and model[7] == -4 * lanes
    # +-1 dot product computed independently
    pm_w, pm_x = 2 * wb - 1, 2 * xb - 1
    acc, direct = 0, []
    for t in range(steps):
        acc = (0 if first[t] else acc) + int((pm_w[t] * pm_x[t]).sum())
        direct.append(int(wrap(acc, 8)))
    assert model == direct


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(weight_type="int4", input_type=IntType(4, False), acc_bits=8), TypeError, "weight_type"),
    (dict(weight_type=IntType(4, True), input_type=4, acc_bits=8), TypeError, "input_type"),
    (dict(weight_type=IntType(4, True), input_type=IntType(4, False), acc_bits=0), ValueError, "acc_bits"),
    (dict(weight_type=IntType(4, True), input_type=IntType(4, False), acc_bits=8.0), TypeError, "acc_bits"),
])
def test_mac_spec_validation(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        MACSpec(**kwargs)


def test_bipolar_spec_validation():
    with pytest.raises(ValueError, match="lanes"):
        BipolarMACSpec(0, 8)
    with pytest.raises(TypeError, match="acc_bits"):
        BipolarMACSpec(4, "8")
