"""Bad input on the command line: one 'error:' line naming the path or value, exit 2, no traceback.

Each case runs the real entry point (``accumulus.cli.main``) on inputs a new user gets wrong:
an --out that is a file, arrays numpy cannot or should not load, a model file where a project
folder belongs, out-of-range option values. The bad files are made in a temporary folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import compiler_graphs as cg
from accumulus.cli import main


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: a compiled project, a model, and every kind of bad file, made once."""
    d = tmp_path_factory.mktemp("cli")
    model, _ = cg.mlp(widths=(64, 16, 10), seed=3, final_argmax=True)
    cg.save(model, d / "m.onnx")
    assert main(["compile", str(d / "m.onnx"), "--out", str(d / "proj"), "--quiet"]) == 0
    (d / "file.onnx").write_bytes(b"not a folder")          # a file where a folder belongs
    (d / "notes.txt").write_text("not a project\n")
    (d / "dir").mkdir()                                      # a folder where a file belongs
    (d / "dir.npy").mkdir()
    (d / "m_trunc.onnx").write_bytes((d / "m.onnx").read_bytes()[:100])
    (d / "garbage.onnx").write_bytes(b"\x00\xffgarbage" * 10)
    (d / "text.npy").write_text("1 2 3\n")
    np.save(d / "x.npy", np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8)).astype(np.float32))
    np.save(d / "empty.npy", np.zeros((0, 64)))
    np.save(d / "empty4.npy", np.zeros((0, 1, 8, 8), np.float32))
    np.save(d / "scalar.npy", np.float32(1.0))
    np.save(d / "strings.npy", np.array(["a", "b"]))
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(d / "bools.npy", np.ones((2, 1, 8, 8), bool))
    np.save(d / "wrong.npy", np.zeros((3, 5), np.float32))
    nan = np.zeros((2, 1, 8, 8), np.float32)
    nan[1, 0, 2, 5] = np.nan
    np.save(d / "nan.npy", nan)
    (d / "x_trunc.npy").write_bytes((d / "x.npy").read_bytes()[:90])
    np.savez(d / "arrays.npz", x=np.zeros((2, 1, 8, 8)))
    (d / "noplan").mkdir()
    for name, edit in (("badjson", lambda p: (p / "plan.json").write_text('{"format_version":')),
                       ("plandir", lambda p: ((p / "plan.json").unlink(), (p / "plan.json").mkdir())),
                       ("badnpz", lambda p: (p / "plan.npz").write_bytes(b"junk")),
                       ("binaryjson", lambda p: (p / "plan.json").write_bytes(b"\x00\xe3\x81 binary"))):
        p = d / name
        p.mkdir()
        for f in ("plan.json", "plan.npz"):
            (p / f).write_bytes((d / "proj" / f).read_bytes())
        edit(p)
    (d / "badrtl" / "rtl").mkdir(parents=True)
    for f in ("plan.json", "plan.npz"):
        (d / "badrtl" / f).write_bytes((d / "proj" / f).read_bytes())
    (d / "badrtl" / "rtl" / "build.json").write_text("{")
    (d / "board.json").mkdir()
    (d / "flow.toml").mkdir()
    return d


