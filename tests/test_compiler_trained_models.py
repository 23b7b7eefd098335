"""Models trained and exported by ``accumulus.quant``: golden == qonnx == onnxruntime == PyTorch.

Each model is trained briefly on digits (so that weights and activation scales are not
their initial values), exported as QONNX (``model.onnx``) and QCDQ (``model.qcdq.onnx``)
by ``quant/export.py``, compiled, and run on all 1,797 digits images:

* every requantized tensor of the plan (golden codes) against the reference's quantizer
  output: qonnx 1.0.0's ``execute_onnx`` on the QONNX graph, onnxruntime on the QCDQ graph
  (there the codes are the output of the ``Clip`` between QuantizeLinear and
  DequantizeLinear); >= 99.9% identical per tensor, and every remaining difference
  printed and shown to be a float rounding tie in the reference;
* top-1 of ``predict`` against the reference and against PyTorch: >= 99.9% identical,
  every remaining difference printed with the reference's two best logits (a tie);
* the input codes and the output logits.

The trainer takes 2..16-bit weights and 1..16-bit activations; 1-bit *bipolar* weights and
activations are built directly with Brevitas' binary quantizers (QONNX ``BipolarQuant``;
Brevitas has no QCDQ export for binary quantizers).
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import helper

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model
from conftest import require_module

MIN_AGREE = 0.999
# A difference counts as a float tie of the reference when the reference's pre-rounding value
# is within TIE_TOL codes of a half. The reference computes in float32: the ties seen here are
# <= 1e-5 codes from the half (8-bit activations, 64-term sums). compiler_graphs' default
# (1e-3) is too loose for these models: one accumulator unit moves a value by ~5e-4 codes
# in the 4-bit MLP, so a threshold off by one would pass as a "tie".
TIE_TOL = 1e-4


@pytest.fixture(scope="module")
def digits():
    """All 1,797 digits images (both splits) and their labels."""
    from accumulus.quant.data import load_dataset

    ds = load_dataset("digits")
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    assert x.shape == (1797, 1, 8, 8)
    return ds, x, y


def _torch():
    torch = require_module("torch")
    require_module("brevitas")
    torch.set_num_threads(1)
    return torch


def _train(cfg, ds, epochs=1):
    from accumulus.quant.train import TrainOptions, train

    model, _ = train(cfg, None, TrainOptions(epochs=epochs, float_baseline=False, progress=False), dataset=ds)
    model.eval()
    return model


def _torch_logits(model, x):
    torch = _torch()
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    return (y.value if hasattr(y, "value") else y).numpy()


def _ort_codes(model, x):
    """onnxruntime on a QCDQ graph; each QuantizeLinear's entry is replaced by onnxruntime's
    output of the Clip after it (QCDQ's narrow-integer codes), which the plan folds into the
    quantizer's type."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    # QuantizeLinear output -> element type of its zero point (the stored integer type)
    q_out = {n.output[0]: inits[n.input[2]].data_type for n in m.graph.node if n.op_type == "QuantizeLinear"}
    clips = {n.input[0]: n.output[0] for n in m.graph.node if n.op_type == "Clip" and n.input[0] in q_out}
    have = {o.name for o in m.graph.output}
    for q, c in clips.items():
        if c not in have:
            m.graph.output.append(helper.make_tensor_value_info(c, q_out[q], None))
    ctx = cg.ort_run(m, x)
    for q, c in clips.items():
        ctx[q] = ctx[c]
    return ctx


def _top1_diagnostic(ref, other, what, tol=1e-4):
    """Lines for each sample whose top-1 differs; the count of real disagreements; True if each
    of those is a tie of the reference's two best logits (equal within ``tol`` of the logit range).

    ``other`` is the golden model's output. A sample whose golden logits tie *exactly* at the
    top, with the reference's pick among the tied classes and the reference's own margin
    between them within ``tol`` (float rounding of an exact tie), is not a disagreement: the
    integer result has no unique top-1, and argmax's lowest-index convention and the
    reference's rounding noise pick among equals. Such samples are listed, not counted; any
    other difference counts. (Bipolar layers produce exact integer ties often: with a 64-wide
    +-1 dot product, two classes share the best logit on a few images in a thousand.)"""
    bad = np.nonzero(ref.argmax(1) != other.argmax(1))[0]
    lines, ties, nbad = [], True, 0
    span = float(np.ptp(ref)) or 1.0
    for b in bad:
        top = np.sort(ref[b])[::-1][:2]
        tie = bool(top[0] - top[1] <= tol * span)
        pick = int(ref[b].argmax())
        exact = bool(other[b, pick] == other[b].max()) and tie
        if exact:
            lines.append(f"{what} sample {b}: golden logits tie exactly at {other[b].max():.6g} between "
                         f"classes {np.flatnonzero(other[b] == other[b].max()).tolist()}; the reference picks "
                         f"{pick} by float rounding ({top.tolist()}) -> exact tie, not counted")
            continue
        nbad += 1
        ties &= tie
        lines.append(f"{what} sample {b}: reference top-1 {pick} ({ref[b].max():.6g}), "
                     f"other {int(other[b].argmax())}; reference's two best logits {top.tolist()} -> "
                     f"{'float tie' if tie else 'NOT A TIE'}")
    return nbad, lines, ties


@dataclass
class Agreement:
    name: str
    codes: dict = field(default_factory=dict)       # layer -> (elements, differing)
    top1_ref: float = 0.0
    top1_torch: float = 0.0
    accuracy: float = 0.0

    def line(self) -> str:
        worst = min(((n - b) / n for n, b in self.codes.values()), default=float("nan"))
        diffs = sum(b for _, b in self.codes.values())
        elems = sum(n for n, _ in self.codes.values())
        return (f"AGREEMENT {self.name}: {len(self.codes)} requantized tensors, {elems} codes, {diffs} differ "
                f"(worst tensor {worst:.6f}); top-1 vs reference {self.top1_ref:.6f}, vs PyTorch "
                f"{self.top1_torch:.6f}; golden accuracy {self.accuracy:.4f}")


def check(path, x, labels, torch_logits, name, reference="qonnx", plan=None, y_env=None):
    """Compile ``path`` (unless ``plan`` is given), run golden and the reference on ``x`` and
    assert the agreement the compiler promises. Returns an :class:`Agreement`."""
    om = onnx.load(str(path))
    plan = plan if plan is not None else compile_model(path)
    y, env = y_env if y_env is not None else predict(plan, x)
    ctx = cg.qonnx_run(om, x) if reference == "qonnx" else _ort_codes(om, x)
    ref = ctx[om.graph.output[0].name]

    # every requantized tensor of the plan is compared (none silently missing)
    stats, lines = cg.assert_every_requantized_tensor_ties_only(om, plan, env, ctx, tie_tol=TIE_TOL)
    for layer, (n, bad) in stats.items():
        assert (n - bad) / n >= MIN_AGREE, f"{name} {layer}: {bad} of {n} codes differ"

    # the input codes: the graph's input quantizer output
    q_in = next(n for n in om.graph.node if n.input[0] == om.graph.input[0].name)
    assert q_in.op_type in ("Quant", "QuantizeLinear"), q_in.op_type
    t_in = plan.tensor(plan.doc["input"]["tensor"])
    v_in = ctx[q_in.output[0]]
    in_codes = (v_in.astype(np.int64) if q_in.op_type == "QuantizeLinear"          # already codes
                else np.round(v_in / np.float64(t_in["scale"]) + np.float64(t_in["zero_point"])))
    gold_in = env[plan.doc["input"]["tensor"]].reshape(len(x), -1)
    np.testing.assert_array_equal(cg.to_stream(in_codes).reshape(len(x), -1), gold_in)

    # top-1 and logits
    a = Agreement(name, stats)
    for other, what in ((ref, "reference"), (torch_logits, "PyTorch")):
        nbad, tlines, ties = _top1_diagnostic(other, y, f"{name} top-1 vs {what}:")
        for line in tlines:
            print(line)
        agree = 1 - nbad / len(x)
        assert agree >= MIN_AGREE, f"{name}: top-1 vs {what} {agree:.5f}\n" + "\n".join(tlines)
        assert ties, "\n".join(tlines)
        if what == "reference":
            a.top1_ref = agree
        else:
            a.top1_torch = agree
    # logits: equal (to float32 rounding) in every sample whose codes all agree; a sample
    # with a reported tie carries the flipped code into its logits
    scale = float(np.max(np.abs(ref)))
    close = np.isclose(y, ref, rtol=1e-4, atol=1e-5 * scale).all(1)
    tie_samples = {int(b) for b in re.findall(r"^sample (\d+):", "\n".join(lines), re.M)}
    off = sorted(set(np.nonzero(~close)[0].tolist()) - tie_samples)
    assert not off, f"{name}: logits differ from the reference in samples {off[:10]} without a code difference"
    a.accuracy = float(np.mean(y.argmax(1) == labels))
    print(a.line())
    sys.stdout.flush()
    return a


def _export_both(model, cfg, ds, out):
    import torch

    from accumulus.quant.export import export_model

    sample = torch.from_numpy(ds.x_test[:8])
    return (export_model(model, cfg, out, sample, fmt="qonnx"), export_model(model, cfg, out, sample, fmt="qcdq"))


def _trained_case(tmp_path, digits, cfg, name, epochs=1):
    ds, x, labels = digits
    model = _train(cfg, ds, epochs)
    logits = _torch_logits(model, x)
    if cfg.act_bits == 1:
        # QuantizeLinear has no 1-bit form: QCDQ export is refused with one clear line
        import torch

        from accumulus.errors import UserError
        from accumulus.quant.export import export_model

        with pytest.raises(UserError, match="1-bit activations.*--format qonnx"):
            export_model(model, cfg, tmp_path, torch.from_numpy(ds.x_test[:8]), fmt="qcdq")
        path = export_model(model, cfg, tmp_path, torch.from_numpy(ds.x_test[:8]), fmt="qonnx")
        # unsigned 1-bit ({0, s}), not Brevitas' BipolarQuant ({-s, +s})
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert "BipolarQuant" not in ops, ops
        plan = compile_model(path)
        assert [l["requant"]["out_type"] for l in plan.layers if l.get("requant") is not None] == \
            [{"bits": 1, "signed": False, "narrow": False}] * 2
        check(path, x, labels, logits, f"{name} QONNX/qonnx", "qonnx", plan=plan)
        return plan
    qonnx_path, qcdq_path = _export_both(model, cfg, ds, tmp_path)
    assert qonnx_path.name == "model.onnx" and qcdq_path.name == "model.qcdq.onnx"
    check(qonnx_path, x, labels, logits, f"{name} QONNX/qonnx", "qonnx")
    plan = compile_model(qcdq_path)
    check(qcdq_path, x, labels, logits, f"{name} QCDQ/onnxruntime", "ort", plan=plan)
    return plan


def _mlp_cfg(bits_w, bits_a, hidden=(64, 64)):
    from accumulus.quant.models import make_config

    return make_config(model="mlp", dataset="digits", quant="int", weight_bits=bits_w, act_bits=bits_a,
                       hidden=hidden)


# ---------------------------------------------------------------------------------------------
# fast tier


def test_mlp_4bit_qonnx_and_qcdq(tmp_path, digits):
    _torch().manual_seed(0)
    plan = _trained_case(tmp_path, digits, _mlp_cfg(4, 4), "mlp w4a4")
    # QCDQ's Clip after each QuantizeLinear narrows the 8-bit storage type to the trained 4 bits
    hidden = [l for l in plan.layers if l.get("requant") is not None]
    assert [l["requant"]["out_type"] for l in hidden] == [{"bits": 4, "signed": False, "narrow": False}] * 2
    assert plan.tensor(plan.doc["input"]["tensor"])["type"] == {"bits": 5, "signed": False, "narrow": False}


def test_rescnn_4bit_qonnx_and_qcdq(tmp_path, digits):
    from accumulus.quant.models import preset

    _torch().manual_seed(0)
    plan = _trained_case(tmp_path, digits, preset("digits-rescnn"), "digits-rescnn")
    kinds = [l["kind"] for l in plan.layers]
    assert kinds.count("conv") == 3 and "add" in kinds and kinds.count("maxpool") == 2, kinds


def _exact_bits(w, in_type):
    """Per output channel: the smallest two's-complement width holding the exact accumulator
    range of ``w`` (N, K) over every input in ``in_type`` (computed here, not by the compiler)."""
    w = w.astype(np.int64)
    lo_x, hi_x = in_type.min, in_type.max
    lo = np.where(w > 0, w * lo_x, w * hi_x).sum(1)
    hi = np.where(w > 0, w * hi_x, w * lo_x).sum(1)
    bits = np.ones(len(w), np.int64)
    for c in range(len(w)):
        while not (-(1 << (bits[c] - 1)) <= lo[c] and hi[c] <= (1 << (bits[c] - 1)) - 1):
            bits[c] += 1
    return bits


def test_a2q_plus_from_cli_train_compile_predict(tmp_path, digits, capsys):
    """``accumulus train`` (A2Q+, P=12, every layer constrained) -> ``accumulus compile`` ->
    ``accumulus predict``; agreement with qonnx and PyTorch; each PE's accumulator width is
    the exact bound of its channels and <= P."""
    _torch()
    from accumulus.cli import main
    from accumulus.compiler.plan import Plan
    from accumulus.compiler.types import IntType
    from accumulus.quant.train import load_checkpoint

    ds, x, labels = digits
    proj, build = tmp_path / "proj", tmp_path / "build"
    assert main(["train", "--preset", "digits-mlp", "--acc-bits", "12", "--constrain-first", "--epochs", "2",
                 "--no-float-baseline", "--quiet", "--out", str(proj)]) == 0
    # a folding with several PEs per layer, so that per-PE widths are not just the layer maximum
    assert main(["compile", str(proj / "model.onnx"), "--out", str(build), "--max-pes", "200", "--quiet"]) == 0
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(build), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                 "--codes", str(tmp_path / "codes.npz")]) == 0
    capsys.readouterr()
    plan = Plan.load(build)
    y = np.load(tmp_path / "y.npy")
    with np.load(tmp_path / "codes.npz") as z:
        env = {k: z[k] for k in z.files}
    model, cfg, _ = load_checkpoint(proj)
    model.eval()
    with capsys.disabled():
        a = check(proj / "model.onnx", x, np.asarray(labels), _torch_logits(model, x), "digits-mlp A2Q+ P=12 (CLI)",
                  "qonnx", plan=plan, y_env=(y, env))
    assert a.accuracy > 0.5        # trained, not a constant classifier

    meta = json.loads({p.key: p.value for p in onnx.load(str(proj / "model.onnx")).metadata_props}["accumulus"])
    assert {l["acc_bits"] for l in meta["layers"].values()} == {12}
    macs = [l for l in plan.layers if l["kind"] in ("matvec", "conv")]
    assert len(macs) == 3
    rows = []
    for l in macs:
        w = plan.array(l["weight"])
        exact = _exact_bits(w, IntType.from_json(l["input_type"]))
        np.testing.assert_array_equal(l["acc"]["bits"]["exact"], exact, err_msg=l["name"])
        assert l["acc"]["bits"]["target"] == 12, l["name"]
        f = l["folding"]
        order = np.asarray(f["channel_order"])
        assert sorted(order.tolist()) == list(range(len(w)))
        want = [int(exact[order[p::f["pe"]]].max()) for p in range(f["pe"])]
        assert f["pe_acc_bits"] == want, (l["name"], f["pe_acc_bits"], want)
        assert max(f["pe_acc_bits"]) <= 12, (l["name"], f["pe_acc_bits"])
        rows.append(f"{l['name']}: PE {f['pe']} built {f['pe_acc_bits']} exact {int(exact.min())}..{int(exact.max())} "
                    f"data-type {l['acc']['bits']['datatype']} P 12")
    assert any(l["folding"]["pe"] > 1 for l in macs)
    with capsys.disabled():
        print("\n".join(["WIDTHS"] + rows))


