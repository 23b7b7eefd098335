"""compile verifies itself; `accumulus check`; graphs without custom-domain opset imports."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import compiler_graphs as cg
from accumulus.cli import main
from accumulus.compiler import compile as compile_mod
from accumulus.compiler.verify import calibration_batch, compare


def _mlp(tmp_path, **kw):
    path = tmp_path / "mlp.onnx"
    cg.save(cg.mlp(**kw)[0], path)
    return path


def _corrupt_threshold(plan):
    """Move every threshold of one channel of the first thresholded layer by a quarter of its range."""
    for layer in plan.layers:
        rq = layer.get("requant")
        if rq and rq["kind"] == "thresholds":
            key = rq["thresholds"]
            t = plan.arrays[key].copy()
            lo, hi = layer["acc"]["range"][3]
            t[3] += max(1, (hi - lo) // 4)
            plan.arrays[key] = t
            return layer["name"]
    raise AssertionError("no thresholded layer")


def test_compile_refuses_a_plan_whose_golden_model_disagrees(tmp_path, monkeypatch, capsys):
    path = _mlp(tmp_path)
    real = compile_mod.compile_model
    corrupted = {}

    def bad_compile(*a, **k):
        plan = real(*a, **k)
        corrupted["layer"] = _corrupt_threshold(plan)
        return plan

    monkeypatch.setattr(compile_mod, "compile_model", bad_compile)
    out = tmp_path / "out"
    rc = main(["compile", str(path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert not (out / "plan.json").exists(), "a wrong plan was written"
    assert f"plan layer '{corrupted['layer']}'" in err and "golden code" in err and "qonnx 1.0.0 code" in err
    assert "Traceback" not in err
    # --no-verify writes it anyway and says so in plan.json
    rc = main(["compile", str(path), "--out", str(out), "--quiet", "--no-verify"])
    assert rc == 0
    doc = json.loads((out / "plan.json").read_text())
    assert doc["verification"] == {"skipped": True, "reason": "--no-verify"}
    # ... and in every report
    assert main(["report", str(out), "--board", "icebreaker", "--estimate-only"]) == 0
    rep = json.loads((out / "reports" / "report.json").read_text())
    assert rep["verification"].startswith("SKIPPED (--no-verify)")
    assert "Golden model verification: SKIPPED (--no-verify)" in (out / "reports" / "report.md").read_text()


def test_compile_records_verification(tmp_path, capsys):
    path = _mlp(tmp_path)
    x = np.random.default_rng(1).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    assert main(["compile", str(path), "--out", str(out), "--quiet", "--calib", str(tmp_path / "x.npy")]) == 0
    doc = json.loads((out / "plan.json").read_text())["verification"]
    assert doc["ok"] and doc["samples"] == 37 and doc["reference"] == "qonnx 1.0.0"
    assert len(doc["tensors"]) == 2 and all(t["elements"] == 37 * 64 for t in doc["tensors"])
    assert "verified: golden model == qonnx 1.0.0 on 37 inputs" in capsys.readouterr().out


def test_check_command(tmp_path, capsys):
    path = _mlp(tmp_path)
    out = tmp_path / "out"
    assert main(["compile", str(path), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["check", str(path)]) == 0
    text = capsys.readouterr().out
    assert "agree" in text and "100.0000%" in text
    # corrupt the saved plan: check names the tensor, the first element and that it is no tie
    from accumulus.compiler.plan import Plan
    plan = Plan.load(out)
    _corrupt_threshold(plan)
    plan.save(out)
    assert main(["check", str(path), "--plan", str(out)]) == 1
    text = capsys.readouterr().out
    assert "NOT a tie" in text and "DIFFER: tensor" in text


def test_calibration_batch_spans_the_code_range():
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.onnx"
        cg.save(cg.mlp()[0], p)
        plan = compile_mod.compile_model(p)
    from accumulus.compiler.golden import quantize_input
    x = calibration_batch(plan, 64)
    codes = quantize_input(plan, x)
    # 5-bit unsigned input (digits 0..16 scaled by 1/16, type range 0..31): every code appears
    assert codes.min() == 0 and codes.max() == 31
    assert len(np.unique(codes)) == 32


def test_missing_custom_opset_import_is_added_with_a_note(tmp_path):
    m = cg.mlp()[0]
    keep = [o for o in m.opset_import if o.domain == ""]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    path = tmp_path / "noopset.onnx"
    onnx.save(m, path)
    with pytest.raises(Exception, match="No opset import"):
        onnx.checker.check_model(onnx.load(path))
    plan = compile_mod.compile_model(path)
    assert any("no opset import for domain 'qonnx.custom_op.general'" in n for n in plan.doc["notes"])
    x = calibration_batch(plan, 16)
    ver = compare(plan, onnx.load(path), x)
    assert ver.ok and len(ver.tensors) == 2


def _float_input_mlp(path):
    """QKeras / hls4ml style: quantized weights, the first MatMul reads the float graph input."""
    b = cg.Builder(seed=3)
    x = b.node("Flatten", ["x"], axis=1)
    w = b.weight((64, 32), bits=4, axis_shape=(1, 32))
    h = b.node("MatMul", [x, w])
    h = b.node("Add", [h, b.const(b.rng.normal(0, 0.5, 32).astype(np.float32), "bias")])
    h = b.node("Relu", [h])
    h = b.quant(h, np.float32(0.25), 0, 4, False, False)
    w2 = b.weight((32, 10), bits=4, axis_shape=(1, 10))
    y = b.node("MatMul", [h, w2])
    cg.save(b.model("x", [1, 1, 8, 8], y, [1, 10]), path)


def test_float_input_needs_a_declared_type(tmp_path, capsys):
    path = tmp_path / "float_in.onnx"
    _float_input_mlp(path)
    assert main(["compile", str(path), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "--input-type" in capsys.readouterr().err
    out = tmp_path / "b"
    assert main(["compile", str(path), "--out", str(out), "--quiet", "--input-type", "fixed<8,3>"]) == 0
    doc = json.loads((out / "plan.json").read_text())
    assert doc["input"]["type"] == {"bits": 8, "signed": True, "narrow": False}
    assert doc["input"]["scale"] == 2.0 ** -5 and doc["input"]["declared"]
    assert doc["verification"]["ok"] and doc["verification"]["tensors"]
    assert doc["verification"]["output_top1"] >= 0.999
    assert main(["check", str(path), "--input-type", "uint8", "--input-scale", "0.01"]) == 0
    assert main(["compile", str(path), "--out", str(tmp_path / "c"), "--input-type", "fixed<8>"]) == 2
    assert "--input-type 'fixed<8>'" in capsys.readouterr().err