# (id, argv, text the one error line must contain); {d} is the workspace folder
CASES = [
    # precision: a missing project, a mismatch target outside (0, 1)
    ("precision-missing-dir", "precision {d}/nothing --mismatch 0.01", "project folder {d}/nothing does not exist"),
    ("precision-bad-mismatch", "precision {d}/proj --mismatch 2", "--mismatch must be in (0, 1), got 2.0"),
    # --out naming an existing file, or below one
    ("train-out-file", "train --out {d}/file.onnx --epochs 1", "--out {d}/file.onnx is a file, not a folder"),
    ("train-out-parent-file", "train --out {d}/file.onnx/sub --epochs 1", "{d}/file.onnx is a file, not a folder"),
    ("export-out-file", "export {d}/proj --out {d}/file.onnx", "--out {d}/file.onnx is a file, not a folder"),
    ("compile-out-file", "compile {d}/m.onnx --out {d}/file.onnx", "--out {d}/file.onnx is a file, not a folder"),
    ("compile-out-parent-file", "compile {d}/m.onnx --out {d}/file.onnx/p", "{d}/file.onnx is a file, not a folder"),
    ("build-out-file", "build {d}/proj --out {d}/file.onnx", "--out {d}/file.onnx is a file, not a folder"),
    ("build-out-parent-file", "build {d}/proj --out {d}/file.onnx/b", "{d}/file.onnx is a file, not a folder"),
    ("sim-out-file", "sim {d}/proj --out {d}/file.onnx", "--out {d}/file.onnx is a file, not a folder"),
    ("sim-out-parent-file", "sim {d}/proj --out {d}/file.onnx/s", "{d}/file.onnx is a file, not a folder"),
    ("report-out-file", "report {d}/proj --board icebreaker --estimate-only --out {d}/file.onnx",
     "--out {d}/file.onnx is a file, not a folder"),
    ("bitstream-out-file", "bitstream {d}/proj --board icebreaker --out {d}/file.onnx",
     "--out {d}/file.onnx is a file, not a folder"),
    ("flow-out-file", "flow --model {d}/m.onnx --out {d}/file.onnx", "--out {d}/file.onnx is a file, not a folder"),
    # predict: outputs
    ("predict-output-missing-folder", "predict {d}/proj --input {d}/x.npy --output {d}/nodir/y.npy",
     "folder {d}/nodir does not exist"),
    ("predict-output-under-file", "predict {d}/proj --input {d}/x.npy --output {d}/file.onnx/y.npy",
     "{d}/file.onnx is a file, not a folder"),
    ("predict-output-is-folder", "predict {d}/proj --input {d}/x.npy --output {d}/dir.npy/",
     "--output {d}/dir.npy is a folder"),
    ("predict-codes-missing-folder", "predict {d}/proj --input {d}/x.npy --output {d}/y.npy --codes {d}/nodir/c.npz",
     "--codes {d}/nodir/c.npz: folder {d}/nodir does not exist"),
    # predict: inputs
    ("predict-empty", "predict {d}/proj --input {d}/empty.npy --output {d}/y.npy", "{d}/empty.npy is empty (shape (0, 64))"),
    ("predict-empty-right-shape", "predict {d}/proj --input {d}/empty4.npy --output {d}/y.npy",
     "{d}/empty4.npy is empty (shape (0, 1, 8, 8))"),
    ("predict-scalar", "predict {d}/proj --input {d}/scalar.npy --output {d}/y.npy", "{d}/scalar.npy is empty (shape ())"),
    ("predict-strings", "predict {d}/proj --input {d}/strings.npy --output {d}/y.npy", "{d}/strings.npy has dtype <U1"),
    ("predict-objects", "predict {d}/proj --input {d}/objects.npy --output {d}/y.npy",
     "{d}/objects.npy holds Python objects"),
    ("predict-bools", "predict {d}/proj --input {d}/bools.npy --output {d}/y.npy", "{d}/bools.npy has dtype bool"),
    ("predict-nan", "predict {d}/proj --input {d}/nan.npy --output {d}/y.npy", "{d}/nan.npy contains NaN (first at index (1, 0, 2, 5))"),
    ("predict-wrong-shape", "predict {d}/proj --input {d}/wrong.npy --output {d}/y.npy",
     "{d}/wrong.npy has shape (3, 5); the model expects (B, 1, 8, 8)"),
    ("predict-not-npy", "predict {d}/proj --input {d}/text.npy --output {d}/y.npy", "{d}/text.npy is not a .npy file"),
    ("predict-npz", "predict {d}/proj --input {d}/arrays.npz --output {d}/y.npy", "{d}/arrays.npz is an .npz archive"),
    ("predict-truncated-npy", "predict {d}/proj --input {d}/x_trunc.npy --output {d}/y.npy",
     "--input {d}/x_trunc.npy: not a readable .npy array"),
    ("predict-missing-input", "predict {d}/proj --input {d}/missing.npy --output {d}/y.npy",
     "--input {d}/missing.npy: no such file"),
    ("predict-input-folder", "predict {d}/proj --input {d}/dir --output {d}/y.npy", "--input {d}/dir is a folder"),
    # project folders
    ("predict-missing-project", "predict {d}/nothere --input {d}/x.npy --output {d}/y.npy",
     "{d}/nothere: no such project folder"),
    ("predict-onnx-as-project", "predict {d}/m.onnx --input {d}/x.npy --output {d}/y.npy",
     "{d}/m.onnx is an ONNX model, not a project folder"),
    ("build-file-as-project", "build {d}/notes.txt", "{d}/notes.txt is a file, not a project folder"),
    ("build-no-plan", "build {d}/noplan", "{d}/noplan/plan.json not found"),
    ("build-plan-json-folder", "build {d}/plandir", "{d}/plandir/plan.json is a folder, not a plan"),
    ("build-bad-json", "build {d}/badjson", "{d}/badjson/plan.json: not a readable JSON plan"),
    ("build-binary-json", "build {d}/binaryjson", "{d}/binaryjson/plan.json: not a readable plan"),
    ("build-bad-npz", "build {d}/badnpz", "{d}/badnpz/plan.npz is not an .npz archive"),
    ("sim-no-plan", "sim {d}/noplan", "{d}/noplan/plan.json not found"),
    ("sim-missing-project", "sim {d}/nothere", "{d}/nothere: no such project folder"),
    ("report-no-plan", "report {d}/noplan --board icebreaker --estimate-only", "{d}/noplan/plan.json not found"),
    ("report-file-as-project", "report {d}/notes.txt --board icebreaker --estimate-only",
     "{d}/notes.txt is a file, not a project folder"),
    ("bitstream-bad-build-json", "bitstream {d}/badrtl --board icebreaker", "{d}/badrtl/rtl/build.json: not a readable"),
    ("sim-bad-build-json", "sim {d}/badrtl", "{d}/badrtl/rtl/build.json is not valid JSON"),
    ("bitstream-missing-project", "bitstream {d}/nothere --board icebreaker", "{d}/nothere: no such project folder"),
    ("widths-plan-json-folder", "widths {d}/plandir", "{d}/plandir/plan.json is a folder"),
    ("export-missing-project", "export {d}/nothere", "{d}/nothere: no such project folder"),
    ("export-file-as-project", "export {d}/notes.txt", "{d}/notes.txt is a file, not a project folder"),
    ("check-missing-plan", "check {d}/m.onnx --plan {d}/nothere", "--plan {d}/nothere: no such project folder"),
    # models
    ("compile-missing-model", "compile {d}/missing.onnx --out {d}/o", "{d}/missing.onnx: no such file"),
    ("compile-truncated-model", "compile {d}/m_trunc.onnx --out {d}/o", "{d}/m_trunc.onnx: not a readable ONNX model"),
    ("compile-garbage-model", "compile {d}/garbage.onnx --out {d}/o", "{d}/garbage.onnx: not a readable ONNX model"),
    ("compile-folder-model", "compile {d}/dir --out {d}/o", "{d}/dir is a folder without model.onnx"),
    ("check-truncated-model-with-plan", "check {d}/m_trunc.onnx --plan {d}/proj",
     "{d}/m_trunc.onnx: not a readable ONNX model"),
    ("check-missing-model-with-plan", "check {d}/missing.onnx --plan {d}/proj", "{d}/missing.onnx: no such file"),
    ("widths-garbage-model", "widths {d}/garbage.onnx", "{d}/garbage.onnx: not a readable ONNX model"),
    ("flow-missing-model", "flow --model {d}/missing.onnx --out {d}/f", "--model {d}/missing.onnx: no such file"),
    ("flow-config-folder", "flow --config {d}/flow.toml --out {d}/f", "--config {d}/flow.toml is a folder"),
    # other array inputs
    ("compile-calib-strings", "compile {d}/m.onnx --out {d}/o --calib {d}/strings.npy", "--calib {d}/strings.npy has dtype"),
    ("compile-calib-objects", "compile {d}/m.onnx --out {d}/o --calib {d}/objects.npy", "--calib {d}/objects.npy holds Python objects"),
    ("compile-calib-empty", "compile {d}/m.onnx --out {d}/o --calib {d}/empty.npy", "--calib {d}/empty.npy is empty"),
    ("compile-calib-shape", "compile {d}/m.onnx --out {d}/o --calib {d}/wrong.npy", "--calib {d}/wrong.npy has shape (3, 5)"),
    ("compile-bind-not-npy", "compile {d}/m.onnx --out {d}/o --bind x={d}/text.npy", "--bind x={d}/text.npy is not a .npy file"),
    ("compile-bind-folder", "compile {d}/m.onnx --out {d}/o --bind x={d}/dir", "--bind x={d}/dir is a folder"),
    ("compile-bind-no-name", "compile {d}/m.onnx --out {d}/o --bind {d}/x.npy", "--bind '{d}/x.npy': expected NAME=FILE.npy"),
    ("check-input-empty", "check {d}/m.onnx --input {d}/empty4.npy", "--input {d}/empty4.npy is empty"),
    ("check-input-objects", "check {d}/m.onnx --input {d}/objects.npy", "--input {d}/objects.npy holds Python objects"),
    ("sim-stimulus-empty", "sim {d}/proj --stimulus {d}/empty.npy", "--stimulus {d}/empty.npy is empty"),
    ("sim-stimulus-not-npy", "sim {d}/proj --stimulus {d}/text.npy", "--stimulus {d}/text.npy is not a .npy file"),
    ("sim-stimulus-unknown", "sim {d}/proj --stimulus worstcase", "--stimulus worstcase: expected test, worst"),
    ("train-dataset-npy", "train --out {d}/t --dataset {d}/x.npy", "--dataset {d}/x.npy is a single .npy array"),
    ("train-dataset-folder", "train --out {d}/t --dataset {d}/dir", "--dataset {d}/dir is a folder"),
    # option values
    ("check-negative-samples", "check {d}/m.onnx --samples -3", "--samples -3"),
    ("compile-bad-input-type", "compile {d}/m.onnx --out {d}/o --input-type int8x", "--input-type 'int8x'"),
    ("check-bad-input-type", "check {d}/m.onnx --input-type fixed<3>", "--input-type 'fixed<3>'"),
    ("compile-nan-fps", "compile {d}/m.onnx --out {d}/o --target-fps nan --clock-mhz 100", "--target-fps nan"),
    ("compile-negative-clock", "compile {d}/m.onnx --out {d}/o --target-fps 100 --clock-mhz -2", "--clock-mhz -2.0"),
    ("compile-negative-max-pes", "compile {d}/m.onnx --out {d}/o --max-pes -1", "--max-pes -1"),
    ("compile-board-path", "compile {d}/m.onnx --out {d}/o --board ../x", "--board '../x'"),
    ("report-unknown-board", "report {d}/proj --board icebreakr --estimate-only", "unknown board 'icebreakr'"),
    ("report-board-json-folder", "report {d}/proj --board {d}/board.json --estimate-only", "{d}/board.json"),
    ("bitstream-unknown-board", "bitstream {d}/proj --board icebreakr", "invalid choice: 'icebreakr'"),
    ("bitstream-bad-policy", "bitstream {d}/proj --board icebreaker --acc-policy wide", "'wide'"),
    ("build-bad-policy", "build {d}/proj --acc-policy fixed:-3", "'fixed:-3'"),
    ("report-bad-policy", "report {d}/proj --board icebreaker --estimate-only --policies exact,fixd:8", "'fixd:8'"),
    ("report-zero-jobs", "report {d}/proj --board icebreaker --jobs 0", "--jobs must be >= 1, got 0"),
    ("sim-negative-frames", "sim {d}/proj --frames -4", "--frames must be >= 1, got -4"),
    ("sim-negative-measure", "sim {d}/proj --measure-frames -2", "--measure-frames must be >= 0 (0 skips the cycles-per-frame measurement), got -2"),
    ("sim-negative-seed", "sim {d}/proj --seed -1", "--seed must be >= 0, got -1"),
    ("sim-backpressure", "sim {d}/proj --backpressure 1.5", "got 1.5"),
    ("sim-unknown-simulator", "sim {d}/proj --simulator modelsim", "'modelsim'"),
    ("train-negative-seed", "train --out {d}/t --seed -1", "--seed must be >= 0, got -1"),
    ("train-zero-limit", "train --out {d}/t --limit 0", "--limit must be >= 1 (rows of each split), got 0"),
    ("train-negative-lr", "train --out {d}/t --lr -0.1", "--lr must be a positive number, got -0.1"),
    ("train-bad-hidden", "train --out {d}/t --hidden 64,x", "'64,x'"),
    ("train-unknown-preset", "train --out {d}/t --preset digits", "unknown preset 'digits'"),
    ("compile-not-an-int", "compile {d}/m.onnx --out {d}/o --max-pes many", "'many'"),
    ("compile-missing-out", "compile {d}/m.onnx", "--out"),
    ("unknown-command", "compiel {d}/m.onnx", "'compiel'"),
    ("flow-unknown-stage", "flow --out {d}/f --to synth", "--to synth"),
    ("sweep-missing-spec", "sweep {d}/missing.toml --out {d}/s", "SWEEP.toml {d}/missing.toml: no such file"),
    ("sweep-spec-not-toml", "sweep {d}/notes.txt --out {d}/s", "{d}/notes.txt: not valid TOML"),
    ("sweep-unknown-executor", "sweep {d}/notes.txt --out {d}/s --executor dask", "'dask'"),
]


