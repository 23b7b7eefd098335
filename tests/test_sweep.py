"""accumulus sweep: grid/list expansion, key errors, pool vs Ray, failure isolation, kill and resume."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accumulus import sweep
from accumulus.cli import main
from accumulus.errors import UserError

import compiler_graphs  # tests/compiler_graphs.py: hand-built QONNX graphs
from conftest import REPO, require_module

# A user's graph swept over compile options: no torch, a couple of seconds per point.
MODEL_SWEEP = """
[flow]
model = "user.onnx"
stages = {stages}
[compile]
board = "icebreaker"
quiet = true
[report]
board = "icebreaker"
estimate-only = true
policies = ["exact"]
[sweep]
{sweep}
"""


@pytest.fixture
def model_dir(tmp_path):
    model, _ = compiler_graphs.mlp(widths=(64, 16, 10), seed=3, final_argmax=True)
    compiler_graphs.save(model, tmp_path / "user.onnx")
    return tmp_path


def write_spec(d: Path, sweep_table: str, stages=("compile", "report"), name="s.toml") -> Path:
    path = d / name
    path.write_text(MODEL_SWEEP.format(stages=json.dumps(list(stages)), sweep=sweep_table))
    return path


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# -- the sweep file -----------------------------------------------------------------------------

def test_grid_and_points_expand_to_the_product_plus_the_list(model_dir):
    spec = write_spec(model_dir, 'grid = { "compile.max-pes" = [2, 8, 16], "compile.engine" = ["rom", "const"] }\n'
                                 'points = [ { "compile.max-pes" = 4 }, { "compile.max-pes" = 2, "compile.engine" = "rom" },\n'
                                 '           { "compile.board+report.board" = "ulx3s-85f" } ]')
    s = sweep.load(spec)
    grid = [(p, e) for p in (2, 8, 16) for e in ("rom", "const")]
    assert [(p.options["compile.max-pes"], p.options["compile.engine"]) for p in s.points[:6]] == grid
    for p in s.points[:6]:
        assert p.config["compile"]["max-pes"] == p.options["compile.max-pes"]
        assert p.config["compile"]["engine"] == p.options["compile.engine"]
    # the second listed point equals a grid point: it runs once
    assert len(s.points) == 6 + 2
    assert s.points[6].config["compile"]["max-pes"] == 4 and "engine" not in s.points[6].config["compile"]
    tied = s.points[7].config
    assert tied["compile"]["board"] == tied["report"]["board"] == "ulx3s-85f"
    assert len({p.id for p in s.points}) == len(s.points)
    assert s.stages == ["compile", "report"]
    assert [p.id for p in sweep.load(spec).points] == [p.id for p in s.points]  # ids are stable


@pytest.mark.parametrize("key, message", [
    ("trian.acc-bits", r"unknown stage 'trian' \(did you mean 'train'\?\); keys are STAGE.OPTION with STAGE one of "
                       r"train, export, compile, build, sim, report"),
    ("compile.max-pe", r"key 'compile.max-pe': 'accumulus compile' has no option --max-pe \(did you mean --max-pes\?\)"),
    ("compile.out", r"--out is set by the sweep"),
    ("maxpes", r"key 'maxpes' must be STAGE.OPTION"),
    ("train.acc-bits", r"key 'train.acc-bits' sets the 'train' stage, which this sweep does not run"),
])
def test_bad_keys_name_the_key_and_the_stages(model_dir, capsys, key, message):
    spec = write_spec(model_dir, f'grid = {{ "{key}" = [1, 2] }}')
    assert main(["sweep", str(spec), "--out", str(model_dir / "o"), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(spec) in err
    assert re.search(message, err), err


def test_bad_stage_table_option_and_empty_sweep(model_dir):
    spec = write_spec(model_dir, 'grid = { "compile.engine" = ["rom"] }')
    spec.write_text(spec.read_text().replace("quiet = true", "quiet = true\nmax_pez = 3", 1))
    with pytest.raises(UserError, match=r"\[compile\] key 'max_pez': 'accumulus compile' has no option --max-pez"):
        sweep.load(spec)
    with pytest.raises(UserError, match=r"neither a grid nor points"):
        sweep.load(write_spec(model_dir, "grid = {}"))
    with pytest.raises(UserError, match=r"grid 'compile.engine' must be a non-empty list"):
        sweep.load(write_spec(model_dir, 'grid = { "compile.engine" = "rom" }'))
    (model_dir / "plain.toml").write_text("[train]\nepochs = 1\n")
    with pytest.raises(UserError, match=r"no \[sweep\] table"):
        sweep.load(model_dir / "plain.toml")


def test_pareto_front_by_definition():
    def e(i, acc, lut, fits=None):
        return {"id": i, "figures": {"accuracy": acc, "lut": lut, "fits": fits}}

    pts = [e("a", 0.90, 100), e("b", 0.80, 50), e("c", 0.85, 120), e("d", 0.95, 90, fits=False), e("f", 0.80, 60)]
    # c is beaten by a (more accurate, fewer LUTs); f by b; d does not fit the board
    assert sweep._pareto(pts, "lut", minimize_x=True) == {"a", "b"}
    assert sweep._pareto(pts, "lut", minimize_x=False) == {"a", "c"}  # the larger x the better


# -- running -----------------------------------------------------------------------------------

GRID_2X2 = 'grid = { "compile.max-pes" = [2, 16], "compile.engine" = ["rom", "auto"] }'


def test_pool_sweep_measures_each_point_from_its_artifacts(model_dir):
    spec = write_spec(model_dir, 'grid = { "compile.max-pes" = [2, 16], "compile.engine" = ["rom"] }')
    out = model_dir / "out"
    t0 = time.monotonic()
    doc = sweep.run(spec, out=out, workers=2, quiet=True)
    first = time.monotonic() - t0
    assert [e["status"] for e in doc["points"]] == ["ok"] * 2
    from accumulus.boards.boards import load_board

    clock = load_board("icebreaker").clock_mhz
    for e in doc["points"]:
        d = out / e["dir"]
        plan = json.loads((d / "plan.json").read_text())
        rep = json.loads((d / "reports" / "report.json").read_text())
        assert plan["options"]["max_pes"] == e["options"]["compile.max-pes"]
        assert plan["options"]["engine"] == e["options"]["compile.engine"]
        f = e["figures"]
        assert f["cycles_per_frame"] == plan["estimate"]["cycles_per_frame"]
        assert f["fps"] == pytest.approx(clock * 1e6 / plan["estimate"]["cycles_per_frame"])
        assert f["lut"] == pytest.approx(sum(v["lut"] for v in rep["policy"]["exact"]["estimate"].values()), abs=0.1)
        assert f["board"] == "icebreaker"
    # fewer MAC lanes -> more cycles per frame
    by = {(e["options"]["compile.max-pes"], e["options"]["compile.engine"]): e["figures"] for e in doc["points"]}
    assert by[(2, "rom")]["cycles_per_frame"] > by[(16, "rom")]["cycles_per_frame"]
    assert (out / "results.csv").read_text().count("\n") == 3
    assert (out / "pareto-icebreaker.png").stat().st_size > 1000
    assert "| `" in (out / "report.md").read_text()

    # a rerun runs nothing: every point is done and its flow stages are current
    t0 = time.monotonic()
    again = sweep.run(spec, out=out, workers=2, quiet=True)
    assert again == doc
    log = json.loads((out / "sweep.json").read_text())
    assert log["points_run"] == 0 and all(v["cached"] for v in log["points"].values())
    assert time.monotonic() - t0 < first


def test_failing_point_records_its_error_and_the_sweep_goes_on(model_dir, capsys):
    spec = write_spec(model_dir, 'grid = { "compile.engine" = ["rom", "bogus"] }', stages=("compile",))
    out = model_dir / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    doc = results(out)
    ok, bad = doc["points"]
    assert ok["status"] == "ok" and (out / ok["dir"] / "plan.json").exists()
    assert bad["status"] == "failed" and bad["failed_stage"] == "compile"
    assert "argument --engine: invalid choice: 'bogus'" in bad["error"]
    assert "failed: accumulus compile: error: argument --engine" in capsys.readouterr().out
    assert str(out) not in bad["error"]


def test_ray_executor_without_ray_says_how_to_install(model_dir, monkeypatch, capsys):
    spec = write_spec(model_dir, 'grid = { "compile.max-pes" = [2] }', stages=("compile",))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["sweep", str(spec), "--out", str(model_dir / "o"), "--executor", "ray", "--quiet"]) == 2
    assert "needs the 'ray' package: pip install 'accumulus[ray]'" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--out", str(model_dir / "o"), "--address", "x:1"]) == 2
    assert "--address is for --executor ray" in capsys.readouterr().err


@pytest.mark.slow  # about 15-30 s: a local Ray instance and its workers start
def test_pool_and_local_ray_give_identical_results(model_dir):
    ray = require_module("ray")
    spec = write_spec(model_dir, GRID_2X2, stages=("compile",))
    pool_doc = sweep.run(spec, out=model_dir / "pool", workers=2, quiet=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray_doc = sweep.run(spec, out=model_dir / "ray", executor="ray", quiet=True)
        assert ray.is_initialized()  # the sweep used the caller's Ray and left it running
    finally:
        ray.shutdown()
    assert [e["status"] for e in pool_doc["points"]] == ["ok"] * 4
    assert (model_dir / "pool" / "results.json").read_text() == (model_dir / "ray" / "results.json").read_text()
    assert json.loads((model_dir / "ray" / "sweep.json").read_text())["executor"] == "ray"


def test_killed_sweep_resumes_only_unfinished_points(model_dir):
    spec = write_spec(model_dir, 'grid = { "compile.max-pes" = [2, 4, 16] }', stages=("compile",))
    out = model_dir / "out"
    argv = [str(REPO / ".venv" / "bin" / "accumulus") if (REPO / ".venv" / "bin" / "accumulus").exists()
            else "accumulus", "sweep", str(spec), "--out", str(out), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = [p.id for p in sweep.load(spec).points]
    finished = []
    deadline = time.monotonic() + 120
    try:
        while not finished and time.monotonic() < deadline and proc.poll() is None:
            finished = [i for i in ids if (json.loads((out / "points" / i / "point.json").read_text())
                                           if (out / "points" / i / "point.json").exists() else {}).get("status") == "ok"]
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, as a kill -9 of the job would
        proc.wait()
    assert finished, "no point finished before the deadline"
    time.sleep(0.2)
    done = {i for i in ids if (out / "points" / i / "point.json").exists()
            and json.loads((out / "points" / i / "point.json").read_text()).get("status") == "ok"}
    assert done and len(done) < len(ids), f"kill came too late to test resuming ({len(done)} of {len(ids)} done)"
    before = {i: (out / "points" / i / "flow.json").read_text() for i in done}

    doc = sweep.run(spec, out=out, workers=1, quiet=True)
    assert [e["status"] for e in doc["points"]] == ["ok"] * len(ids)
    log = json.loads((out / "sweep.json").read_text())
    assert {i for i, v in log["points"].items() if v["cached"]} == done
    assert log["points_run"] == len(ids) - len(done)
    for i in ids:
        rec = json.loads((out / "points" / i / "point.json").read_text())
        if i in done:  # not rerun: one attempt, flow.json untouched
            assert rec["attempts"] == 1
            assert (out / "points" / i / "flow.json").read_text() == before[i]
        else:
            assert rec["attempts"] in (1, 2)  # 2 for the point the kill interrupted
    fresh = sweep.run(spec, out=model_dir / "fresh", workers=1, quiet=True)
    assert doc["points"] == fresh["points"]  # a resumed sweep's results are those of an uninterrupted one


@pytest.mark.slow
def test_trained_2x2_grid_pool_and_ray_identical(tmp_path):
    """digits-mlp, tiny training: P x width multiplier through train/export/compile/report."""
    ray = require_module("ray")
    spec = tmp_path / "s.toml"
    spec.write_text("""
