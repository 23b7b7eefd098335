"""Design-space sweeps: many flow runs over a grid or a list of flow options.

A ``SWEEP.toml`` is a ``flow.toml`` (one table per stage, plus an optional ``[flow]``) and a
``[sweep]`` table::

    [sweep]
    grid = { "train.acc-bits" = [10, 12], "compile.engine" = ["rom", "const"] }   # cartesian product
    points = [ { "train.quant" = "int", "train.acc-bits" = 32 } ]                # and/or listed points

Each key is ``STAGE.OPTION`` (the command's long option, dashes or underscores); a key
``"compile.board+report.board"`` sets several options to the same value. Every point is one
:func:`accumulus.flow.run` in ``DIR/points/<id>/``, ``<id>`` a hash of the point's full
configuration, so the flow's own stage cache (``flow.json``) makes a rerun, or a restart
after a kill, skip every stage that already finished. A point whose run fails records its
error in ``point.json`` and the sweep goes on.

Executors: ``pool`` (local processes, ``spawn``ed so that every point starts in the same
clean interpreter) and ``ray`` (the same task on a Ray cluster; ``DIR`` must be on a file
system every node sees). Outputs: ``results.json`` (deterministic: options, status and
figures measured from each point's artifacts), ``results.csv``, ``report.md``,
``pareto-<board>.png``, and ``sweep.json`` (this run's executor and wall-clock times, kept
out of ``results.json`` so that two executors produce identical results).

Python API::

    from accumulus import sweep
    sweep.run("examples/sweep.toml", out="build/sweep", executor="pool", workers=2)
"""
from __future__ import annotations

import copy
import csv
import difflib
import hashlib
import io
import itertools
import json
import os
import sys
import time
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from accumulus.errors import UserError

EXECUTORS = ("pool", "ray")
# The stage options the sweep owns: every point's project folder is DIR/points/<id>.
_MANAGED = {"out", "help", "resume"}


@dataclass(frozen=True)
class Point:
    id: str
    options: dict           # the swept "STAGE.OPTION" keys -> value, in the order they were given
    config: dict            # the full flow config of this point


@dataclass
class Sweep:
    source: str
    base: dict                           # flow config shared by all points
    keys: list[str]                      # every swept key, in first-seen order
    points: list[Point] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    model: str | None = None             # [flow] model: a user's ONNX graph (no train/export)


# -- reading and checking SWEEP.toml ----------------------------------------------------------

def _stage_options() -> dict[str, set[str]]:
    """Long options (without ``--``) of every stage command, read from the CLI's own parser."""
    import argparse

    from accumulus.cli import build_parser
    from accumulus.flow import STAGES

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    names = {}
    for stage in STAGES:
        opts = set()
        for action in sub.choices[stage]._actions:
            opts.update(o[2:] for o in action.option_strings if o.startswith("--"))
        names[stage] = opts - _MANAGED
    return names


def _check_option(where: str, stage: str, option: str, allowed: dict[str, set[str]]) -> str:
    from accumulus.flow import STAGES

    if stage not in STAGES:
        hint = difflib.get_close_matches(stage, STAGES, n=1)
        raise UserError(f"{where}: unknown stage '{stage}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; keys are STAGE.OPTION with STAGE one of {', '.join(STAGES)}")
    name = option.replace("_", "-")
    if name in _MANAGED:
        raise UserError(f"{where}: --{name} is set by the sweep (each point runs in DIR/points/<id>); remove it")
    if name not in allowed[stage]:
        hint = difflib.get_close_matches(name, sorted(allowed[stage]), n=1)
        raise UserError(f"{where}: 'accumulus {stage}' has no option --{name}"
                        + (f" (did you mean --{hint[0]}?)" if hint else "")
                        + f"; see 'accumulus {stage} --help'")
    return name


