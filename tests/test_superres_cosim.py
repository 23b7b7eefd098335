"""Slow tier: super-resolution nets exported by Brevitas at test time, built to Verilog and
co-simulated on Verilator bit-exact against the golden model.

* ESPCN-style sub-pixel net (three 3x3 convs, PixelShuffle(2) -> DepthToSpace);
* a nearest-Resize net (Upsample(2) -> Resize, then two convs). qonnx's bundled
  ``bsd300x3-espcn/nn_resize`` model (128x128 -> 256x256, 3 channels) would take hours of
  co-simulation per frame, so a small Brevitas net stands in for it.

Each run: random float images in the ONNX layout (quantized by the plan), random
back-pressure on both sides, every frame bit-exact, none lost or duplicated, cycles per
frame within 10% of the plan's estimate.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from accumulus.cli import main

from conftest import require_module, require_tool
from test_superres import BREVITAS_TARGET, brevitas_superres

FRAMES = 100


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["subpixel", "resize"])
def test_brevitas_superres_cosim_verilator(tmp_path, kind, capsys):
    require_tool("g++")
    require_module("amaranth")
    from accumulus.compiler.compile import CompileOptions, compile_model
    from accumulus.hw.build import build

    _, model = brevitas_superres(kind, tmp_path / "m.onnx")
    plan = compile_model(tmp_path / "m.onnx", CompileOptions(**BREVITAS_TARGET))
    assert "reorder" in [l["kind"] for l in plan.layers]
    d = tmp_path / "proj"
    plan.save(d)
    doc = build(plan, d)
    assert (d / "rtl" / "accumulus_top.v").exists()
    assert any(l["kind"] == "reorder" for l in doc["layers"])
    stim = tmp_path / "x.npy"
    np.save(stim, np.random.default_rng(7).uniform(-1, 1, (FRAMES, 1, 8, 8)).astype(np.float32))
    rc = main(["sim", str(d), "--simulator", "verilator", "--stimulus", str(stim), "--frames", str(FRAMES),
               "--backpressure", "0.3", "--seed", "2"])
    out = capsys.readouterr().out
    print(out)
    r = json.loads((d / "sim" / "results.json").read_text())
    assert rc == 0 and r["passed"], out
    run = r["runs"][0]
    n = FRAMES + run["measure_frames"]
    assert "Verilator" in r["simulator_version"]
    assert r["frames"] == n and r["mismatches"] == 0
    assert run["frames_sent"] == run["frames_received"] == n, "a frame was lost or duplicated"
    assert r["frames_missing"] == 0 and r["extra_frames"] == 0
    assert run["input_gap_cycles"] > 0 and run["output_stall_cycles"] > 0
    assert r["cycles_per_frame_error"] <= 0.10, \
        f"measured {r['cycles_per_frame']} vs estimate {r['cycles_per_frame_estimate']}"

    # every engine alone (the reorder included) on the golden model's tensors, and the
    # worst-case stimulus (for the resize net its first MAC layer reads the reorder's output)
    for extra in (["--engines"], ["--stimulus", "worst"]):
        rc = main(["sim", str(d), "--simulator", "verilator", "--frames", "8", "--backpressure", "0.3", *extra])
        out = capsys.readouterr().out
        r = json.loads((d / "sim" / "results.json").read_text())
        assert rc == 0 and r["passed"] and r["mismatches"] == 0, out
        designs = [run["design"] for run in r["runs"]]
        if extra == ["--engines"]:
            assert any("DepthToSpace" in x or "Resize" in x for x in designs), designs
        else:
            # the first MAC layer runs inside the whole design unless a reorder is in front of it
            macs = sum(l["kind"] == "conv" for l in plan.layers)
            assert sum("Conv" in x for x in designs) == (macs if kind == "resize" else macs - 1), designs