[flow]
stages = ["train", "export", "compile", "report"]
[train]
preset = "digits-mlp"
epochs = 1
limit = 300
no-float-baseline = true
quiet = true
[compile]
board = "icebreaker"
quiet = true
[report]
board = "icebreaker"
estimate-only = true
policies = ["exact"]
[sweep]
grid = { "train.acc-bits" = [12, 16], "train.width-mult" = [1, 0.5] }
""")
    pool_doc = sweep.run(spec, out=tmp_path / "pool", workers=2, quiet=True)
    ray_doc = sweep.run(spec, out=tmp_path / "ray", executor="ray", workers=2, quiet=True)
    assert not ray.is_initialized()  # the sweep shut down the Ray instance it started
    assert [e["status"] for e in pool_doc["points"]] == ["ok"] * 4
    assert (tmp_path / "pool" / "results.json").read_text() == (tmp_path / "ray" / "results.json").read_text()
    for e in pool_doc["points"]:
        train = json.loads((tmp_path / "pool" / e["dir"] / "train.json").read_text())
        assert train["config"]["acc_bits"] == e["options"]["train.acc-bits"]
        assert train["config"]["width_mult"] == e["options"]["train.width-mult"]
        assert e["figures"]["accuracy"] == train["test_accuracy"]
    hidden = {e["options"]["train.width-mult"]: e["figures"]["lut"] for e in pool_doc["points"]
              if e["options"]["train.acc-bits"] == 12}
    assert hidden[0.5] < hidden[1]


def test_shipped_examples_load():
    assert len(sweep.load(REPO / "examples" / "sweep.toml").points) == 15
    demo = sweep.load(REPO / "benchmarks" / "sweep_digits_mlp.toml")
    assert len(demo.points) == 24 and demo.stages == ["train", "export", "compile", "report"]


def test_flow_stages_table_limits_the_flow(model_dir):
    from accumulus import flow

    out = model_dir / "proj"
    ran = flow.run({"flow": {"stages": ["compile", "report"]}, "compile": {"quiet": True},
                    "report": {"board": "icebreaker", "estimate-only": True, "policies": ["exact"]}},
                   out=out, model=model_dir / "user.onnx", log=lambda *_: None)
    assert [r["stage"] for r in ran] == ["compile", "report"]
    assert (out / "reports" / "report.json").exists() and not (out / "rtl").exists()
    with pytest.raises(UserError, match=r"\[flow\] stages: unknown stage\(s\) \['synth'\]"):
        flow.run({"flow": {"stages": ["synth"]}}, out=out, model=model_dir / "user.onnx")
