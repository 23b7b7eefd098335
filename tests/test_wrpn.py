"""WRPN (Mishra et al., "WRPN: Wide Reduced-Precision Networks", ICLR 2018): quantizers,
``--edge-bits``, ``--width-mult``, export -> compile -> co-simulation.

Level counts, both from the paper's formulas (computed here in numpy, not by our code):

* activations ``a_q = round((2^k - 1)·clip(a, 0, 1)) / (2^k - 1)``: ``2^k - 1`` *steps* over
  [0, 1], hence ``2^k`` *levels* (the codes ``0 .. 2^k - 1``, an unsigned ``k``-bit type);
* weights ``w_q = round((2^(k-1) - 1)·clip(w, -1, 1)) / (2^(k-1) - 1)``: a sign and ``k - 1``
  magnitude bits, ``2^k - 1`` levels (the codes ``-(2^(k-1)-1) .. 2^(k-1)-1``, a
  narrow-range signed ``k``-bit type; ternary at ``k = 2``).

Both quantizers round with a straight-through estimator; the weight clip passes the gradient
through as well, the activation clip does not (a bounded ReLU).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_module, require_tool

torch = require_module("torch")
require_module("brevitas")

from accumulus.cli import main  # noqa: E402
from accumulus.compiler.types import IntType  # noqa: E402
from accumulus.errors import UserError  # noqa: E402
from accumulus.quant import brevitas_config as bc  # noqa: E402
from accumulus.quant.data import load_dataset  # noqa: E402
from accumulus.quant.export import quant_weights  # noqa: E402
from accumulus.quant.models import build_model, make_config, preset, quant_layers, wrpn_layer_bits  # noqa: E402

torch.set_num_threads(1)
BITS = (2, 3, 4, 8)


def _wrpn_linear(bits, fan_in=50, fan_out=40):
    from brevitas.nn import QuantLinear

    return QuantLinear(fan_in, fan_out, bias=False, **bc.weight_quant_kwargs("wrpn", bits, None))


@pytest.mark.parametrize("k", BITS)
def test_activation_levels_are_2_pow_k(k):
    act = bc.wrpn_act_layer(k)
    x = torch.rand(20000) * 3 - 1                   # [-1, 2): both clips and the whole range
    q = act(x)
    steps = 2 ** k - 1
    ref = np.round(np.clip(x.numpy().astype(np.float64), 0, 1) * steps) / steps
    np.testing.assert_allclose(q.value.detach().numpy(), ref, rtol=0, atol=1e-6)
    assert len(np.unique(q.int().numpy())) == 2 ** k
    assert np.unique(q.int().numpy()).tolist() == list(range(2 ** k))
    assert float(q.scale) == pytest.approx(1 / steps, rel=1e-6)
    assert int(q.bit_width) == k and not q.signed


@pytest.mark.parametrize("k", BITS)
def test_weight_levels_are_2_pow_k_minus_1(k):
    layer = _wrpn_linear(k, 200, 100)               # 20,000 weights: every level drawn
    with torch.no_grad():
        layer.weight.copy_(torch.rand_like(layer.weight) * 4 - 2)   # beyond the clip at +-1
    qw = layer.quant_weight()
    m = 2 ** (k - 1) - 1
    ref = np.round(np.clip(layer.weight.detach().numpy().astype(np.float64), -1, 1) * m) / m
    np.testing.assert_allclose(qw.value.detach().numpy(), ref, rtol=0, atol=1e-6)
    codes = np.unique(qw.int().numpy())
    assert len(codes) == 2 ** k - 1
    assert codes.tolist() == list(range(-m, m + 1))
    assert float(qw.scale) == pytest.approx(1 / m, rel=1e-6)
    assert int(qw.bit_width) == k and qw.signed and layer.weight_quant.is_narrow_range
    if k == 2:
        assert codes.tolist() == [-1, 0, 1]     # ternary


def test_weight_scale_is_fixed_not_learned():
    a, b = _wrpn_linear(4), _wrpn_linear(4)
    with torch.no_grad():
        b.weight.mul_(0.01)
    assert float(a.quant_weight().scale) == float(b.quant_weight().scale) == pytest.approx(1 / 7)
    names = [n for n, _ in a.named_parameters()]
    assert names == ["weight"], names                # nothing else trains


def test_straight_through_gradients():
    k = 3
    layer = _wrpn_linear(k, 8, 6)
    with torch.no_grad():
        layer.weight.copy_(torch.rand_like(layer.weight) * 4 - 2)
    g = torch.randn(6, 8)
    (layer.quant_weight().value * g).sum().backward()
    # STE through rounding *and* the clip: d(w_q)/dw = 1 everywhere, also where |w| > 1
    np.testing.assert_allclose(layer.weight.grad.numpy(), g.numpy(), rtol=1e-6, atol=1e-6)
    assert (layer.weight.detach().abs() > 1).any()

    act = bc.wrpn_act_layer(k)
    step = 1 / (2 ** k - 1)
    x = (torch.rand(4000) * 3 - 1).requires_grad_(True)
    act(x).value.sum().backward()
    xd, gx = x.detach().numpy(), x.grad.numpy()
    inside = (xd > 0.01) & (xd < 0.99)
    below = xd < -0.01
    above = xd > 1 + step / 2 + 0.01                 # rounds beyond the top code: clipped
    assert inside.any() and below.any() and above.any()
    assert np.all(gx[inside] == 1)                   # rounding: straight through
    assert np.all(gx[below] == 0) and np.all(gx[above] == 0)   # the clip is a real clip


def test_init_leaves_weights_nonzero_at_every_width():
    for k in BITS:
        for w in (1, 3):
            torch.manual_seed(0)
            m = build_model(preset("digits-mlp", quant="wrpn", weight_bits=k, act_bits=k, width_mult=w))
            for name, layer in quant_layers(m):
                codes = layer.quant_weight().int().numpy()
                frac = float(np.mean(codes != 0))
                assert frac > 0.01, (k, w, name, frac)
                assert np.abs(layer.weight.detach().numpy()).max() <= 1.0


def _types(cfg):
    model = build_model(cfg)
    layers = quant_weights(model, cfg, torch.rand(2, *cfg.in_shape))
    return [(le.weight_type, le.input_type) for le in layers]


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
@pytest.mark.parametrize("edge", [None, 6])
def test_edge_bits(name, edge):
    """First layer's weights, last layer's weights and input at --edge-bits (default 8); the
    rest at --weight-bits/--act-bits; the graph input stays the dataset's 5-bit code."""
    cfg = preset(name, quant="wrpn", weight_bits=2, act_bits=3, edge_bits=edge, width_mult=2)
    e = 8 if edge is None else edge
    assert cfg.edge_bits == e and cfg.acc_bits is None
    types = _types(cfg)
    n = len(types)
    want_w = [e] + [2] * (n - 2) + [e]
    want_in = [5] + [3] * (n - 2) + [e]
    assert [w.bits for w, _ in types] == want_w
    assert all(w.signed and w.narrow for w, _ in types)
    assert [i.bits for _, i in types] == want_in
    assert all(not i.signed for _, i in types)
    assert [(d["weight_bits"], d["input_bits"]) for d in wrpn_layer_bits(cfg)] == list(zip(want_w, want_in))