def run_cli(argv, capsys):
    """(exit code, non-empty stderr lines, stderr) of the real entry point."""
    try:
        code = main(argv)
    except SystemExit as exc:    # argparse exits on its own errors, as for any argparse program
        code = exc.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()], err


@pytest.mark.parametrize("argv, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(ws, capsys, argv, expect):
    args = [a.format(d=ws) for a in argv.split()]
    code, lines, err = run_cli(args, capsys)
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}, stderr {err!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err!r}"
    command = args[0] if args[0] in {m for m in ("train", "export", "compile", "check", "widths", "predict", "build",
                                                  "sim", "report", "bitstream", "flow", "precision", "sweep")} else None
    prefix = f"accumulus {command}: error: " if command else "accumulus: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert expect.format(d=ws) in lines[0], lines[0]


def test_cases_cover_every_command():
    from accumulus.cli import _command_modules

    names = {m.NAME for m in _command_modules()}
    covered = {c[1].split()[0] for c in CASES}
    assert names <= covered, f"commands without a bad-input case: {sorted(names - covered)}"


def test_nothing_written_for_bad_input(ws, capsys):
    """A refused command leaves no half-made output folder behind."""
    for argv in (f"report {ws}/nothere --board icebreaker --estimate-only", f"bitstream {ws}/nothere --board icebreaker",
                 f"compile {ws}/m_trunc.onnx --out {ws}/never", f"train --out {ws}/never --preset digits"):
        code, _, _ = run_cli(argv.split(), capsys)
        assert code == 2
    assert not (ws / "nothere").exists() and not (ws / "never").exists()