def _split_key(where: str, key: str, allowed) -> list[tuple[str, str]]:
    if not isinstance(key, str) or not key:
        raise UserError(f"{where}: keys must be strings 'STAGE.OPTION', got {key!r}")
    targets = []
    for part in key.split("+"):
        part = part.strip()
        if "." not in part:
            raise UserError(f"{where}: key '{key}' must be STAGE.OPTION (e.g. 'train.acc-bits'), "
                            f"or several joined by '+' (e.g. 'compile.board+report.board')")
        stage, option = part.split(".", 1)
        targets.append((stage, _check_option(f"{where} key '{key}'", stage, option, allowed)))
    return targets


def _normalized(config: dict) -> dict:
    """Stage option keys with dashes, as on the command line (one spelling per option)."""
    return {stage: {k.replace("_", "-"): v for k, v in table.items()} if stage != "flow" else dict(table)
            for stage, table in config.items()}


def _point_id(config: dict, model_sha256: str | None = None) -> str:
    content = {k: v for k, v in config.items() if k != "flow"}
    if model_sha256:
        content["model"] = model_sha256
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def load(path: str | Path) -> Sweep:
    """Read and check ``SWEEP.toml``: every key, every value list, every point."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: sweep file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    return from_dict(doc, source=str(path))


def from_dict(doc: dict, source: str = "sweep") -> Sweep:
    """A :class:`Sweep` from the tables of a SWEEP.toml (``[sweep]`` plus flow tables)."""
    from accumulus.flow import merge_config, select_stages

    doc = dict(doc)
    spec = doc.pop("sweep", None)
    if not isinstance(spec, dict):
        raise UserError(f"{source}: no [sweep] table; add one with grid = {{ \"train.acc-bits\" = [10, 12] }} "
                        "and/or points = [ {{ ... }} ]")
    unknown = sorted(set(spec) - {"grid", "points"})
    if unknown:
        raise UserError(f"{source}: [sweep] has unknown key(s) {unknown}; it takes 'grid' and 'points'")
    merged = merge_config(doc, source)
    allowed = _stage_options()
    for stage, table in merged.items():
        if stage != "flow":
            for option in table:
                _check_option(f"{source}: [{stage}] key '{option}'", stage, option, allowed)
    base = _normalized(merged)
    model = base.get("flow", {}).get("model")
    model_sha = None
    if model is not None:
        path = Path(model)
        if not path.is_absolute() and source != "sweep":
            path = Path(source).parent / path
        if not path.is_file():
            raise UserError(f"{source}: [flow] model = {model!r}: file not found (a path relative to the sweep file)")
        model = str(path.resolve())
        model_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    unknown = sorted(set(base.get("flow", {})) - {"stages", "model"})
    if unknown:
        raise UserError(f"{source}: [flow] has unknown key(s) {unknown}; it takes 'stages' and 'model'")
    stages = select_stages(base, model)

    grid = spec.get("grid", {})
    listed = spec.get("points", [])
    if not isinstance(grid, dict):
        raise UserError(f"{source}: [sweep] grid must be a table of \"STAGE.OPTION\" = [values], got {grid!r}")
    if not isinstance(listed, list) or not all(isinstance(p, dict) for p in listed):
        raise UserError(f"{source}: [sweep] points must be a list of tables, e.g. points = [ {{ \"train.seed\" = 1 }} ]")
    if not grid and not listed:
        raise UserError(f"{source}: [sweep] has neither a grid nor points: nothing to sweep")
    targets = {}
    for key, values in grid.items():
        targets[key] = _split_key(f"{source}: [sweep] grid", key, allowed)
        if not isinstance(values, list) or not values:
            raise UserError(f"{source}: [sweep] grid '{key}' must be a non-empty list of values, got {values!r}")
    for i, p in enumerate(listed):
        for key in p:
            targets.setdefault(key, _split_key(f"{source}: [sweep] points[{i}]", key, allowed))

    for key, tgts in targets.items():
        idle = [st for st, _ in tgts if st not in stages]
        if idle:
            raise UserError(f"{source}: [sweep] key '{key}' sets the '{idle[0]}' stage, which this sweep does not run "
                            f"(stages: {', '.join(stages)}); add it to [flow] stages or drop the key")
    chosen = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else []
    chosen += [dict(p) for p in listed]
    sweep = Sweep(source=source, base=base, keys=list(targets), stages=stages, model=model)
    seen = set()
    for options in chosen:
        config = copy.deepcopy(base)
        for key, value in options.items():
            for stage, option in targets[key]:
                config.setdefault(stage, {})[option] = value
        pid = _point_id(config, model_sha)
        if pid not in seen:  # a listed point equal to a grid point runs once
            seen.add(pid)
            sweep.points.append(Point(pid, options, config))
    return sweep


# -- one point ---------------------------------------------------------------------------------

def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, doc) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)  # a kill never leaves a half-written record


def _error_line(text: str, exc: BaseException, point_dir: Path) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ": error:" in ln]
    msg = lines[-1] if lines else (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return msg.replace(str(point_dir), f"points/{point_dir.name}")


def run_point(task: dict) -> dict:
    """Run one point's flow in ``task["dir"]``; never raises for a failing flow (the error is
    recorded). The task is a plain dict so that a process pool and Ray ship it alike."""
    from accumulus import flow

    d = Path(task["dir"])
    d.mkdir(parents=True, exist_ok=True)
    rec_path = d / "point.json"
    prev = _load_json(rec_path) or {}
    rec = {"id": task["id"], "options": task["options"], "config": task["config"],
           "stages": task["stages"], "status": "running", "error": None,
           "attempts": int(prev.get("attempts", 0)) + 1}
    _write_json(rec_path, rec)
    current = {"stage": None}

    def on_stage(i, n, stage):
        current["stage"] = stage
        _write_json(d / "progress.json", {"done": i, "total": n, "stage": stage})

    t0 = time.monotonic()
    buf = io.StringIO()
    with open(d / "flow.log", "a") as logf:
        logf.write(f"--- attempt {rec['attempts']} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

        class Tee(io.TextIOBase):
            def write(self, s):
                logf.write(s)
                buf.write(s)
                return len(s)

            def flush(self):
                logf.flush()

        tee = Tee()
        with redirect_stdout(tee), redirect_stderr(tee):
            try:
                results = flow.run(task["config"], out=d, model=task.get("model"), on_stage=on_stage, log=print)
                rec["status"] = "ok"
                rec["ran"] = [r["stage"] for r in results if not r["skipped"]]
            except (Exception, SystemExit) as exc:  # a failing point must not stop the sweep
                rec["status"] = "failed"
                rec["failed_stage"] = current["stage"]
                rec["error"] = _error_line(buf.getvalue(), exc, d)
                print(f"point {task['id']}: {rec['error']}")
    _write_json(d / "progress.json", {"done": len(task["stages"]), "total": len(task["stages"]), "stage": None})
    rec["seconds"] = round(time.monotonic() - t0, 2)
    rec["figures"] = figures(d)
    _write_json(rec_path, rec)
    return {"id": task["id"], "status": rec["status"], "error": rec["error"], "seconds": rec["seconds"]}


def is_done(point_dir: Path, config: dict, stages: list[str]) -> bool:
    """A point is done when it finished ok and flow would skip every one of its stages."""
    from accumulus import flow

    rec = _load_json(point_dir / "point.json") or {}
    return (rec.get("status") == "ok" and rec.get("config") == config
            and all(flow.is_current(s, point_dir, config.get(s, {})) for s in stages))


# -- measured figures --------------------------------------------------------------------------

def _board_clock(board_id: str | None) -> float | None:
    if not board_id:
        return None
    try:
        from accumulus.boards.boards import load_board

        return load_board(board_id).clock_mhz
    except (UserError, OSError, ValueError, KeyError):
        return None


def figures(d: Path) -> dict:
    """Figures of merit read from the artifacts the flow wrote in ``d`` (None where a stage did not run).

    accuracy: train.json ``test_accuracy`` (the quantized model on the test split);
    lut/ff/dsp/bram_bits: Yosys totals of the report's first policy and variant when it
    synthesized, else the report's per-layer estimates summed, else plan.json's estimate
    (``cost_source`` says which); cycles_per_frame: co-simulation when sim ran, else the
    plan's FINN-style estimate (``cycles_source``); fps at the board clock (or
    ``compile --clock-mhz``).
    """
    f: dict = {}
    train = _load_json(d / "train.json")
    if train:
        f["accuracy"] = train.get("test_accuracy")
        f["float_accuracy"] = train.get("float_test_accuracy")
        f["sparsity"] = None if train.get("sparsity") is None else round(train["sparsity"], 6)
    plan = _load_json(d / "plan.json")
    rep = _load_json(d / "reports" / "report.json")
    sim = _load_json(d / "sim" / "results.json")
    board = None
    clock = None
    if plan:
        est = plan.get("estimate", {})
        opts = plan.get("options", {})
        board = opts.get("board")
        clock = opts.get("clock_mhz")
        cost = est.get("cost", {})
        f.update({f"plan_{k}": cost.get(k) for k in ("lut", "ff", "dsp", "bram_bits")})
        f["plan_cycles_per_frame"] = est.get("cycles_per_frame")
        f["mac_lanes"] = est.get("mac_lanes")
        f["const_layers"] = est.get("const_layers")
        f["engines"] = [layer.get("engine") for layer in plan.get("layers", []) if "engine" in layer]
        # per layer, the widest exact accumulator over its channels (compiler/accumulators.py)
        f["acc_bits"] = {layer["name"]: max(layer["acc"]["bits"]["exact"]) for layer in plan.get("layers", [])
                         if (layer.get("acc") or {}).get("bits", {}).get("exact")}
        f["lut"], f["ff"], f["dsp"], f["bram_bits"] = (f["plan_lut"], f["plan_ff"], f["plan_dsp"], f["plan_bram_bits"])
        f["cost_source"] = "plan-estimate"
        f["cycles_per_frame"] = f["plan_cycles_per_frame"]
        f["cycles_source"] = "plan-estimate"
    if rep:
        board = (rep.get("board") or {}).get("id") or board
        clock = clock or (rep.get("board") or {}).get("clock_mhz")
        pol = (rep.get("policies") or [None])[0]
        entry = (rep.get("policy") or {}).get(pol, {})
        synth = entry.get("synth") or {}
        var = next((v for v in rep.get("variants", []) if synth.get(v, {}).get("ok")), None)
        f["policy"] = pol
        if var:
            tot = synth[var]["total"]
            f.update({k: tot.get(k) for k in ("lut", "ff", "dsp", "bram_bits")})
            f["cost_source"] = f"yosys ({pol}, {var})"
            fits = synth[var].get("fits") or {}
            f["fits"] = all(v.get("fits", True) for v in fits.values()) if fits else None
        elif entry.get("estimate"):
            layers = entry["estimate"].values()
            f.update({k: round(sum(x.get(k, 0) for x in layers), 1) for k in ("lut", "ff", "dsp", "bram_bits")})
            f["cost_source"] = f"report-estimate ({pol})"
        pnr = entry.get("pnr") or {}
        f["fmax_mhz"] = pnr.get("fmax_mhz")
        if "fits" in pnr:
            f["fits"] = pnr["fits"]
    if sim and sim.get("cycles_per_frame"):
        f["cycles_per_frame"] = sim["cycles_per_frame"]
        f["cycles_source"] = "sim"
        f["sim_passed"] = sim.get("passed")
    budget = (plan or {}).get("options", {}).get("budget")
    if f.get("fits") is None and budget and f.get("lut") is not None:
        # no place and route: compare the cost figures with the board's budget (boards/data)
        f["fits"] = all(f.get(k) is None or f[k] <= cap for k, cap in budget.items())
    clock = clock or _board_clock(board)
    f["board"] = board
    f["clock_mhz"] = clock
    cpf = f.get("cycles_per_frame")
    f["fps"] = round(clock * 1e6 / cpf, 3) if clock and cpf else None
    return f


# -- executors ---------------------------------------------------------------------------------

class _Bars:
    """One tqdm bar for the sweep, one per running point (stages done / stages)."""

    def __init__(self, total: int, done: int, workers: int, quiet: bool):
        from tqdm import tqdm

        self.tqdm = tqdm
        self.quiet = quiet
        self.disable = True if quiet else None  # None: tqdm's own choice, bars only on a terminal
        self.overall = tqdm(total=total, initial=done, desc="sweep", unit="point", position=0,
                            disable=self.disable, dynamic_ncols=True)
        self.slots = list(range(1, max(1, workers) + 1))
        self.bars: dict[str, object] = {}

    def poll(self, running: dict[str, Path]) -> None:
        for pid, d in running.items():
            prog = _load_json(d / "progress.json")
            if prog is None:
                continue
            bar = self.bars.get(pid)
            if bar is None:
                pos = self.slots.pop(0) if self.slots else len(self.bars) + 1
                bar = self.tqdm(total=prog["total"], desc=pid, unit="stage", position=pos, leave=False,
                                disable=self.disable, dynamic_ncols=True)
                bar.pos_slot = pos
                self.bars[pid] = bar
            bar.n = prog["done"]
            bar.set_postfix_str(prog["stage"] or "done", refresh=True)

    def finished(self, pid: str, line: str) -> None:
        bar = self.bars.pop(pid, None)
        if bar is not None:
            self.slots.insert(0, bar.pos_slot)
            bar.close()
        self.overall.update(1)
        if not self.quiet:
            self.tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.overall.close()


def _run_pool(tasks, workers, on_done, poll):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = {ex.submit(run_point, t): t for t in tasks}
        while futures:
            done, _ = wait(futures, timeout=0.3, return_when=FIRST_COMPLETED)
            poll()
            for fut in done:
                task = futures.pop(fut)
                try:
                    on_done(task, fut.result())
                except Exception as exc:  # the worker process died (killed, out of memory)
                    on_done(task, {"id": task["id"], "status": "failed", "crashed": True,
                                   "error": f"worker process failed: {type(exc).__name__}: {exc}"})
    except KeyboardInterrupt:
        # Ctrl-C reaches the workers too; do not wait for queued points. A rerun resumes.
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def _run_ray(tasks, workers, on_done, poll, address):
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs the 'ray' package: pip install 'accumulus[ray]'") from None
    address = address or os.environ.get("RAY_ADDRESS")  # Ray's own way to name a cluster
    started = False
    if not ray.is_initialized():
        # address="local": a new local instance, even when 'ray start' left one's address behind
        kwargs = ({"address": address} if address else
                  {"address": "local", "num_cpus": workers, "include_dashboard": False})
        try:
            ray.init(log_to_driver=False, **kwargs)
        except (ConnectionError, ValueError) as exc:
            raise UserError(f"--address {address}: cannot connect to a Ray cluster ({exc}); "
                            "start one with 'ray start --head' or omit --address for a local one") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_point)
        queue = list(tasks)
        inflight = {}
        limit = workers if workers else len(queue)  # no --workers: the cluster's CPUs decide
        try:
            while queue or inflight:
                while queue and len(inflight) < limit:
                    t = queue.pop(0)
                    inflight[remote.remote(t)] = t
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=0.3)
                poll()
                for ref in done:
                    task = inflight.pop(ref)
                    try:
                        on_done(task, ray.get(ref))
                    except Exception as exc:  # the Ray worker died, or the node was lost
                        first = (str(exc).splitlines() or [""])[0]
                        on_done(task, {"id": task["id"], "status": "failed", "crashed": True,
                                       "error": f"Ray task failed: {type(exc).__name__}: {first}"})
        except KeyboardInterrupt:
            for ref in inflight:  # a cluster outlives this driver: stop what it still runs for us
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


# -- the sweep ---------------------------------------------------------------------------------

def run(spec: str | Path | Sweep, out: str | Path, executor: str = "pool", workers: int | None = None,
        address: str | None = None, quiet: bool = False) -> dict:
    """Run every point that is not done yet, then write results.json/.csv, report.md and plots.

    Returns the ``results.json`` document.
    """
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor}: unknown; choose {' or '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    sweep = spec if isinstance(spec, Sweep) else load(spec)
    out = Path(out)
    (out / "points").mkdir(parents=True, exist_ok=True)
    asked = workers
    workers = workers or max(1, min(os.cpu_count() or 1, len(sweep.points)))
    t0 = time.monotonic()
    tasks, log = [], {}
    for p in sweep.points:
        d = out / "points" / p.id
        if is_done(d, p.config, sweep.stages):
            log[p.id] = {"cached": True}
            continue
        (d / "progress.json").unlink(missing_ok=True)
        tasks.append({"id": p.id, "dir": str(d.resolve()), "options": p.options, "config": p.config,
                      "stages": sweep.stages, "model": sweep.model})
    if not quiet:
        print(f"sweep: {len(sweep.points)} points ({len(sweep.points) - len(tasks)} done before), "
              f"stages {', '.join(sweep.stages)}; {len(tasks)} to run on {executor} with {workers} worker(s)",
              file=sys.stderr)
    bars = _Bars(len(sweep.points), len(sweep.points) - len(tasks), workers, quiet)
    running = {t["id"]: Path(t["dir"]) for t in tasks}

    def on_done(task, result):
        running.pop(task["id"], None)
        if result.get("crashed"):  # the task never wrote its record: write it here
            d = Path(task["dir"])
            rec = _load_json(d / "point.json") or {"id": task["id"], "options": task["options"],
                                                    "config": task["config"], "stages": task["stages"]}
            rec.update(status="failed", error=result["error"], figures=figures(d))
            _write_json(d / "point.json", rec)
        log[task["id"]] = {"cached": False, "status": result["status"], "seconds": result.get("seconds")}
        fig = (_load_json(Path(task["dir"]) / "point.json") or {}).get("figures", {})
        what = ", ".join(f"{k}={v}" for k, v in task["options"].items())
        line = (f"point {task['id']} ({what}): ok, accuracy {_cell(fig.get('accuracy')) or '-'}, "
                f"LUT {_cell(fig.get('lut')) or '-'}, {_cell(fig.get('fps')) or '-'} frames/s" if result["status"] == "ok"
                else f"point {task['id']} ({what}): FAILED: {result['error']}")
        bars.finished(task["id"], line)

    try:
        if tasks:
            if executor == "pool":
                _run_pool(tasks, workers, on_done, lambda: bars.poll(running))
            else:
                _run_ray(tasks, asked if address else workers, on_done, lambda: bars.poll(running), address)
    finally:
        bars.close()
    doc = collect(sweep, out)
    write_outputs(doc, out)
    failed = [e["id"] for e in doc["points"] if e["status"] != "ok"]
    this = {"source": sweep.source, "executor": executor, "address": address, "workers": workers,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.monotonic() - t0, 2),
            "points_run": len(tasks), "points_failed": failed}
    prev = _load_json(out / "sweep.json") or {}
    history = prev.get("history", []) + ([{k: prev[k] for k in this if k in prev}] if "finished" in prev else [])
    _write_json(out / "sweep.json", {**this, "points": log, "history": history})
    if not quiet:
        print(f"sweep: {len(doc['points']) - len(failed)} of {len(doc['points'])} points ok; "
              f"wrote {out / 'results.json'}, results.csv, report.md and "
              f"{', '.join(doc['plots']) or 'no plots'} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return doc


def _pareto(entries: list[dict], x: str, minimize_x: bool) -> set[str]:
    """Ids of the points no other point beats: accuracy at least as high and ``x`` at least as
    good (lower when ``minimize_x``), one of them strictly."""
    pts = [(e["id"], e["figures"].get("accuracy"), e["figures"].get(x)) for e in entries
           if e["figures"].get("fits") is not False]  # a design the board cannot hold is no choice on it
    pts = [(i, a, (v if minimize_x else -v)) for i, a, v in pts if a is not None and v is not None]
    return {i for i, a, v in pts
            if not any(a2 >= a and v2 <= v and (a2 > a or v2 < v) for _, a2, v2 in pts)}


def collect(sweep: Sweep, out: Path) -> dict:
    """The ``results.json`` document from every point's ``point.json`` (deterministic content only)."""
    entries = []
    for p in sweep.points:
        rec = _load_json(out / "points" / p.id / "point.json") or {}
        entries.append({"id": p.id, "dir": f"points/{p.id}", "options": p.options,
                        "status": rec.get("status", "not run"), "error": rec.get("error"),
                        "failed_stage": rec.get("failed_stage"), "figures": figures(out / "points" / p.id)})
    ok = [e for e in entries if e["status"] == "ok"]
    boards = sorted({e["figures"].get("board") or "?" for e in ok})
    for board in boards:
        mine = [e for e in ok if (e["figures"].get("board") or "?") == board]
        lut_front, fps_front = _pareto(mine, "lut", True), _pareto(mine, "fps", False)
        for e in mine:
            e["pareto"] = {"lut": e["id"] in lut_front, "fps": e["id"] in fps_front}
    for e in entries:
        e.setdefault("pareto", {"lut": False, "fps": False})
    return {"source": Path(sweep.source).name, "stages": sweep.stages, "keys": sweep.keys,
            "points": entries, "plots": [f"pareto-{b}.png" for b in boards]}


