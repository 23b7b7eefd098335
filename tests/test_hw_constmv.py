"""The constant-weight matvec engine (hw/constmv.py): its adder graph's numpy model against
plain ``x @ W`` and compiler/golden.py, the engine in Amaranth's simulator under random
input gaps and output stalls, on random and worst-case vectors (every channel driven to
both ends of its exact range) for 1-8 bit signed/unsigned inputs and weights, all-zero
channels and layers; and every adder's width against its exact range, computed here
independently of the engine."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import require_tool

from accumulus.compiler import golden
from accumulus.compiler.accumulators import worst_case_inputs
from accumulus.compiler.plan import FORMAT_VERSION, Plan
from accumulus.compiler.synthetic import _mac_layer, mlp_plan
from accumulus.compiler.types import IntType
from accumulus.hw.constmv import ConstMVSpec, csd_digits
from accumulus.hw.simstream import Sink, Source, pack, run, unpack


def one_layer_plan(w, wtype: IntType, itype: IntType, act_bits: int | None = None, seed: int = 0) -> Plan:
    """A plan of one matvec layer with weights ``w``; thresholds to ``act_bits`` unsigned,
    or accumulators out when None (the synthetic plans' own layer builder)."""
    rng = np.random.default_rng(seed)
    arrays: dict = {}
    out_type = None if act_bits is None else IntType(act_bits, False)
    layer, lw = _mac_layer("fc", "matvec", "x", "y", np.asarray(w, dtype=np.int64), wtype, itype, out_type,
                           1, 1, rng, arrays)
    if out_type is None:
        out_type = IntType(max(int(b) for b in lw.exact), True)
    doc = {
        "format_version": FORMAT_VERSION,
        "source": {"model": "test", "sha256": "", "metadata": None},
        "input": {"tensor": "x", "onnx_name": "x", "onnx_shape": [1, w.shape[1]], "scale": 1.0, "zero_point": 0,
                  "type": itype.to_json(), "rounding_mode": "ROUND"},
        "tensors": {"x": {"shape": [w.shape[1]], "type": itype.to_json(), "scale": 1.0},
                    "y": {"shape": [w.shape[0]], "type": out_type.to_json(), "scale": 1.0}},
        "layers": [layer],
        "output": {"tensor": "y", "onnx_name": "y", "kind": "codes", "dequant": None, "trailing": []},
        "estimate": {"cycles_per_frame": 1},
        "options": {"synthetic": True},
    }
    return Plan(doc, arrays)


def random_weights(rng, n, k, wtype: IntType, sparsity=0.4, zero_channels=(1,)):
    w = rng.integers(wtype.min, wtype.max + 1, size=(n, k))
    w[rng.random(w.shape) < sparsity] = 0
    for c in zero_channels:
        w[c] = 0
    return w


def vectors(spec, rng, n_random=6):
    """Random codes, all-max, all-min, then per channel the vectors reaching hi, then lo."""
    it = spec.input_type
    x_hi, x_lo = worst_case_inputs(spec.weights, it)
    rand = rng.integers(it.min, it.max + 1, size=(n_random, spec.fan_in))
    return np.concatenate([rand, np.full((1, spec.fan_in), it.max), np.full((1, spec.fan_in), it.min), x_hi, x_lo])


def simulate(spec, x, seed=0, gap=0.0, stall=0.0):
    """Outputs ``(B, N)`` and the handshake cycles; fails on any extra output beat."""
    dut = spec.create()
    src = Source(dut.i, [pack(v, spec.in_width) for v in x], gap=gap)
    snk = Sink(dut.o, len(x), stall=stall)
    run(dut, [src], [snk], seed=seed, settle=spec.latency + 4)
    y = np.array([unpack(b, spec.out_elems, spec.out_width, spec.out_signed) for b in snk.beats], dtype=np.int64)
    return y, src.times, snk.times


def golden_layer(plan, x):
    layer = plan.layers[0]
    env = {"x": x}
    out = golden.run_layer(plan, layer, env)
    return env[layer["name"] + ".acc"], out


# -- CSD ---------------------------------------------------------------------------------------
def _naf_weight(v: int) -> int:
    """Nonzero digits of the non-adjacent form (Reitwiesner): popcount of (3v >> 1) ^ (v >> 1)."""
    v = abs(v)
    return bin(((3 * v) >> 1) ^ (v >> 1)).count("1")


def test_csd_digits_are_canonical():
    for v in range(-300, 301):
        d = csd_digits(v)
        assert sum(g << s for s, g in d) == v
        shifts = [s for s, _ in d]
        assert all(b - a >= 2 for a, b in zip(shifts, shifts[1:])), (v, d)     # non-adjacent
        assert len(d) == _naf_weight(v), (v, d)                                # fewest digits
        assert all(g in (1, -1) for _, g in d)


# -- engine vs x @ W and golden, in simulation ---------------------------------------------------
# (input type, weight type, act_bits or None, register_every, cse)
TYPES = [
    (IntType(1, False), IntType(1, True), None, 1, True),
    (IntType(1, True), IntType(2, False), 2, 2, False),
    (IntType(2, False), IntType(3, True), None, 0, True),
    (IntType(3, True), IntType(4, False), 3, 2, True),
    (IntType(4, False), IntType(4, True), 4, 2, True),
    (IntType(5, False), IntType(5, True, narrow=True), None, 3, False),
    (IntType(6, True, narrow=True), IntType(6, True), None, 1, True),
    (IntType(7, False), IntType(7, False), 4, 2, True),
    (IntType(8, True), IntType(8, True), None, 2, True),
    (IntType(8, False), IntType(1, False), 1, 0, False),
]


@pytest.mark.parametrize("itype,wtype,act_bits,every,cse", TYPES, ids=[f"{t[0]}-w{t[1]}" for t in TYPES])
def test_engine_matches_matmul_and_golden_under_backpressure(itype, wtype, act_bits, every, cse):
    rng = np.random.default_rng(itype.bits * 16 + wtype.bits)
    w = random_weights(rng, 6, 10, wtype, zero_channels=(1,))
    w[:, 7] = 0                                             # an input no channel reads
    plan = one_layer_plan(w, wtype, itype, act_bits, seed=3)
    spec = ConstMVSpec(plan, plan.layers[0], register_every=every, cse=cse)
    assert spec.report()["zero_channels"] == [1] and 7 in spec.report()["unused_inputs"]
    x = vectors(spec, rng)
    acc_golden, out_golden = golden_layer(plan, x)
    acc = spec.accumulators(x)
    assert np.array_equal(acc, x @ w.T)                     # the graph computes W @ x
    assert np.array_equal(acc, acc_golden)
    assert np.array_equal(spec.compute(x), out_golden)
    got, _, _ = simulate(spec, x, seed=1, gap=0.3, stall=0.4)
    assert np.array_equal(got, out_golden)
    n = spec.channels
    lo, hi = np.asarray(plan.layers[0]["acc"]["range"]).T
    assert np.array_equal(np.diag(acc[-2 * n:-n]), hi)      # worst-case vectors reach both ends
    assert np.array_equal(np.diag(acc[-n:]), lo)
    if act_bits is None:
        assert np.array_equal(np.diag(got[-2 * n:-n]), hi) and np.array_equal(np.diag(got[-n:]), lo)


def test_all_zero_layer_builds_nothing_and_outputs_zero():
    itype, wtype = IntType(4, False), IntType(4, True)
    w = np.zeros((5, 8), dtype=np.int64)
    plan = one_layer_plan(w, wtype, itype)
    spec = ConstMVSpec(plan, plan.layers[0])
    rep = spec.report()
    assert rep["adders"] == 0 and rep["adder_bits"] == 0 and rep["pipeline_register_bits"] == 0
    assert rep["zero_channels"] == list(range(5)) and rep["unused_inputs"] == list(range(8))
    x = np.random.default_rng(0).integers(0, 16, size=(6, 8))
    got, _, _ = simulate(spec, x, seed=2, gap=0.3, stall=0.3)
    assert np.array_equal(got, golden_layer(plan, x)[1])
    assert not got.any()


def test_digits_mlp_sized_layers_match_golden():
    """64-64-10 with 4-bit weights, half of them zero (the model only: fast)."""
    plan = mlp_plan((64, 64, 10), sparsity=0.5, seed=4)
    rng = np.random.default_rng(0)
    env = {"x": rng.integers(0, 16, size=(64, 64))}
    for layer in plan.layers:
        x = env[layer["inputs"][0]]
        want = golden.run_layer(plan, layer, env)
        for cse in (False, True):
            spec = ConstMVSpec(plan, layer, cse=cse)
            xs = np.concatenate([x, *worst_case_inputs(spec.weights, spec.input_type)])
            assert np.array_equal(spec.accumulators(xs), xs @ spec.weights.T)
            assert np.array_equal(spec.compute(x), want)
        env[layer["output"]] = want


@pytest.mark.parametrize("every", [0, 1, 2, 3])
def test_latency_and_one_vector_per_cycle(every):
    plan = mlp_plan((12, 8, 6), sparsity=0.3, seed=7)
    for layer in plan.layers:
        spec = ConstMVSpec(plan, layer, register_every=every)
        levels = spec.graph.max_level
        assert spec.pipeline_depth == (1 if every == 0 else max(1, -(-levels // every)))
        rng = np.random.default_rng(every)
        x = rng.integers(spec.input_type.min, spec.input_type.max + 1, size=(12, spec.fan_in))
        got, tin, tout = simulate(spec, x)
        assert np.array_equal(got, spec.compute(x))
        assert tout[0] - tin[0] == spec.latency
        assert np.all(np.diff(tin) == 1) and np.all(np.diff(tout) == 1)   # a vector every cycle
        assert spec.cycles_per_frame == 1


# -- widths: each adder exactly as wide as its own range -------------------------------------------
def _bits(lo: int, hi: int) -> int:
    b = 1
    while not (-(1 << (b - 1)) <= lo and hi < (1 << (b - 1))):
        b += 1
    return b


@pytest.mark.parametrize("w,itype,want", [
    ([[3]], IntType(4, False), [7]),           # (x<<2) - x in [0, 45]
    ([[1, 1]], IntType(4, True), [5]),          # x0 + x1 in [-16, 14]
    ([[-1]], IntType(3, False), [4]),           # -x in [-7, 0]: a negation
    ([[-3]], IntType(4, True), [6]),            # x - (x<<2) in [-21, 24]
    ([[5], [5]], IntType(4, False), [8]),       # x + (x<<2) in [0, 75], built once for both channels
    ([[4, 0], [0, 8]], IntType(4, True), []),   # powers of two are wires: no adder
    ([[7, 0, 1]], IntType(2, False), [6, 6]),   # (x0<<3) - x0 in [0, 21]; + x2 in [0, 24]
])
def test_hand_checked_adder_widths(w, itype, want):
    w = np.asarray(w)
    plan = one_layer_plan(w, IntType(5, True), itype)
    spec = ConstMVSpec(plan, plan.layers[0], cse=False)
    assert sorted(spec.tree_bits) == sorted(want)
    x = np.concatenate(worst_case_inputs(w, itype))
    assert np.array_equal(spec.accumulators(x), x @ w.T)


@pytest.mark.parametrize("seed,itype,wtype,cse", [
    (0, IntType(4, False), IntType(4, True), True), (1, IntType(3, True), IntType(5, True), True),
    (2, IntType(8, False), IntType(3, False), False), (3, IntType(2, True, narrow=True), IntType(6, True), True),
])
def test_every_adder_has_the_exact_width_of_its_range(seed, itype, wtype, cse):
    """The linear form of every node is rebuilt here from the graph's operand lists; its
    range, computed here, must need exactly the built width, and inputs that reach both
    ends must give exactly those ends through the wrapped model (so no node is narrower)."""
    rng = np.random.default_rng(seed)
    w = random_weights(rng, 8, 12, wtype, zero_channels=(3,))
    plan = one_layer_plan(w, wtype, itype)
    spec = ConstMVSpec(plan, plan.layers[0], cse=cse)
    g = spec.graph
    k = spec.fan_in
    forms = [[int(i == j) for j in range(k)] for i in range(k)]
    for a in g.adders:
        form = [0] * k
        for n, s, sign in a["ops"]:
            form = [f + sign * (forms[n][j] << s) for j, f in enumerate(form)]
        forms.append(form)
    x_hi, x_lo = [], []
    for a in g.adders:
        form = forms[a["node"]]
        lo = sum(min(c * itype.min, c * itype.max) for c in form)
        hi = sum(max(c * itype.min, c * itype.max) for c in form)
        assert spec.bits[a["node"]] == _bits(lo, hi), (a, lo, hi)
        x_hi.append([itype.max if c > 0 else itype.min for c in form])
        x_lo.append([itype.min if c > 0 else itype.max for c in form])
    vals = spec.node_values(np.array(x_hi + x_lo, dtype=np.int64))
    m = len(g.adders)
    for i, a in enumerate(g.adders):
        form = forms[a["node"]]
        v = vals[a["node"]]
        assert v[i] == sum(max(c * itype.min, c * itype.max) for c in form)
        assert v[m + i] == sum(min(c * itype.min, c * itype.max) for c in form)
    # channels' results: the plan's exact width and range
    assert spec.acc_bits == plan.layers[0]["acc"]["bits"]["exact"]


def test_sharing_reduces_adders_and_keeps_the_result():
    plan = mlp_plan((32, 24, 10), weight_bits=4, sparsity=0.3, seed=5)
    layer = plan.layers[0]
    plain, shared = ConstMVSpec(plan, layer, cse=False), ConstMVSpec(plan, layer, cse=True)
    assert shared.report()["shared_subexpressions"] > 0
    assert shared.report()["adders"] < plain.report()["adders"]
    assert plain.report()["csd_digits"] == shared.report()["csd_digits"] == sum(
        len(csd_digits(v)) for v in plain.weights.flat)
    x = vectors(shared, np.random.default_rng(1))
    assert np.array_equal(shared.accumulators(x), x @ shared.weights.T)
    got, _, _ = simulate(shared, x[:24], seed=3, gap=0.2, stall=0.3)
    assert np.array_equal(got, golden_layer_of(plan, layer, x[:24]))


def golden_layer_of(plan, layer, x):
    return golden.run_layer(plan, layer, {layer["inputs"][0]: x})


# -- policies ------------------------------------------------------------------------------------
def test_exact_minus_one_wraps_and_wider_policies_do_not():
    plan = mlp_plan((10, 6, 4), sparsity=0.2, seed=2)
    layer = plan.layers[1]                                   # accumulators out
    rng = np.random.default_rng(0)
    x = vectors(ConstMVSpec(plan, layer), rng, n_random=0)
    want = golden_layer_of(plan, layer, x)
    narrow = ConstMVSpec(plan, layer, acc_policy="exact-minus:1")
    assert narrow.acc_bits == [b - 1 for b in layer["acc"]["bits"]["exact"]]
    got, _, _ = simulate(narrow, x, seed=4, gap=0.2, stall=0.2)
    assert np.array_equal(got, narrow.compute(x))           # hardware does what the narrowed model says
    assert not np.array_equal(got, want)                     # ... which is not the layer any more
    for policy, bits in (("datatype", layer["acc"]["bits"]["datatype"]), ("fixed:24", 24)):
        spec = ConstMVSpec(plan, layer, acc_policy=policy)
        assert spec.acc_bits == [bits] * spec.channels and min(spec.tree_bits) == bits
        got, _, _ = simulate(spec, x, seed=5, gap=0.2, stall=0.2)
        assert np.array_equal(got, want)


@pytest.mark.parametrize("change,policy,word", [
    (dict(kind="maxpool"), "exact", "kind"),
    (dict(conv={"groups": 2}), "exact", "groups"),
    ({}, "fixed:4", "acc_policy"),
    ({}, "wide", "acc_policy"),
    (dict(fan_in=11), "exact", "weight shape"),
])
def test_spec_validation(change, policy, word):
    plan = mlp_plan((10, 6, 4), seed=0)
    layer = dict(plan.layers[0], **change)
    with pytest.raises(ValueError, match=word):
        ConstMVSpec(plan, layer, acc_policy=policy)
    with pytest.raises(ValueError, match="register_every"):
        ConstMVSpec(plan, plan.layers[0], register_every=-1)
    with pytest.raises(TypeError, match="plan"):
        ConstMVSpec(plan.doc, plan.layers[0])


def test_icarus_reads_the_engine_verilog(tmp_path):
    from amaranth.back import verilog

    iverilog = require_tool("iverilog")
    plan = mlp_plan((12, 8, 6), sparsity=0.3, seed=0)
    for layer in plan.layers:
        text = verilog.convert(ConstMVSpec(plan, layer).create(), name=f"constmv_{layer['name']}")
        for port in ("i__payload", "i__valid", "i__ready", "o__payload", "o__valid", "o__ready"):
            assert port in text
        path = tmp_path / f"{layer['name']}.v"
        path.write_text(text)
        proc = subprocess.run([iverilog, "-g2012", "-o", str(tmp_path / "a.out"), str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


# -- da4ml's solver ------------------------------------------------------------------------------
DA4ML_TYPES = [(IntType(1, False), IntType(2, True)), (IntType(3, True), IntType(4, True)),
               (IntType(5, False), IntType(4, True, narrow=True)), (IntType(8, True), IntType(8, True)),
               (IntType(4, False), IntType(3, False))]


@pytest.mark.parametrize("itype,wtype", DA4ML_TYPES, ids=[f"{a}-w{b}" for a, b in DA4ML_TYPES])
def test_da4ml_solver_graph_is_exact_and_simulates(itype, wtype):
    """``solver="da4ml"``: da4ml's shift-and-add graph of the same matrix, imported as our
    nodes: it computes W @ x (the graph checks itself too), every adder has the exact width
    of its own range (recomputed here from the operand lists), zero channels and unused
    inputs build nothing, and the engine is bit-exact in simulation under back-pressure."""
    from conftest import require_module

    require_module("da4ml")
    rng = np.random.default_rng(itype.bits * 8 + wtype.bits)
    w = random_weights(rng, 7, 12, wtype, zero_channels=(2,))
    w[:, 5] = 0
    plan = one_layer_plan(w, wtype, itype, act_bits=3 if not itype.signed else None, seed=1)
    spec = ConstMVSpec(plan, plan.layers[0], register_every=2, solver="da4ml")
    rep = spec.report()
    assert rep["solver"] == "da4ml" and rep["zero_channels"] == [2] and 5 in rep["unused_inputs"]
    g, k = spec.graph, spec.fan_in
    forms = [np.eye(1, k, i, dtype=np.int64)[0] for i in range(k)]
    for a in g.adders:
        assert all(s >= 0 for _, s, _ in a["ops"])
        forms.append(sum(sign * (forms[n] << s) for n, s, sign in a["ops"]))
        lo = int(sum(min(c * itype.min, c * itype.max) for c in forms[-1]))
        hi = int(sum(max(c * itype.min, c * itype.max) for c in forms[-1]))
        assert spec.bits[a["node"]] == _bits(lo, hi)
    for c, o in enumerate(g.outputs):
        assert (o is None) == (not w[c].any())
        if o is not None:
            assert np.array_equal(forms[o[0]] << o[1], w[c])
    x = vectors(spec, rng)
    acc_golden, out_golden = golden_layer(plan, x)
    assert np.array_equal(spec.accumulators(x), acc_golden)
    got, _, _ = simulate(spec, x, seed=2, gap=0.3, stall=0.3)
    assert np.array_equal(got, out_golden)


def test_da4ml_solver_all_zero_layer_and_plan():
    """An all-zero matrix builds no adder under da4ml either; compile's --const-solver reaches
    the plan and the built engine."""
    from conftest import require_module

    require_module("da4ml")
    w = np.zeros((4, 6), dtype=np.int64)
    plan = one_layer_plan(w, IntType(4, True), IntType(4, False))
    spec = ConstMVSpec(plan, plan.layers[0], solver="da4ml")
    assert spec.report()["adders"] == 0 and spec.report()["zero_channels"] == [0, 1, 2, 3]
    x = vectors(spec, np.random.default_rng(0), n_random=3)
    assert not spec.accumulators(x).any()
    with pytest.raises(ValueError, match="solver"):
        ConstMVSpec(plan, plan.layers[0], solver="hcub")
