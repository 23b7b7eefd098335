"""Residual add at full width against the golden model's formula."""
from __future__ import annotations

import numpy as np
import pytest

from accumulus.compiler.types import IntType
from accumulus.hw.add import AddSpec
from accumulus.hw.simstream import Sink, Source, pack, run, unpack

A, B = IntType(4, False), IntType(5, True)
ALIGN = [{"mult": 3, "shift": 2, "zero_point": 5}, {"mult": -5, "shift": 0, "zero_point": -2}]


def golden(a, b, align):
    # docs/plan.md `add`, written out independently of AddSpec.compute
    fa, fb = align
    return (((a - fa["zero_point"]) * fa["mult"]) << fa["shift"]) + (((b - fb["zero_point"]) * fb["mult"]) << fb["shift"])


def simulate(spec, a, b, gap, stall, seed=0):
    e = spec.elems
    dut = spec.create()
    sa = Source(dut.a, [pack(v, spec.a_type.bits) for v in a.reshape(-1, e)], gap=gap)
    sb = Source(dut.b, [pack(v, spec.b_type.bits) for v in b.reshape(-1, e)], gap=gap)
    snk = Sink(dut.o, a.size // e, stall=stall)
    run(dut, [sa, sb], [snk], seed=seed, settle=8)
    ot = spec.out_type
    return np.array([unpack(w, e, ot.bits, ot.signed) for w in snk.beats]).reshape(a.shape), snk.times


@pytest.mark.parametrize("elems", [1, 4])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.3)])
def test_add_matches_golden(elems, gap, stall):
    lo_hi = AddSpec(A, B, ALIGN, IntType(32, True)).range
    from accumulus.compiler.types import signed_bits
    out = IntType(signed_bits(*lo_hi), True)
    spec = AddSpec(A, B, ALIGN, out, elems)
    rng = np.random.default_rng(5)
    a = rng.integers(A.min, A.max + 1, size=(40,))
    b = rng.integers(B.min, B.max + 1, size=(40,))
    # the corners that reach both ends of the range
    a[:4] = [A.min, A.max, A.min, A.max]
    b[:4] = [B.min, B.max, B.max, B.min]
    want = golden(a, b, ALIGN)
    assert want.min() == lo_hi[0] and want.max() == lo_hi[1]
    got, times = simulate(spec, a, b, gap, stall, seed=elems)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(spec.compute(a, b), want)
    if gap == 0 and stall == 0:
        assert times[-1] - times[0] == a.size // elems - 1  # one beat per cycle


def test_unequal_rates_do_not_lose_beats():
    spec = AddSpec(A, A, [{"mult": 1, "shift": 0, "zero_point": 0}] * 2, IntType(6, True), 2)
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 16, size=(2, 64))
    dut = spec.create()
    sa = Source(dut.a, [pack(v, 4) for v in a.reshape(-1, 2)], gap=0.8)
    sb = Source(dut.b, [pack(v, 4) for v in b.reshape(-1, 2)], gap=0.0)
    snk = Sink(dut.o, 32, stall=0.5)
    run(dut, [sa, sb], [snk], settle=8)
    got = np.array([unpack(w, 2, 6, True) for w in snk.beats]).reshape(-1)
    np.testing.assert_array_equal(got, a + b)


@pytest.mark.parametrize("args,exc,match", [
    ((A, B, ALIGN, IntType(6, True)), ValueError, "out_type"),
    ((A, B, ALIGN[:1], IntType(32, True)), TypeError, "align"),
    ((A, B, [ALIGN[0], {"mult": 1, "shift": -1, "zero_point": 0}], IntType(32, True)), ValueError, r"align\[1\].shift"),
    ((A, B, [ALIGN[0], {"mult": 1, "shift": 0}], IntType(32, True)), ValueError, "align"),
    ((4, B, ALIGN, IntType(32, True)), TypeError, "a_type"),
])
def test_parameter_validation(args, exc, match):
    with pytest.raises(exc, match=match):
        AddSpec(*args)


def test_elems_validated():
    with pytest.raises(ValueError, match="elems"):
        AddSpec(A, B, ALIGN, IntType(32, True), 0)
