"""Differential corpus: graphs exported by Brevitas at test time, golden vs qonnx 1.0.0.

A deterministic grid (tests/brevitas_nets.py builds each network) over Brevitas' options:
QuantLinear / QuantConv2d with a float BatchNorm after them (random running statistics and
affine parameters, some gammas negative), QuantReLU / QuantIdentity / QuantHardTanh
activations, integer or bipolar input quantizers, weight and activation bits 1..8, signed
and unsigned, narrow range on and off, per-tensor and per-channel weight scales, bias off,
float, or quantized by Int8Bias / Int16Bias / Int32Bias, the activation rounding modes
Brevitas exposes through ``float_to_int_impl_type`` (ROUND, FLOOR, CEIL, ROUND_TO_ZERO),
statistics-calibrated and constant activation scales. Each network is exported with
``export_qonnx(..., dynamo=False)``, compiled, and its golden model compared with qonnx's
``execute_onnx`` on 200 inputs over the input quantizer's range: every requantized tensor
of the plan (none missing), the input codes, top-1; every differing code must be a float
tie in the reference. Brevitas' DPU rounding has no qonnx counterpart and is refused.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model
from accumulus.compiler.verify import calibration_batch, compare
from accumulus.errors import UserError
from conftest import record_corpus, require_module

MIN_AGREE = 0.999
TIE_TOL = 1e-4          # as tests/test_compiler_trained_models.py: ties here are float32 noise
SAMPLES = 200
ROUNDING = ("ROUND", "FLOOR", "CEIL", "ROUND_TO_ZERO")
N_CASES = 72


def _grid():
    """Bit widths, rounding modes and activation kinds cycle (every value is reached); the
    other options are drawn from a seeded generator per case so that they do not correlate."""
    from brevitas_nets import Act, Case, Layer

    cases = []
    for i in range(N_CASES):
        rng = np.random.default_rng(1000 + i)
        arch = "conv" if i % 3 == 2 else "mlp"
        in_kind = "bipolar" if i % 6 == 1 else "int"
        # input bits 1..8: a 1-bit QuantIdentity is exported as BipolarQuant too
        in_bits = 1 + (i * 5) % 8
        layers = []
        for j in range(1 + (i // 2) % 2):
            kind = ("relu", "identity", "hardtanh")[(i + j) % 3]
            a_bits = 1 + (i * 3 + j * 5) % 8
            signed = kind == "hardtanh" or (kind == "identity" and bool(rng.integers(2)))
            narrow = bool(rng.integers(2)) and a_bits > 1        # 1-bit narrow has no codes
            const = float(rng.uniform(0.5, 4.0)) if rng.integers(2) else None
            act = Act(kind, a_bits, signed, narrow, ROUNDING[(i // 3 + j) % 4], const)
            layers.append(Layer(w_bits=1 + (i + 3 * j) % 8, per_channel=bool(rng.integers(2)),
                                w_narrow=bool(rng.integers(2)),
                                bias=("none", "float", "int32", "int16", "int8")[int(rng.integers(5))],
                                bn=rng.random() < 0.75, act=act))
        name = (f"{i:02d}-{arch}-{in_kind}{in_bits if in_kind == 'int' else ''}-"
                + "-".join(f"w{l.w_bits}{l.act.kind[0]}{l.act.bits}{l.act.rounding[:2]}" for l in layers))
        cases.append(Case(name, arch, in_kind, in_bits, bool(rng.integers(2)), tuple(layers), 2 + i % 7,
                          ("none", "float", "int32", "int16")[int(rng.integers(4))], 2000 + i))
    return cases


CASES = _grid() if __import__("importlib").util.find_spec("brevitas") else []


def _reference_model(om):
    """The graph qonnx 1.0.0 can execute: Brevitas' ROUND_TO_ZERO (torch.trunc) is qonnx's
    DOWN (np.fix); resolve_rounding_mode does not know the Brevitas name."""
    m = onnx.ModelProto()
    m.CopyFrom(om)
    for n in m.graph.node:
        for a in n.attribute:
            if a.name == "rounding_mode" and a.s == b"ROUND_TO_ZERO":
                a.s = b"DOWN"
    return m


def _inputs(plan, om, n):
    """Half from the input quantizer's code range (jittered inside each rounding interval),
    half uniform over that range widened by a quarter (saturation, raw values at ties)."""
    x_cal = calibration_batch(plan, n // 2, seed=1)
    lim = float(np.abs(x_cal).max()) * 1.25 or 1.0
    shape = tuple(om.graph.input[0].type.tensor_type.shape.dim[i].dim_value for i in range(1, 4)
                  if i < len(om.graph.input[0].type.tensor_type.shape.dim))
    x_uni = np.random.default_rng(2).uniform(-lim, lim, (n - n // 2,) + shape).astype(np.float32)
    return np.concatenate([x_cal.astype(np.float32), x_uni])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_brevitas_export_agrees_with_qonnx(tmp_path, case):
    torch = require_module("torch")
    require_module("brevitas")
    import brevitas_nets

    torch.set_num_threads(1)
    path = tmp_path / "m.onnx"
    _, om = brevitas_nets.export(case, path)
    plan = compile_model(path)
    x = _inputs(plan, om, SAMPLES)
    ctx = cg.qonnx_run(_reference_model(om), x)
    y, env = predict(plan, x)
    ref = ctx[om.graph.output[0].name]

    # every requantized tensor of the plan is compared (none silently missing), and every sample
    # that differs anywhere differs first by a proven float tie of the reference (later codes of
    # that sample carry the flipped code). No rate bound on ties: where an exact value sits on a
    # rounding boundary (a Gemm bias quantized at fl(s_in * s_w) puts acc = -bias within 1e-8 of
    # 0, which FLOOR / CEIL after a ReLU step at), the reference's float32 sum lands on either
    # side, and such inputs are common at 2-3 bit weights.
    stats, lines = cg.assert_every_requantized_tensor_ties_only(om, plan, env, ctx, tie_tol=TIE_TOL)
    agree = {layer: (n - bad) / n for layer, (n, bad) in stats.items()}

    # the input codes: the reference's input quantizer output
    q_in = next(nd for nd in om.graph.node if nd.input[0] == om.graph.input[0].name)
    t_in = plan.tensor(plan.doc["input"]["tensor"])
    v_in = ctx[q_in.output[0]]
    in_codes = np.round(v_in / np.float64(t_in["scale"]) + np.float64(t_in["zero_point"]))
    if q_in.op_type == "BipolarQuant":
        assert plan.doc["input"].get("bipolar") is True
        assert set(np.unique(in_codes).tolist()) <= {-1.0, 1.0}
    gold_in = env[plan.doc["input"]["tensor"]].reshape(len(x), -1)
    np.testing.assert_array_equal(cg.to_stream(in_codes).reshape(len(x), -1), gold_in)

    # top-1, and the logits of every sample without a code tie
    ties = cg.code_tie_samples(lines)
    top1, real = cg.top1_excusing_ties(ref, y, ties)
    assert top1 >= MIN_AGREE, f"top-1 {top1:.4f}; samples {real[:10]} disagree without a tie"
    clean = np.array([b not in ties for b in range(len(x))])
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y[clean], ref[clean], rtol=1e-4, atol=1e-5 * scale)
    print(f"AGREEMENT {case.name}: {len(stats)} requantized tensors, code agreement "
          f"{min(agree.values()):.5f} (worst tensor), {len(ties)} of {len(x)} samples with a tie, "
          f"top-1 {top1:.4f} and logits exact on the other {int(clean.sum())}")
    # and compile's own self-verification (compiler.verify, the CLI's check) accepts the plan
    ver = compare(plan, om, calibration_batch(plan, 32, seed=5))
    assert ver.ok, ver.first_failure()
    record_corpus("brevitas exports")


def test_brevitas_dpu_rounding_is_refused_by_name(tmp_path):
    """Brevitas' DPU rounding (half to even, negative halves up) has no qonnx 1.0.0 rounding
    mode to verify against: compile refuses it in one line naming the node."""
    torch = require_module("torch")
    require_module("brevitas")
    import brevitas_nets
    from brevitas_nets import Act, Case, Layer

    torch.set_num_threads(1)
    case = Case("dpu", "mlp", "int", 8, True, (Layer(4, True, True, "int32", True,
                                                     Act("identity", 4, True, False, "DPU")),), 4, "float", 7)
    brevitas_nets.export(case, tmp_path / "m.onnx")
    with pytest.raises(UserError) as err:
        compile_model(tmp_path / "m.onnx")
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "Quant '" in msg and "DPU" in msg, msg
    record_corpus("brevitas exports (refused, clearly)")
