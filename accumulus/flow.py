"""The end-to-end flow: train -> export -> compile -> build -> sim -> report.

Each stage is the CLI command of the same name, run in-process with the options of its
``flow.toml`` table, so the flow, the Python API and the CLI can never disagree. A stage
is skipped when the content hashes of its inputs, its options and its outputs are those
recorded after its last successful run (``DIR/flow.json``); an interrupted flow resumes
at the first stage that did not finish.

Python API::

    from accumulus import flow
    flow.run({"train": {"preset": "digits-mlp"}, "report": {"board": "icebreaker"}}, out="build/x")
    flow.compile("build/x", **{"max-pes": 16})     # one stage, options as on the CLI
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from accumulus.errors import UserError

STAGES = ("train", "export", "compile", "build", "sim", "report")


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]      # files/folders in DIR this stage reads (made by earlier stages)
    outputs: tuple[str, ...]     # files/folders in DIR this stage writes
    made_by: dict                # input artifact -> the stage that makes it


_ART = {
    "model.pt": "train", "model.onnx": "export", "plan.json": "compile", "plan.npz": "compile",
    "rtl": "build", "sim/results.json": "sim", "reports/report.json": "report",
}

STAGE_TABLE = {
    "train": Stage("train", (), ("model.pt", "train.json"), _ART),
    "export": Stage("export", ("model.pt",), ("model.onnx",), _ART),
    "compile": Stage("compile", ("model.onnx",), ("plan.json", "plan.npz"), _ART),
    "build": Stage("build", ("plan.json", "plan.npz"), ("rtl",), _ART),
    "sim": Stage("sim", ("plan.json", "plan.npz", "rtl"), ("sim/results.json",), _ART),
    "report": Stage("report", ("plan.json", "plan.npz"), ("reports/report.json",), _ART),
}

# The built-in example `make demo` runs: digits-mlp, A2Q+ at P=12, for the iCEBreaker.
DEFAULT_CONFIG: dict = {
    "train": {"preset": "digits-mlp", "epochs": 10, "seed": 0},
    "export": {"format": "qonnx"},
    "compile": {"board": "icebreaker"},
    "build": {"acc-policy": "exact"},
    "sim": {"frames": 100, "backpressure": 0.2, "seed": 0},
    "report": {"board": "icebreaker"},
}


def load_config(path: str | Path | None) -> dict:
    """Read ``flow.toml`` (one table per stage); missing stages take the defaults."""
    config = {k: dict(v) for k, v in DEFAULT_CONFIG.items()}
    if path is None:
        return config
    path = Path(path)
    try:
        user = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    return merge_config(user, path)


def merge_config(user: dict, source: str | Path = "config") -> dict:
    """The default config updated by ``user``'s tables (as read from a flow.toml at ``source``)."""
    config = {k: dict(v) for k, v in DEFAULT_CONFIG.items()}
    unknown = sorted(set(user) - set(STAGES) - {"flow"})
    if unknown:
        raise UserError(f"{source}: unknown table(s) {unknown}; tables are {list(STAGES)} (and [flow])")
    for stage, table in user.items():
        if not isinstance(table, dict):
            raise UserError(f"{source}: '{stage}' must be a table ([{stage}]) of that command's options")
        config.setdefault(stage, {}).update(table)
    return config


