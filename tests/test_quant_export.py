"""quant/export.py: QONNX/QCDQ export with exact A2Q integers, metadata, qonnx execution."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_module

torch = require_module("torch")
require_module("brevitas")
onnx = require_module("onnx")

from accumulus.cli import main  # noqa: E402
from accumulus.errors import UserError  # noqa: E402
from accumulus.quant import brevitas_config as bc  # noqa: E402
from accumulus.quant.data import load_dataset  # noqa: E402
from accumulus.quant.export import METADATA_KEY, export_model, quant_weights, read_layers, verify_onnx  # noqa: E402
from accumulus.quant.models import build_model, preset  # noqa: E402
from accumulus.quant.train import TrainOptions, train  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """digits-mlp (A2Q+, P=12) after one short epoch, exported."""
    out = tmp_path_factory.mktemp("mlp")
    cfg = preset("digits-mlp")
    model, res = train(cfg, out, TrainOptions(epochs=1, limit=400, progress=False, float_baseline=False))
    sample = torch.from_numpy(digits.x_test[:8])
    path = export_model(model, cfg, out, sample, res["test_accuracy"])
    return model, cfg, path, sample


def _execute_qonnx(path, x):
    require_module("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    mw = cleanup_model(ModelWrapper(str(path)))
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    return np.concatenate([execute_onnx(mw, {iname: x[i:i + 1]})[oname] for i in range(len(x))])


def test_metadata(trained):
    _, cfg, path, _ = trained
    model = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta["dataset"] == "digits" and 0 <= meta["test_accuracy"] <= 1
    layers = meta["layers"]
    assert len(layers) == 3
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name for i in model.graph.initializer}
    for name, info in layers.items():
        assert nodes[name].op_type in ("MatMul", "Gemm", "Conv") and info["weight"] in inits
        assert info["weight_bits"] == 4 and info["input_signed"] is False
    assert [v["order"] for v in layers.values()] == [0, 1, 2]
    first, *rest = layers.values()
    assert (first["quant"], first["acc_bits"], first["input_bits"]) == ("int", None, 5)
    assert all((r["quant"], r["acc_bits"], r["input_bits"]) == ("a2q+", 12, 4) for r in rest)
    assert [i.name for i in model.graph.input] == ["input"]
    assert not any(n.op_type == "Relu" for n in model.graph.node)   # folded into unsigned Quant


def test_exported_integers_equal_quant_weight_and_fit_p(trained):
    model, cfg, path, sample = trained
    ref = {le.module + ".weight": le for le in quant_weights(model, cfg, sample)}
    found = read_layers(onnx.load(str(path)))
    assert len(found) == 3
    for info in found.values():
        np.testing.assert_array_equal(info["int"], ref[info["weight"]].weight_int)
    report = verify_onnx(path)           # the file alone: Quant integers + metadata
    assert all(r["exact_bits"] <= 12 for r in report.values() if r["acc_bits"] == 12)


def test_plain_brevitas_export_is_what_we_fix(trained, tmp_path):
    """Documents the Brevitas bug (TOOLCHAIN.md): its own integers differ from quant_weight()."""
    from brevitas.export import export_qonnx

    model, cfg, _, sample = trained
    export_qonnx(model, args=sample[:1], export_path=str(tmp_path / "raw.onnx"), dynamo=False)
    ref = {le.module + ".weight": le.weight_int for le in quant_weights(model, cfg, sample)}
    raw = read_layers(onnx.load(str(tmp_path / "raw.onnx")))
    differ = sum(int((v["int"] != ref[v["weight"]]).sum()) for v in raw.values() if v["weight"] != "layers.0.weight")
    assert differ > 0


def test_tampered_weights_are_rejected(trained, tmp_path):
    _, _, path, _ = trained
    model = onnx.load(str(path))
    found = read_layers(model)
    name, info = [(k, v) for k, v in found.items() if "layers.1" in v["weight"]][0]
    init = [i for i in model.graph.initializer if i.name == info["weight"]][0]
    big = np.full(info["int"].shape, 7, dtype=np.float32) * np.asarray(info["scale"], dtype=np.float32)
    init.CopyFrom(onnx.numpy_helper.from_array(big.astype(np.float32), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(UserError, match=f"layer '{name}'.*P=12"):
        verify_onnx(bad)


def test_qonnx_execution_matches_pytorch(trained, digits):
    model, _, path, _ = trained
    x = digits.x_test[:6]
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    out = _execute_qonnx(path, x)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_qcdq_export_matches_pytorch(trained, digits, tmp_path):
    ort = require_module("onnxruntime")
    model, cfg, _, sample = trained
    path = export_model(model, cfg, tmp_path, sample, fmt="qcdq")
    assert path.name == "model.qcdq.onnx"
    sess = ort.InferenceSession(str(path))
    x = digits.x_test[:6]
    out = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,overrides", [("digits-cnn", {}), ("digits-rescnn", {"quant": "a2q+", "acc_bits": 16, "highway_bits": 8})])
def test_cnn_exports_run_in_qonnx(name, overrides, tmp_path, digits):
    cfg = preset(name, **overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.from_numpy(digits.x_train[:32])
    if cfg.quant in ("a2q", "a2q+"):
        bc.apply_ep_init(model, x)
    model.train()
    with torch.no_grad():
        model(x)                        # settle BatchNorm statistics and activation scales
    path = export_model(model, cfg, tmp_path, x[:8])
    kinds = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in kinds and "MaxPool" in kinds and (("Add" in kinds) == (name == "digits-rescnn"))
    xs = digits.x_test[:3]
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(_execute_qonnx(path, xs), ref, rtol=1e-4, atol=1e-4)


def test_cli_export(trained, capsys):
    _, _, path, _ = trained
    assert main(["export", str(path.parent), "--threads", "1"]) == 0
    assert "exact" in capsys.readouterr().out
    verify_onnx(path)


@pytest.mark.slow
def test_digits_mlp_trains_and_model_onnx_proves_12_bits(tmp_path, capsys):
    import time

    t0 = time.monotonic()
    code = main(["train", "--model", "mlp", "--dataset", "digits", "--quant", "a2q+", "--weight-bits", "4",
                 "--act-bits", "4", "--acc-bits", "12", "--epochs", "5", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    assert time.monotonic() - t0 < 120
    hist = json.loads((tmp_path / "train.json").read_text())
    assert hist["test_accuracy"] > 0.8
    report = verify_onnx(tmp_path / "model.onnx")     # proof from the file alone
    constrained = {k: v for k, v in report.items() if v["acc_bits"] is not None}
    assert len(constrained) == 2
    assert all(v["acc_bits"] == 12 and v["exact_bits"] <= 12 for v in constrained.values())


def test_float_model_exports_with_float_metadata(tmp_path, digits):
    cfg = preset("digits-mlp", quant="float")
    model, res = train(cfg, None, TrainOptions(epochs=1, limit=100, progress=False, float_baseline=False))
    path = export_model(model, cfg, tmp_path, torch.from_numpy(digits.x_test[:4]), res["test_accuracy"])
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY])
    assert [v["quant"] for v in meta["layers"].values()] == ["float"] * 3
    assert verify_onnx(path) == {}