def test_permission_denied_creating_out(ws, capsys, monkeypatch):
    """Tests run as root here, where chmod does not stop a write: the refusal is injected."""
    real = Path.mkdir
    target = ws / "locked" / "out"

    def mkdir(self, *a, **k):
        if Path(self) == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, lines, err = run_cli(["build", str(ws / "proj"), "--out", str(target)], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert lines[0] == f"accumulus build: error: --out {target}: permission denied creating the folder; choose a " \
                       "folder you can write to"


def test_permission_denied_existing_out(ws, capsys, monkeypatch):
    target = ws / "readonly"
    target.mkdir(exist_ok=True)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == target else real(p, mode, **k))
    for argv in (["build", str(ws / "proj"), "--out", str(target)],
                 ["predict", str(ws / "proj"), "--input", str(ws / "x.npy"), "--output", str(target / "y.npy")]):
        code, lines, err = run_cli(argv, capsys)
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "permission denied" in lines[0] and str(target) in lines[0]
    assert not (target / "rtl").exists() and not (target / "y.npy").exists()


def test_good_input_still_works(ws, capsys):
    """The checks refuse only bad input: predict writes the golden model's output, with numpy's
    own suffix rule (np.save adds .npy) reported as the path actually written."""
    from accumulus.compiler import golden
    from accumulus.compiler.plan import Plan

    x = np.load(ws / "x.npy")
    code, _, err = run_cli(["predict", str(ws / "proj"), "--input", str(ws / "x.npy"), "--output", str(ws / "pred"),
                            "--codes", str(ws / "codes")], capsys)
    assert code == 0, err
    plan = Plan.load(ws / "proj")
    y = np.load(ws / "pred.npy")
    np.testing.assert_array_equal(y, golden.onnx_output(plan, golden.run_float(plan, x)))
    assert (ws / "codes.npz").is_file()
    model = onnx.load(ws / "m.onnx")
    ref = cg.qonnx_run(model, x, all_tensors=False)[model.graph.output[0].name]
    np.testing.assert_array_equal(y, ref)
    assert json.loads((ws / "proj" / "plan.json").read_text())["verification"]["ok"]