# -- outputs -----------------------------------------------------------------------------------

_CSV_FIGURES = ("accuracy", "float_accuracy", "lut", "ff", "dsp", "bram_bits", "cost_source",
                "cycles_per_frame", "cycles_source", "fps", "clock_mhz", "fmax_mhz", "fits", "board",
                "mac_lanes", "const_layers", "acc_bits")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    if isinstance(v, dict):
        return " ".join(str(x) for x in v.values())
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_outputs(doc: dict, out: Path) -> None:
    _write_json(out / "results.json", doc)
    cols = ["id", "status"] + doc["keys"] + list(_CSV_FIGURES) + ["pareto_lut", "pareto_fps", "error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for e in doc["points"]:
        f = e["figures"]
        w.writerow([e["id"], e["status"]] + [_cell(e["options"].get(k)) for k in doc["keys"]]
                   + [_cell(f.get(k)) for k in _CSV_FIGURES]
                   + [e["pareto"]["lut"], e["pareto"]["fps"], e["error"] or ""])
    (out / "results.csv").write_text(buf.getvalue())
    for board in sorted({e["figures"].get("board") or "?" for e in doc["points"] if e["status"] == "ok"}):
        plot(doc, board, out / f"pareto-{board}.png")
    (out / "report.md").write_text(report_md(doc))


def _label(e: dict, varying: set[str] | None = None) -> str:
    """``acc-bits=12, engine=rom``: the point's options, those every point shares left out."""
    short = lambda key: "+".join(part.split(".", 1)[-1] for part in key.split("+"))  # noqa: E731
    return ", ".join(f"{short(k)}={v}" for k, v in e["options"].items() if varying is None or k in varying)


def plot(doc: dict, board: str, path: Path) -> None:
    """Accuracy against LUTs and against frames/s for one board; Pareto points marked and joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [e for e in doc["points"] if e["status"] == "ok" and (e["figures"].get("board") or "?") == board]
    varying = {k for k in doc["keys"] if len({json.dumps(e["options"].get(k)) for e in doc["points"]}) > 1}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, x, name, minimize in ((axes[0], "lut", "LUTs", True), (axes[1], "fps", "frames/s", False)):
        pts = [e for e in mine if e["figures"].get(x) is not None and e["figures"].get("accuracy") is not None]
        front = sorted((e for e in pts if e["pareto"][x]), key=lambda e: e["figures"][x])
        rest = [e for e in pts if not e["pareto"][x] and e["figures"].get("fits") is not False]
        over = [e for e in pts if e["figures"].get("fits") is False]
        ax.scatter([e["figures"][x] for e in rest], [e["figures"]["accuracy"] for e in rest],
                   c="0.6", s=22, label="point")
        if over:
            ax.scatter([e["figures"][x] for e in over], [e["figures"]["accuracy"] for e in over],
                       c="0.6", marker="x", s=26, label=f"does not fit {board}")
        ax.plot([e["figures"][x] for e in front], [e["figures"]["accuracy"] for e in front],
                "o-", c="tab:red", ms=7, label="Pareto front")
        for e in front:
            ax.annotate(_label(e, varying), (e["figures"][x], e["figures"]["accuracy"]), fontsize=6,
                        textcoords="offset points", xytext=(4, -8 if minimize else 4))
        src = sorted({e["figures"].get("cost_source" if x == "lut" else "cycles_source") for e in pts} - {None})
        ax.set_xlabel(f"{name} ({', '.join(src)})" if src else name)
        ax.set_ylabel("test accuracy")
        xs = [e["figures"][x] for e in pts]
        if xs and min(xs) > 0 and max(xs) > 20 * min(xs):
            ax.set_xscale("log")  # engines differ by orders of magnitude (constant-weight vs folded)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{doc['source']}: {len(mine)} points on {board}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_md(doc: dict) -> str:
    pts = doc["points"]
    ok = [e for e in pts if e["status"] == "ok"]
    lines = [f"# Sweep `{doc['source']}`", "",
             f"{len(pts)} points over {', '.join(f'`{k}`' for k in doc['keys'])}; stages "
             f"{', '.join(doc['stages'])}; {len(ok)} ok, {len(pts) - len(ok)} failed.", ""]
    for plot_name in doc["plots"]:
        lines += [f"![{plot_name}]({plot_name})", ""]
    head = doc["keys"] + ["accuracy", "LUT", "FF", "DSP", "cycles/frame", "frames/s", "Pareto", "status"]
    lines += ["| id | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    for e in pts:
        f = e["figures"]
        front = "/".join(k for k in ("lut", "fps") if e["pareto"][k]) or ""
        row = [_cell(e["options"].get(k)) for k in doc["keys"]] + [
            _cell(f.get("accuracy")), _cell(f.get("lut")), _cell(f.get("ff")), _cell(f.get("dsp")),
            _cell(f.get("cycles_per_frame")), _cell(f.get("fps")), front,
            e["status"] if e["status"] == "ok" else f"{e['status']}: {e['error']}"]
        lines.append(f"| `{e['id']}` | " + " | ".join(r.replace("|", "\\|") for r in row) + " |")
    sources = sorted({f"{e['figures'].get('cost_source')}" for e in ok})
    lines += ["", f"Accuracy: `train.json` test_accuracy. Cost: {', '.join(sources)}. Frames/s: board clock / "
              "cycles per frame. Pareto: no other point on the same board has accuracy at least as high and "
              "cost (LUT) or throughput (frames/s) at least as good, one strictly; points that do not fit the "
              "board are never on its front.", ""]
    return "\n".join(lines)