def test_edge_bits_only_with_wrpn_and_in_range():
    with pytest.raises(UserError, match="--edge-bits.*--quant wrpn"):
        make_config(quant="int", edge_bits=8)
    with pytest.raises(UserError, match="--edge-bits must be 2..16"):
        make_config(quant="wrpn", edge_bits=20)
    assert make_config(quant="int").edge_bits is None


@pytest.mark.parametrize("w", [1, 2, 3, 1.5])
def test_width_mult_keeps_first_and_last_sizes(w):
    mlp = build_model(preset("digits-mlp", quant="wrpn", width_mult=w))
    shapes = [tuple(m.weight.shape) for _, m in quant_layers(mlp)]
    h = round(64 * w)
    assert shapes == [(h, 64), (h, h), (10, h)]
    cnn = build_model(preset("digits-cnn", quant="wrpn", width_mult=w))
    shapes = [tuple(m.weight.shape) for _, m in quant_layers(cnn)]
    c1, c2, c3 = round(16 * w), round(16 * w), round(32 * w)
    assert shapes == [(c1, 1, 3, 3), (c2, c1, 3, 3), (c3, c2, 3, 3), (10, c3 * 2 * 2)]
    assert [m.num_features for m in (cnn.bn1, cnn.bn2, cnn.bn3)] == [c1, c2, c3]


