"""BipolarQuant on the graph input (FINN BNN-PYNQ style), golden vs qonnx 1.0.0.

qonnx's ``binary_quant`` maps the raw input to +1 where ``x >= 0`` and -1 otherwise (NaN to
-1); the scale only multiplies. The plan's input becomes a 2-bit signed narrow type with
``input.bipolar``; the golden model's input step, compile's self-verification, ``predict``,
the sim stimulus and the hardware input stream all go through it.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import compiler_graphs as cg
from accumulus.cli import main
from accumulus.commands.predict import predict
from accumulus.compiler import golden
from accumulus.compiler.compile import compile_model
from accumulus.compiler.types import IntType
from accumulus.compiler.verify import calibration_batch, compare
from accumulus.errors import UserError
from conftest import require_module, require_tool

TIE_TOL = 1e-4


def _bipolar(b, x, scale):
    return b.node("BipolarQuant", [x, b.const(np.asarray(scale, np.float32), "bs")], domain=b.domain)


def _bnn_graph(seed=0, pre=True, in_scale=1.0, hidden=24, n_in=32):
    """x [-> Mul 2 -> Sub 1] -> BipolarQuant -> MatMul(bipolar W) -> BN -> BipolarQuant ->
    MatMul(2-bit W) -> BN -> Quant(2-bit signed) -> MatMul(2-bit W) -> logits."""
    b = cg.Builder(seed)
    rng = b.rng
    x = "x"
    if pre:   # the TFC preprocessing of FINN's BNN-PYNQ networks: [0, 1] -> [-1, 1]
        x = b.node("Sub", [b.node("Mul", [x, b.const(np.float32(2))]), b.const(np.float32(1))])
    x = _bipolar(b, x, in_scale)

    def bn(y, n):
        g = rng.uniform(0.3, 2.0, n) * np.where(rng.random(n) < 0.3, -1, 1)
        ps = [g, rng.normal(0, 0.5, n), rng.normal(0, 2.0, n), rng.uniform(0.5, 3, n)]
        return b.node("BatchNormalization", [y] + [b.const(p.astype(np.float32), "bn") for p in ps], epsilon=1e-5)

    w1 = _bipolar(b, b.const(rng.normal(0, 1, (n_in, hidden)).astype(np.float32), "w"), 0.5)
    y = bn(b.node("MatMul", [x, w1], name="fc0"), hidden)
    y = _bipolar(b, y, 1.0)
    w2 = b.weight((hidden, hidden), 2, axis_shape=(1, hidden))
    y = bn(b.node("MatMul", [y, w2], name="fc1"), hidden)
    y = b.quant(y, np.float32(0.7), 0, 2, True, False)
    w3 = b.weight((hidden, 10), 2, axis_shape=(1, 10))
    y = b.node("MatMul", [y, w3], name="fc2")
    return b.model("x", [1, n_in], y, [1, 10])


def _inputs(n, n_in, seed=0):
    """Values over [0, 1] (the domain of the 2x-1 preprocessing) and over [-1, 1], with the
    sign boundaries themselves: 0.5 (2x-1 == 0), 0.0 and -0.0."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(0, 1, (n // 2, n_in)), rng.uniform(-1, 1, (n - n // 2, n_in))]).astype(np.float32)
    edge = rng.random(x.shape) < 0.05
    x[edge] = rng.choice(np.array([0.5, 0.0, -0.0], np.float32), int(edge.sum()))
    return x