# ---------------------------------------------------------------------------------------------
# slow tier: the bit-width sweep, the plain CNN, bipolar


@pytest.mark.slow
@pytest.mark.parametrize("bits_w,bits_a,epochs", [(2, 2, 4), (8, 8, 2), (2, 1, 4)], ids=["w2a2", "w8a8", "w2a1"])
def test_mlp_bit_widths(tmp_path, digits, bits_w, bits_a, epochs):
    # 2-bit weights ({-1, 0, 1}) and 1-2-bit activations give exactly equal integer logits
    # (often all zero) for many images after one or two epochs; the reference's float sums
    # then pick a class by rounding noise. A few more epochs make such images rare.
    _torch().manual_seed(0)
    plan = _trained_case(tmp_path, digits, _mlp_cfg(bits_w, bits_a), f"mlp w{bits_w}a{bits_a}", epochs=epochs)
    out = [l["requant"]["out_type"]["bits"] for l in plan.layers if l.get("requant") is not None]
    assert out == [bits_a, bits_a]


@pytest.mark.slow
def test_cnn_4bit_qonnx_and_qcdq(tmp_path, digits):
    from accumulus.quant.models import preset

    _torch().manual_seed(0)
    plan = _trained_case(tmp_path, digits, preset("digits-cnn"), "digits-cnn")
    assert [l["kind"] for l in plan.layers].count("conv") == 3


