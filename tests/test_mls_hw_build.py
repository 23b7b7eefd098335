"""``accumulus build`` and ``accumulus sim`` on MLS plans (docs/mls.md, hardware): the
MLSTop Verilog co-simulated by cocotb on Icarus and Verilator against
compiler.golden.run_mls, under back-pressure, with worst-case vectors (slow tier); the
plans come from ``accumulus compile`` on MLS ONNX graphs built in tests/mls_graphs.py
(checked there against onnx.reference)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from accumulus.cli import main
from accumulus.compiler.mls import MLSFormat

from conftest import require_module, require_tool
from mls_graphs import conv_graph, mlp_graph


def _project(tmp_path, kind="mlp", name="p"):
    fmt = MLSFormat(1, 2, 4, 2)
    onnx_path = tmp_path / f"{name}.onnx"
    if kind == "mlp":
        mlp_graph(onnx_path, [12, 9, 6, 4], fmt, seed=3)
    else:
        conv_graph(onnx_path, 2, 7, 3, 3, fmt, pool=2, seed=3)
    proj = tmp_path / name
    assert main(["compile", str(onnx_path), "--out", str(proj)]) == 0
    return proj


def test_build_writes_verilog_and_build_json(tmp_path, capsys):
    iverilog = require_tool("iverilog")
    proj = _project(tmp_path)
    capsys.readouterr()
    assert main(["build", str(proj), "--acc-policy", "datatype"]) == 0
    out = capsys.readouterr().out
    assert "--acc-policy does not apply to an MLS plan" in out and "3 MLS stages" in out
    doc = json.loads((proj / "rtl" / "build.json").read_text())
    plan = json.loads((proj / "plan.json").read_text())
    assert doc["kind"] == "mls" and doc["top"]["module"] == "accumulus_top"
    pk = doc["top"]["packing"]
    assert pk["input"] == {"elements_per_beat": 1, "element_bits": 5, "signed": False, "beat_bytes": 1,
                           "frame_elements": 12}
    assert pk["output"]["element_bits"] == 32 and pk["output"]["frame_elements"] == 4
    assert pk["output"]["scale"] == plan["tensors"][plan["output"]]["scale"]
    assert [l["layer"] for l in doc["layers"]] == [l["name"] for l in plan["layers"]]
    for entry in doc["layers"]:
        assert (proj / "rtl" / entry["file"]).is_file()
    # the top is self-contained Verilog that Icarus elaborates
    r = subprocess.run([iverilog, "-g2012", "-o", str(tmp_path / "a.out"), "-s", "accumulus_top",
                        str(proj / "rtl" / "accumulus_top.v")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _sim(proj, *extra):
    rc = main(["sim", str(proj), *extra])
    res = json.loads((proj / "sim" / "results.json").read_text())
    return rc, res


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn-pool"])
def test_cosim_icarus_bit_exact_with_worst_case_and_detects_a_wrong_golden(tmp_path, kind):
    require_tool("iverilog")
    proj = _project(tmp_path, kind)
    assert main(["build", str(proj)]) == 0
    rc, res = _sim(proj, "--frames", "12", "--backpressure", "0.3")
    assert rc == 0 and res["passed"] and res["mismatches"] == 0 and res["frames_missing"] == 0, res
    assert res["frames"] == 12 + res["runs"][0]["measure_frames"]
    # double-buffered stages overlap: a frame takes the slowest stage's cycles (the estimate)
    assert res["cycles_per_frame_error"] is not None and res["cycles_per_frame_error"] <= 0.02, res
    rc, res = _sim(proj, "--stimulus", "worst", "--backpressure", "0.3", "--seed", "1")
    assert rc == 0 and res["passed"], res
    designs = {r["design"] for r in res["runs"]}
    mls_layers = [l["name"] for l in json.loads((proj / "plan.json").read_text())["layers"]
                  if l["kind"].startswith("mls_")]
    assert designs == {"top"} | {f"layer-{n}" for n in mls_layers}
    # a live comparison: one requantization multiplier changed in the plan after the build
    # (the golden model follows the plan, the Verilog does not) must fail
    doc = json.loads((proj / "plan.json").read_text())
    last = [l for l in doc["layers"] if l["kind"].startswith("mls_")][-1]
    last["requant"]["A"][0] += 1 << 12
    (proj / "plan.json").write_text(json.dumps(doc))
    rc, res = _sim(proj, "--frames", "6", "--stimulus", "worst")
    assert rc == 1 and not res["passed"] and res["mismatches"] > 0
    assert res["first_mismatch"]["expected"] != res["first_mismatch"]["got"]


@pytest.mark.slow
def test_cosim_verilator_bit_exact_under_backpressure(tmp_path):
    require_module("verilator")
    require_tool("g++")
    proj = _project(tmp_path, "cnn-pool")
    assert main(["build", str(proj)]) == 0
    rc, res = _sim(proj, "--simulator", "verilator", "--frames", "16", "--backpressure", "0.3")
    assert rc == 0 and res["passed"] and res["mismatches"] == 0 and "Verilator" in res["simulator_version"], res
    rc, res = _sim(proj, "--simulator", "verilator", "--stimulus", "worst", "--backpressure", "0.3")
    assert rc == 0 and res["passed"] and len(res["runs"]) == 3, res
    x = np.random.default_rng(0).integers(0, 32, (5, 2, 7, 7)) / 16
    np.save(proj / "x.npy", x.astype(np.float32))
    rc, res = _sim(proj, "--simulator", "verilator", "--stimulus", str(proj / "x.npy"), "--engines")
    assert rc == 0 and res["passed"] and len(res["runs"]) == 4, res


@pytest.mark.slow
def test_flow_mls_example_end_to_end(tmp_path, capsys):
    """examples/flow_mls.toml: train (digits-mlp, --quant mls) -> export -> compile -> build ->
    sim (Icarus, back-pressure 0.3, test images) -> report, through 'accumulus flow'."""
    from pathlib import Path

    require_tool("iverilog")
    cfg = Path(__file__).resolve().parent.parent / "examples" / "flow_mls.toml"
    out = tmp_path / "mls"
    assert main(["flow", "--config", str(cfg), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert plan["format"] == "accumulus-mls-plan" and plan["verification"]["ok"]    # golden == onnx.reference
    res = json.loads((out / "sim" / "results.json").read_text())
    assert res["passed"] and res["mismatches"] == 0 and res["frames"] == 50 + res["runs"][0]["measure_frames"]
    assert res["runs"][0]["stimulus"] == "test split of 'digits'"
    assert (out / "reports" / "report.md").is_file()
    assert "co-simulation icarus: 58 frames bit-exact" in text and "MLS layers" in text
    # unchanged inputs: a second run skips every stage
    assert main(["flow", "--config", str(cfg), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out


def test_sim_without_build_and_unsupported_pool_say_what_to_do(tmp_path, capsys):
    proj = _project(tmp_path)
    capsys.readouterr()
    assert main(["sim", str(proj)]) != 0
    err = capsys.readouterr().err
    assert "rtl/build.json not found" in err and f"accumulus build {proj}" in err and len(err.strip().splitlines()) == 1
    # an overlapping max-pool window has no MLS stage: one line naming the layer
    doc = json.loads((proj / "plan.json").read_text())
    shape = doc["layers"][0]["out_shape"]
    doc["layers"].insert(1, {"name": "pool_x", "kind": "maxpool", "input": doc["layers"][0]["output"],
                             "output": doc["layers"][0]["output"], "kernel": [3, 3], "stride": [2, 2],
                             "in_shape": [shape[0], 1, 1], "out_shape": shape})
    (proj / "plan.json").write_text(json.dumps(doc))
    assert main(["build", str(proj)]) != 0
    err = capsys.readouterr().err
    assert "max-pool 'pool_x'" in err and "equal to the stride" in err and len(err.strip().splitlines()) == 1