def _agree(model, plan, x):
    ctx = cg.qonnx_run(model, x)
    y, env = predict(plan, x)
    _, lines = cg.assert_every_requantized_tensor_ties_only(model, plan, env, ctx, tie_tol=TIE_TOL)
    ref = ctx[model.graph.output[0].name]
    tie_samples = {int(line.split()[1].rstrip(":")) for line in lines}
    clean = np.array([i not in tie_samples for i in range(len(x))])
    assert clean.mean() >= 0.99
    np.testing.assert_allclose(y[clean], ref[clean], rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    return ctx, y, env


def _input_codes_of_reference(model, ctx, scale):
    q = next(n for n in model.graph.node if n.op_type == "BipolarQuant")
    return np.round(ctx[q.output[0]] / np.float64(scale)).astype(np.int64)


@pytest.mark.parametrize("pre,scale", [(True, 1.0), (False, 1.0), (True, 0.25)], ids=["2x-1", "raw", "scale0.25"])
def test_bipolar_input_graph_agrees_with_qonnx(tmp_path, pre, scale):
    m = _bnn_graph(pre=pre, in_scale=scale)
    path = cg.save(m, tmp_path / "bnn.onnx")
    plan = compile_model(path)
    spec = plan.doc["input"]
    assert spec["bipolar"] is True
    assert plan.tensor_type(spec["tensor"]) == IntType(2, True, True)
    x = _inputs(400, 32)
    ctx, y, env = _agree(m, plan, x)
    # the input codes: qonnx's BipolarQuant output over its scale, +-1 only, 0.0 and -0.0 -> +1
    ref_codes = _input_codes_of_reference(m, ctx, scale)
    assert set(np.unique(ref_codes).tolist()) == {-1, 1}
    np.testing.assert_array_equal(env[spec["tensor"]], ref_codes)
    pre_x = x * np.float32(2) - np.float32(1) if pre else x
    np.testing.assert_array_equal(env[spec["tensor"]][pre_x == 0], 1)
    # compile's self-verification on its own calibration batch
    ver = compare(plan, m, calibration_batch(plan, 64))
    assert ver.ok, ver.first_failure()


def test_nan_input_is_minus_one_as_in_qonnx(tmp_path):
    m = _bnn_graph(pre=False)
    plan = compile_model(cg.save(m, tmp_path / "bnn.onnx"))
    x = _inputs(20, 32, seed=3)
    x[:, ::7] = np.nan
    ctx = cg.qonnx_run(m, x)
    codes = golden.quantize_input(plan, x)
    np.testing.assert_array_equal(codes, _input_codes_of_reference(m, ctx, 1.0))
    assert np.all(codes[:, ::7] == -1)


def test_brevitas_bnn_pynq_style_mlp(tmp_path):
    """Brevitas: QuantIdentity(SignedBinaryActPerTensorConst) on the input, QuantLinear with
    bipolar and 2-bit weights, float BatchNorm1d, bipolar and 2-bit activations."""
    torch = require_module("torch")
    require_module("brevitas")
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True),
        qnn.QuantLinear(32, 24, bias=False, weight_quant=SignedBinaryWeightPerTensorConst),
        torch.nn.BatchNorm1d(24),
        qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True),
        qnn.QuantLinear(24, 24, bias=False, weight_bit_width=2),
        torch.nn.BatchNorm1d(24),
        qnn.QuantIdentity(bit_width=2, return_quant_tensor=True),
        qnn.QuantLinear(24, 10, bias=False, weight_bit_width=2))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.from_numpy(rng.uniform(-1, 1, (32, 32)).astype(np.float32)))
    for bn in (net[2], net[5]):
        n = bn.num_features
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy((rng.uniform(0.3, 2, n) * np.where(rng.random(n) < .3, -1, 1)).astype(np.float32)))
            bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.5, n).astype(np.float32)))
            bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 2, n).astype(np.float32)))
            bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 3, n).astype(np.float32)))
    net.eval()
    path = tmp_path / "bnn.onnx"
    export_qonnx(net, args=torch.zeros(1, 32), export_path=str(path), dynamo=False)
    m = onnx.load(str(path))
    assert m.graph.node[0].op_type == "BipolarQuant" and m.graph.node[0].input[0] == m.graph.input[0].name
    plan = compile_model(path)
    assert plan.doc["input"]["bipolar"] is True
    x = _inputs(300, 32, seed=1)
    _, y, _ = _agree(m, plan, x)
    with torch.no_grad():
        t = net(torch.from_numpy(x))
    t = (t.value if hasattr(t, "value") else t).numpy()
    assert (t.argmax(1) == y.argmax(1)).mean() >= 0.99