def test_widened_wrpn_mlp_exports_compiles_and_agrees(tmp_path):
    """W=2, 3-bit WRPN digits-mlp trained briefly: QONNX and QCDQ exports compiled; golden
    codes == qonnx / onnxruntime codes, top-1 == both references and PyTorch (the shared
    check of test_compiler_trained_models); the plan's types are WRPN's."""
    from test_compiler_trained_models import _export_both, _torch_logits, _train, check

    from accumulus.compiler.compile import compile_model

    ds = load_dataset("digits")
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    torch.manual_seed(0)
    cfg = preset("digits-mlp", quant="wrpn", weight_bits=3, act_bits=3, width_mult=2)
    model = _train(cfg, ds, epochs=2)
    logits = _torch_logits(model, x)
    qonnx_path, qcdq_path = _export_both(model, cfg, ds, tmp_path)
    plan = compile_model(qonnx_path)
    a = check(qonnx_path, x, y, logits, "wrpn W=2 w3a3 QONNX/qonnx", "qonnx", plan=plan)
    assert a.accuracy > 0.5
    check(qcdq_path, x, y, logits, "wrpn W=2 w3a3 QCDQ/onnxruntime", "ort")
    macs = [l for l in plan.layers if l["kind"] in ("matvec", "conv")]
    assert [IntType.from_json(l["weight_type"]) for l in macs] == [IntType(8, True, True), IntType(3, True, True),
                                                                  IntType(8, True, True)]
    assert [l["channels"] for l in macs] == [128, 128, 10] and macs[0]["fan_in"] == 64
    assert [l["requant"]["out_type"]["bits"] for l in macs if l.get("requant")] == [3, 8]
    for l, m in zip(macs, (8, 3, 8)):
        w = plan.array(l["weight"])
        assert np.abs(w).max() <= 2 ** (m - 1) - 1, l["name"]


def test_cli_train_wrpn(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["train", "--preset", "digits-cnn", "--quant", "wrpn", "--weight-bits", "2", "--act-bits", "2",
                 "--edge-bits", "6", "--width-mult", "2", "--epochs", "1", "--limit", "200",
                 "--no-float-baseline", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "train.json").read_text())
    c = res["config"]
    assert (c["quant"], c["edge_bits"], c["width_mult"], c["weight_bits"]) == ("wrpn", 6, 2.0, 2)
    meta = json.loads({p.key: p.value for p in __import__("onnx").load(str(out / "model.onnx")).metadata_props}["accumulus"])
    assert [l["weight_bits"] for l in meta["layers"].values()] == [6, 2, 2, 6]
    assert [l["input_bits"] for l in meta["layers"].values()] == [5, 2, 2, 6]
    assert main(["train", "--quant", "int", "--edge-bits", "8", "--out", str(tmp_path / "q")]) == 2
    assert "--edge-bits" in capsys.readouterr().err


@pytest.mark.slow
def test_widened_wrpn_cnn_cosim_verilator(tmp_path):
    """A W=2 WRPN digits-cnn (2-bit weights and activations, 8-bit edges) trained, exported,
    compiled (golden checked against qonnx by compile), built and co-simulated on Verilator,
    bit-exact against the golden model."""
    require_tool("g++")
    require_module("verilator")
    import compiler_graphs as cg

    ds = load_dataset("digits")
    proj = tmp_path / "proj"
    assert main(["train", "--preset", "digits-cnn", "--quant", "wrpn", "--weight-bits", "2", "--act-bits", "2",
                 "--width-mult", "2", "--epochs", "2", "--no-float-baseline", "--quiet", "--out", str(proj)]) == 0
    assert main(["compile", str(proj / "model.onnx"), "--out", str(proj), "--quiet"]) == 0
    plan = json.loads((proj / "plan.json").read_text())
    assert plan["verification"]["ok"] is True
    macs = [l for l in plan["layers"] if l["kind"] in ("matvec", "conv")]
    assert [l["channels"] for l in macs] == [32, 32, 64, 10]
    assert [l["weight_type"]["bits"] for l in macs] == [8, 2, 2, 8]
    res = cg.build_and_cosim_verilator(proj, ds.x_test, tmp_path / "x.npy", frames=32)
    print(f"WRPN W=2 w2a2 digits-cnn co-sim: {res['frames']} frames bit-exact")
