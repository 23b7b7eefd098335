"""The compile-speed benchmark runs and meets its limit (mnist-tfc shape < 5 s)."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_compile_speed_benchmark(tmp_path):
    mod = runpy.run_path(str(REPO / "benchmarks" / "compile_speed.py"))
    out = tmp_path / "speed.json"
    assert mod["main"](["--out", str(out), "--repeat", "1"]) == 0
    doc = json.loads(out.read_text())
    assert doc["pass"] and doc["compile_s"]["max"] < 5.0
    assert doc["versions"]["onnx"] and doc["versions"]["numpy"]
    assert [l["name"] for l in doc["layers"]] == ["fc0", "fc1", "fc2", "fc3"]
    # the first layer (784 8-bit inputs, unconstrained) needs more bits than the hidden ones
    assert doc["layers"][0]["exact_max"] > doc["layers"][1]["exact_max"]