def _argv(stage: str, out: Path, options: dict) -> list[str]:
    """CLI arguments for one stage; keys are the command's long options (dashes or underscores)."""
    positional = {"train": [], "export": [str(out)], "build": [str(out)], "sim": [str(out)],
                  "report": [str(out)], "compile": [str(out / "model.onnx")]}[stage]
    argv = [stage] + positional
    if stage in ("train", "compile"):
        argv += ["--out", str(out)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is False or value is None:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _hash_path(path: Path, h) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                h.update(p.read_bytes())
    elif path.is_file():
        h.update(path.read_bytes())
    else:
        h.update(b"<missing>")


def _digest(out: Path, names, options: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(options, sort_keys=True).encode())
    for name in names:
        h.update(name.encode())
        _hash_path(out / name, h)
    return h.hexdigest()


def is_current(stage: str, out: str | Path, options: dict | None = None) -> bool:
    """True when ``stage`` finished in ``out`` with these options and neither its inputs nor its
    outputs changed since: the test by which the flow skips a stage."""
    out = Path(out)
    spec = STAGE_TABLE[stage]
    state_path = out / "flow.json"
    if not state_path.exists() or any(not (out / name).exists() for name in spec.inputs):
        return False
    prev = json.loads(state_path.read_text()).get(stage)
    return bool(prev and prev.get("inputs") == _digest(out, spec.inputs, dict(options or {}))
                and prev.get("outputs") == _digest(out, spec.outputs, {}))


def select_stages(config: dict | None = None, model=None, from_stage: str | None = None,
                  to_stage: str | None = None) -> list[str]:
    """The stages a run executes, in order: all, or ``[flow] stages``, trimmed by ``model``
    (no train/export), ``from_stage`` and ``to_stage``."""
    stages = list(STAGES)
    chosen = ((config or {}).get("flow") or {}).get("stages")
    if chosen is not None:
        if isinstance(chosen, str) or not isinstance(chosen, list):
            raise UserError(f"[flow] stages must be a list of stage names, e.g. {list(STAGES[:3])}; got {chosen!r}")
        unknown = [s for s in chosen if s not in STAGES]
        if unknown:
            raise UserError(f"[flow] stages: unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
        stages = [s for s in STAGES if s in chosen]
    if model is not None:
        stages = [s for s in stages if STAGES.index(s) >= STAGES.index("compile")]
    for name, what in (("from", from_stage), ("to", to_stage)):
        if what is not None and what not in STAGES:
            raise UserError(f"--{name} {what}: unknown stage; stages are {', '.join(STAGES)}")
    if from_stage:
        stages = [s for s in stages if STAGES.index(s) >= STAGES.index(from_stage)]
    if to_stage:
        stages = [s for s in stages if STAGES.index(s) <= STAGES.index(to_stage)]
    return stages


def run_stage(stage: str, out: str | Path, options: dict | None = None, force: bool = False, log=print) -> dict:
    """Run one stage in ``out`` unless its inputs, options and outputs are unchanged."""
    from accumulus.cli import main as cli_main

    out = Path(out)
    spec = STAGE_TABLE[stage]
    options = dict(options or {})
    for name in spec.inputs:
        if not (out / name).exists():
            maker = spec.made_by.get(name, "?")
            raise UserError(
                f"{out / name} is missing: it is made by the '{maker}' stage; run "
                f"'accumulus flow --out {out} --from {maker}' (or 'accumulus {maker} ...')"
            )
    state_path = out / "flow.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    key_in = _digest(out, spec.inputs, options)
    prev = state.get(stage)
    if not force and is_current(stage, out, options):
        log(f"[{stage}] skipped: inputs, options and outputs unchanged since {prev['finished']}")
        return {"stage": stage, "skipped": True, "seconds": 0.0}
    argv = _argv(stage, out, options)
    if stage == "train" and state.get("train_started") == key_in and (out / "model.pt").exists():
        argv.append("--resume")  # the same training was interrupted: continue from its checkpoint
    state[f"{stage}_started"] = key_in
    state_path.write_text(json.dumps(state, indent=1) + "\n")
    log(f"[{stage}] accumulus {' '.join(argv)}")
    t0 = time.monotonic()
    code = cli_main(argv)
    seconds = time.monotonic() - t0
    if code != 0:
        raise UserError(f"stage '{stage}' failed (exit code {code}); see the messages above")
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    state[stage] = {"inputs": key_in, "outputs": _digest(out, spec.outputs, {}),
                    "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    state_path.write_text(json.dumps(state, indent=1) + "\n")
    log(f"[{stage}] done in {seconds:.1f} s")
    return {"stage": stage, "skipped": False, "seconds": seconds}


def run(config: dict | None = None, out: str | Path = "build/flow", model: str | Path | None = None,
        from_stage: str | None = None, to_stage: str | None = None, force: bool = False, log=print,
        on_stage=None) -> list[dict]:
    """Run the flow; ``model`` starts from a user's ONNX graph (no training, no torch).

    ``config["flow"]["stages"]`` (``[flow] stages = [...]`` in flow.toml) limits the run to
    those stages, e.g. without build and sim when only the report's estimates are wanted.
    ``on_stage(i, n, stage)`` is called before each of the ``n`` stages (progress bars).
    """
    config = config if config is not None else load_config(None)
    out = Path(out)
    stages = select_stages(config, model, from_stage, to_stage)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model = Path(model)
        if not model.is_file():
            raise UserError(f"--model {model}: file not found")
        target = out / "model.onnx"
        if not target.exists() or target.resolve() != model.resolve():
            if not target.exists() or target.read_bytes() != model.read_bytes():
                shutil.copyfile(model, target)
    results = []
    for i, stage in enumerate(stages, 1):
        if on_stage is not None:
            on_stage(i - 1, len(stages), stage)
        log(f"== stage {i}/{len(stages)}: {stage}")
        results.append(run_stage(stage, out, config.get(stage, {}), force=force, log=log))
    return results


def _stage_function(stage: str):
    def fn(out: str | Path, force: bool = False, **options) -> dict:
        return run_stage(stage, out, options, force=force)

    fn.__name__ = stage
    fn.__doc__ = f"Run the '{stage}' stage in ``out`` with the options of 'accumulus {stage}'."
    return fn


train = _stage_function("train")
export = _stage_function("export")
compile = _stage_function("compile")  # noqa: A001 - mirrors the CLI command
build = _stage_function("build")
sim = _stage_function("sim")
report = _stage_function("report")


def summary(out: str | Path) -> str:
    """A short, human summary of what the flow made in ``out``."""
    from accumulus.compiler.frontend.mls_load import is_mls_plan
    from accumulus.summary import summarize

    if is_mls_plan(out):
        return _mls_summary(Path(out))
    return summarize(Path(out))


def _mls_summary(out: Path) -> str:
    """:func:`summary` of a project whose plan is an MLS plan (docs/mls.md)."""
    from accumulus.compiler.frontend.mls_load import MLSPlan, cost_estimate

    def load(p):
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    lines = [f"accumulus flow: {out}"]
    train = load(out / "train.json")
    if train:
        def acc(v):
            return f"{v:.3f}" if isinstance(v, (int, float)) else "?"

        lines.append(f"  accuracy      float {acc(train.get('float_test_accuracy'))}  quantized "
                     f"{acc(train.get('test_accuracy'))}  "
                     f"(mls {train.get('config', {}).get('mls')})")
    lines.append("  MLS layers (accumulator bits, cycles of one G-lane engine):")
    for r in cost_estimate(MLSPlan.load(out)):
        lines.append(f"    {r['layer']:<12} {r['kind']:<11} {r['format']:<13} group {r['group_acc_bits']:>3}  "
                     f"dot {r['dot_acc_bits']:>3}  act {r['act_bits']:>3}  cycles {r['cycles']}")
    sim = load(out / "sim" / "results.json")
    if sim:
        verdict = "bit-exact" if sim.get("passed") else f"FAILED ({sim.get('mismatches')} mismatching elements)"
        lines.append(f"  co-simulation {sim.get('simulator')}: {sim.get('frames')} frames {verdict}, back-pressure "
                     f"{sim.get('backpressure')}; {sim.get('cycles_per_frame')} cycles/frame "
                     f"(build estimate {sim.get('cycles_per_frame_estimate')})")
    lines.append("  artifacts:")
    for name, what in (("model.onnx", "MLS ONNX model"), ("plan.json", "MLS plan (+ plan.npz)"),
                       ("rtl/accumulus_top.v", "Verilog top"), ("rtl/build.json", "build description"),
                       ("sim/results.json", "co-simulation results"), ("reports/report.md", "cost estimate")):
        if (out / name).exists():
            lines.append(f"    {what:<22} {out / name}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use 'accumulus flow'")