@pytest.mark.slow
def test_bipolar_mlp(tmp_path, digits):
    """1-bit bipolar weights and activations ({-1, +1}): Brevitas' binary quantizers directly
    (the trainer's weights are 2..16 bits). QONNX only: Brevitas cannot export binary QCDQ."""
    torch = _torch()
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst

    from accumulus.quant import brevitas_config as bc
    from accumulus.quant.data import InputQuant

    ds, x, labels = digits
    torch.manual_seed(0)

    class BipolarMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = bc.input_quant_layer(InputQuant(5, 1 / 16))
            self.fc1 = qnn.QuantLinear(64, 64, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
            self.bn1 = torch.nn.BatchNorm1d(64)
            self.a1 = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
            self.fc2 = qnn.QuantLinear(64, 10, bias=False, weight_quant=SignedBinaryWeightPerTensorConst)

        def forward(self, t):
            return self.fc2(self.a1(self.bn1(self.fc1(self.inp(t).flatten(1)))))

    m = BipolarMLP()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(2):
        m.train()
        for i in range(0, len(ds.x_train), 32):
            loss = torch.nn.functional.cross_entropy(m(torch.from_numpy(ds.x_train[i:i + 32])),
                                                     torch.from_numpy(ds.y_train[i:i + 32]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    path = tmp_path / "bipolar.onnx"
    export_qonnx(m, args=torch.from_numpy(x[:1]), export_path=str(path), dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("BipolarQuant") == 3, ops
    plan = compile_model(path)
    a = check(path, x, labels, _torch_logits(m, x), "bipolar mlp", "qonnx", plan=plan)
    assert a.accuracy > 0.5
    w = [plan.array(l["weight"]) for l in plan.layers if l["kind"] == "matvec"]
    assert all(set(np.unique(v).tolist()) <= {-1, 1} for v in w)


# ---------------------------------------------------------------------------------------------
# the QCDQ Clip on its own (hand-built)


def _qcdq_graph(clip_hi):
    from onnx import TensorProto, numpy_helper

    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z"),
             numpy_helper.from_array(np.uint8(0), "lo"), numpy_helper.from_array(np.uint8(clip_hi), "hi"),
             numpy_helper.from_array(np.arange(-12, 12, dtype=np.int8).reshape(6, 4), "w"),
             numpy_helper.from_array(np.float32(0.05), "ws"), numpy_helper.from_array(np.int8(0), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("Clip", ["q", "lo", "hi"], ["c"], name="clip"),
             helper.make_node("DequantizeLinear", ["c", "s", "z"], ["d"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], name="wdq"),
             helper.make_node("MatMul", ["d", "wf"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_qcdq_clip_narrows_the_code_type(tmp_path):
    from accumulus.compiler.types import IntType
    from accumulus.errors import UserError

    m = _qcdq_graph(15)
    cg.save(m, tmp_path / "q.onnx")
    plan = compile_model(tmp_path / "q.onnx")
    assert plan.tensor_type(plan.doc["input"]["tensor"]) == IntType(4, False)
    x = np.random.default_rng(0).uniform(-0.5, 2.5, (500, 6)).astype(np.float32)    # codes beyond 15 clip
    ctx = cg.ort_run(m, x)
    y, _ = predict(plan, x)
    np.testing.assert_allclose(y, ctx["y"], rtol=1e-5, atol=1e-5)
    # a clip range that is no integer type is refused by name
    cg.save(_qcdq_graph(10), tmp_path / "bad.onnx")
    with pytest.raises(UserError, match="Clip 'clip'.*not a whole integer type"):
        compile_model(tmp_path / "bad.onnx")
