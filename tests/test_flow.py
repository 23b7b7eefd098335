"""accumulus flow: stages chained through the project folder, skipping, errors across stages."""
from __future__ import annotations

import json

import pytest

from accumulus import flow
from accumulus.cli import main
from accumulus.errors import UserError

import compiler_graphs  # tests/compiler_graphs.py: hand-built QONNX graphs


@pytest.fixture
def user_model(tmp_path):
    model, _ = compiler_graphs.mlp(widths=(64, 16, 10), seed=3, final_argmax=True)
    return compiler_graphs.save(model, tmp_path / "user.onnx")


def test_model_flow_compiles_builds_then_skips_unchanged(tmp_path, user_model, capsys):
    out = tmp_path / "proj"
    assert main(["flow", "--model", str(user_model), "--out", str(out), "--to", "build"]) == 0
    first = capsys.readouterr().out
    assert (out / "plan.json").exists() and (out / "rtl" / "accumulus_top.v").exists()
    assert "skipped" not in first
    state = json.loads((out / "flow.json").read_text())
    assert {"compile", "build"} <= set(state)

    assert main(["flow", "--model", str(user_model), "--out", str(out), "--to", "build"]) == 0
    second = capsys.readouterr().out
    assert "[compile] skipped" in second and "[build] skipped" in second

    # a changed option re-runs the stage it belongs to and what follows it, not what precedes it
    results = flow.run({"compile": {"board": "icebreaker"}, "build": {"acc-policy": "datatype"}},
                       out=out, model=user_model, to_stage="build", log=lambda *_: None)
    assert [r["skipped"] for r in results] == [True, False]
    built = json.loads((out / "rtl" / "build.json").read_text())
    assert built["acc_policy"] == "datatype"


def test_changed_artifact_reruns_stage(tmp_path, user_model):
    out = tmp_path / "proj"
    flow.run(out=out, model=user_model, to_stage="compile", log=lambda *_: None)
    (out / "plan.json").write_text((out / "plan.json").read_text().replace('"format_version": 1', '"format_version":1'))
    results = flow.run(out=out, model=user_model, to_stage="compile", log=lambda *_: None)
    assert results[0]["skipped"] is False  # an edited output is not trusted


def test_missing_artifact_names_the_stage_that_makes_it(tmp_path):
    with pytest.raises(UserError, match=r"plan.json is missing: it is made by the 'compile' stage"):
        flow.build(tmp_path)


def test_bad_stage_name_and_config(tmp_path, capsys):
    assert main(["flow", "--out", str(tmp_path), "--from", "synth"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    cfg = tmp_path / "flow.toml"
    cfg.write_text("[compiel]\nboard = 'icebreaker'\n")
    assert main(["flow", "--config", str(cfg), "--out", str(tmp_path)]) == 2
    assert "unknown table" in capsys.readouterr().err