def test_cli_compile_predict_stimulus_and_stream_width(tmp_path, capsys):
    """`accumulus compile` (with its self-verification) and `predict` on a bipolar-input model;
    the sim stimulus quantizes float .npy inputs by the same step; the built top's input
    stream carries 2-bit signed elements."""
    require_module("amaranth")
    from accumulus.compiler.plan import Plan
    from accumulus.hw.build import build
    from accumulus.sim import stimulus as stim

    m = _bnn_graph(seed=2)
    src = cg.save(m, tmp_path / "bnn.onnx")
    proj = tmp_path / "proj"
    assert main(["compile", str(src), "--out", str(proj), "--quiet"]) == 0
    plan = Plan.load(proj)
    doc = json.loads((proj / "plan.json").read_text())
    assert doc["input"]["bipolar"] is True
    x = _inputs(50, 32, seed=4)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(proj), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    capsys.readouterr()
    ctx = cg.qonnx_run(m, x)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ctx[m.graph.output[0].name], rtol=1e-4, atol=1e-4)
    codes = stim.npy_codes(plan, tmp_path / "x.npy")
    np.testing.assert_array_equal(codes, _input_codes_of_reference(m, ctx, 1.0))
    build(plan, proj)
    iface = json.loads((proj / "rtl" / "build.json").read_text())
    text = json.dumps(iface)
    assert '"elem_bits": 2' in text and '"signed": true' in text, text[:2000]


def test_relu_before_bipolar_input_is_refused(tmp_path):
    b = cg.Builder(0)
    x = _bipolar(b, b.node("Relu", ["x"]), 1.0)
    w = b.weight((8, 4), 2, axis_shape=(1, 4))
    y = b.node("MatMul", [x, w])
    path = cg.save(b.model("x", [1, 8], y, [1, 4]), tmp_path / "r.onnx")
    with pytest.raises(UserError, match=r"^BipolarQuant '.*': a ReLU/Clip before the bipolar input") as e:
        compile_model(path)
    assert len(str(e.value).splitlines()) == 1


def test_infinite_bipolar_scale_is_refused_by_name(tmp_path):
    """Brevitas' 1-bit narrow signed activation exports scale inf (max / (2^0 - 1))."""
    b = cg.Builder(0)
    x = b.quant("x", np.float32(0.25), 0, 4, True, False)
    w = b.weight((8, 4), 2, axis_shape=(1, 4))
    y = _bipolar(b, b.node("MatMul", [x, w]), np.inf)
    path = cg.save(b.model("x", [1, 8], y, [1, 4]), tmp_path / "inf.onnx")
    with pytest.raises(UserError, match=r"^BipolarQuant '.*': scale must be nonzero and finite") as e:
        compile_model(path)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.slow
def test_bipolar_input_net_cosim_verilator(tmp_path, capsys):
    """Build the Brevitas-style BNN and co-simulate it on Verilator, bit-exact against the
    golden model, on float inputs quantized by the plan's bipolar step and on worst-case vectors."""
    require_tool("g++")
    require_module("amaranth")
    require_module("cocotb")
    from accumulus.compiler.plan import Plan
    from accumulus.hw.build import build

    m = _bnn_graph(seed=5, hidden=16)
    proj = tmp_path / "proj"
    assert main(["compile", str(cg.save(m, tmp_path / "bnn.onnx")), "--out", str(proj), "--quiet"]) == 0
    plan = Plan.load(proj)
    build(plan, proj)
    np.save(tmp_path / "x.npy", _inputs(40, 32, seed=6))
    rc = main(["sim", str(proj), "--simulator", "verilator", "--stimulus", str(tmp_path / "x.npy"),
               "--frames", "40", "--backpressure", "0.3", "--seed", "2"])
    out = capsys.readouterr().out
    r = json.loads((proj / "sim" / "results.json").read_text())
    assert rc == 0 and r["passed"] and r["mismatches"] == 0, out
    assert r["frames_missing"] == 0 and r["extra_frames"] == 0 and r["frames"] >= 40
    assert "Verilator" in r["simulator_version"]
    rc = main(["sim", str(proj), "--simulator", "verilator", "--stimulus", "worst"])
    r = json.loads((proj / "sim" / "results.json").read_text())
    assert rc == 0 and r["passed"] and r["mismatches"] == 0, capsys.readouterr().out
