"""Co-simulate a built project folder against the golden model (``accumulus sim DIR``).

Reads ``DIR/plan.json`` + ``plan.npz`` (the golden model's input) and ``DIR/rtl/build.json``
(the hardware's description: top module, per-layer engine modules, and for each its
input/output stream packing), runs the top design (and, for worst-case stimulus, every
deeper MAC engine in ``rtl/layers/`` alone), and writes ``DIR/sim/results.json``.

What is read from ``build.json`` (see :func:`port_format` for the accepted spellings)::

    {"acc_policy": "exact",
     "top":    {"module": "accumulus_top", "file": "accumulus_top.v",
                "input":  {"elements_per_beat", "element_bits", "signed", "beat_bytes"},
                "output": {...}, "cycles_per_frame": int},
     "layers": [{"name": <plan layer>, "module", "file": "layers/<name>.v",
                 "input": {...}, "output": {...}, "cycles_per_frame": int}, ...]}

A port may also say ``frame_elements`` (default: the size of the plan tensor it carries)
and ``signals`` (port names, default ``s_axis_*`` / ``m_axis_*``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from accumulus.compiler import golden
from accumulus.compiler.plan import LAYER_KINDS, MAC_KINDS, Plan
from accumulus.errors import UserError

from . import stimulus as stim
from .axis import StreamFormat
from .runner import SIMULATORS, Design, run, simulator_version
from .scoreboard import expected_design, expected_layer

# A layer engine's Verilog keeps Amaranth's stream port names and has no tlast.
_AMARANTH_IN = {"tdata": "i__payload", "tvalid": "i__valid", "tready": "i__ready"}
_AMARANTH_OUT = {"tdata": "o__payload", "tvalid": "o__valid", "tready": "o__ready"}

__all__ = ["load_build", "port_format", "top_design", "layer_designs", "simulate"]


def load_build(project: Path) -> dict:
    path = project / "rtl" / "build.json"
    if not (project / "rtl").is_dir() or not path.exists():
        raise UserError(
            f"{path} not found: the Verilog is made by the build stage; run 'accumulus build {project}' first"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run 'accumulus build {project}'") from None


def _get(d: dict, keys: tuple[str, ...], what: str):
    for k in keys:
        if k in d:
            return d[k]
    raise UserError(f"build.json: {what} lacks '{keys[0]}' (got keys: {', '.join(sorted(d))}); re-run 'accumulus build'")


def port_format(port: dict, frame_elements: int, what: str) -> StreamFormat:
    """A build.json port description -> :class:`StreamFormat`."""
    epb = int(_get(port, ("elements_per_beat", "elems_per_beat", "elements", "elems"), what))
    bits = int(_get(port, ("element_bits", "elem_bits", "element_width", "width"), what))
    signed = bool(_get(port, ("signed", "element_signed"), what))
    beat_bytes = port.get("beat_bytes")
    if beat_bytes is None:
        beat_bytes = -(-epb * bits // 8)
    n = int(port.get("frame_elements", frame_elements))
    if "beats_per_frame" in port and int(port["beats_per_frame"]) != -(-n // epb):
        raise UserError(
            f"build.json: {what} has {port['beats_per_frame']} beats of {epb} elements per frame, "
            f"but the plan's tensor has {n} elements; re-run 'accumulus build' for this plan"
        )
    try:
        return StreamFormat(epb, bits, signed, int(beat_bytes), n)
    except ValueError as exc:
        raise UserError(f"build.json: {what}: {exc}") from None


def _find_port(build: dict, entry: dict, key: str, what: str) -> dict:
    """The ``input``/``output`` port of an entry, under any of the spellings build.json uses."""
    alias = {"input": ("input", "in", "s_axis"), "output": ("output", "out", "m_axis")}[key]
    for scope in (entry, entry.get("packing") or {}, build.get("packing") or {} if entry is build.get("top") else {}):
        for k in alias:
            if isinstance(scope.get(k), dict):
                return scope[k]
    raise UserError(f"build.json: {what} has no '{key}' port description; re-run 'accumulus build'")


def _signals(port: dict, default: str):
    sig = port.get("signals") or port.get("ports")
    return sig if isinstance(sig, dict) else default


def _tensor_size(plan: Plan, name: str) -> int:
    return int(np.prod(plan.tensor_shape(name)))


def top_design(project: Path, build: dict, plan: Plan) -> Design:
    top = build.get("top") or build
    rtl = project / "rtl"
    file = top.get("file") or top.get("verilog") or "accumulus_top.v"
    sources = [rtl / s for s in top.get("sources", [file])]
    if not sources[0].exists():
        raise UserError(f"{sources[0]} not found: run 'accumulus build {project}' (the build stage writes it)")
    pin, pout = _find_port(build, top, "input", "top"), _find_port(build, top, "output", "top")
    inp = port_format(pin, _tensor_size(plan, plan.input_name), "top input")
    out = port_format(pout, _tensor_size(plan, plan.output_name), "top output")
    est = top.get("cycles_per_frame") or plan.doc.get("estimate", {}).get("cycles_per_frame")
    return Design(name="top", sources=sources, toplevel=top.get("module", "accumulus_top"), input=inp, output=out,
                  input_ports=_signals(pin, "s_axis"), output_ports=_signals(pout, "m_axis"),
                  cycles_per_frame_estimate=est)


def layer_designs(project: Path, build: dict, plan: Plan, kinds=MAC_KINDS) -> list[tuple[dict, Design]]:
    """(plan layer, design) for every engine of ``kinds`` in build.json with its own Verilog file.

    Engines with two inputs (a residual ``add``) are left to the whole-design run.
    """
    out = []
    by_name = {layer["name"]: layer for layer in plan.layers}
    for entry in build.get("layers", []):
        layer = by_name.get(entry.get("name") or entry.get("layer"))
        if layer is None or layer["kind"] not in kinds or len(layer["inputs"]) != 1 or not entry.get("file"):
            continue
        src = project / "rtl" / entry["file"]
        if not src.exists():
            raise UserError(f"{src} (layer '{layer['name']}') not found: re-run 'accumulus build {project}'")
        what = f"layer '{layer['name']}'"
        pin, pout = _find_port(build, entry, "input", what), _find_port(build, entry, "output", what)
        inp = port_format(pin, _tensor_size(plan, layer["inputs"][0]), what + " input")
        outp = port_format(pout, _tensor_size(plan, layer["output"]), what + " output")
        d = Design(name=f"layer-{layer['name']}", sources=[src], toplevel=entry.get("module", layer["name"]),
                   input=inp, output=outp, input_ports=_signals(pin, _AMARANTH_IN),
                   output_ports=_signals(pout, _AMARANTH_OUT),
                   cycles_per_frame_estimate=entry.get("cycles_per_frame") or layer.get("cycles_per_frame"))
        out.append((layer, d))
    return out


def _layer_stimulus(plan: Plan, layer: dict, design: Design) -> tuple[np.ndarray, np.ndarray]:
    """Worst-case inputs of one engine and the golden outputs, shaped to its ports."""
    in_size = _tensor_size(plan, layer["inputs"][0])
    if design.input.frame_elements == in_size:
        x = stim.worst_case_codes(plan, layer)
        return x.reshape(len(x), -1), expected_layer(plan, layer, x)
    # an engine fed bare windows / vectors (fan_in elements per frame)
    x = stim.worst_case_codes(plan, layer, as_windows=True)
    if x.shape[1] != design.input.frame_elements:
        raise UserError(
            f"build.json: layer '{layer['name']}' input frame is {design.input.frame_elements} elements; "
            f"expected its input tensor ({in_size}) or its fan-in ({x.shape[1]})"
        )
    flat = dict(layer, kind="matvec", conv=None)
    return x, expected_layer(plan, flat, x)


def _trim(r: dict) -> dict:
    keep = dict(r)
    keep.pop("mismatches", None)
    if len(keep.get("output_intervals") or []) > 32:
        keep["output_intervals"] = keep["output_intervals"][:32]
    return keep


def run_jobs(jobs, top: Design, simulator: str, out_dir: Path, *, seed: int, backpressure: float,
             measure_frames: int, waves: bool, log: Callable[[str], None]) -> list[dict]:
    """Run ``(design, x, y, source)`` jobs on ``simulator``, one work folder each under
    ``out_dir``; only ``top`` measures throughput and writes waveforms."""
    runs = []
    for design, x, y, source in jobs:
        log(f"sim: {design.name} on {simulator}: {len(x)} frames ({source}), back-pressure {backpressure}")
        r = run(design, x, y, simulator=simulator, build_root=out_dir / "build", work_dir=out_dir / f"run-{design.name}-{simulator}",
                seed=seed, backpressure=backpressure, measure_frames=measure_frames if design is top else 0,
                waves=waves and design is top)
        r["stimulus"] = source
        runs.append(r)
        log(f"sim: {design.name}: {r['frames_ok']}/{r['frames_checked']} frames bit-exact"
            + (f", build {r['build_seconds']:.1f} s" if not r["build_reused"] else ", build reused")
            + f", sim {r['sim_seconds']:.1f} s")
    return runs


def simulate(project: str | Path, simulator: str = "icarus", frames: int = 100, seed: int = 0,
             backpressure: float = 0.3, stimulus: str = "test", waves: bool = False, measure_frames: int = 8,
             out: str | Path | None = None, engines: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run the co-simulation of a project folder; writes and returns ``sim/results.json``.

    ``engines``: also run every single-input layer engine of ``rtl/layers/`` alone on the
    golden model's tensors for the same stimulus (worst-case stimulus always runs the
    deeper MAC engines alone).
    """
    project = Path(project)
    if not project.is_dir():
        raise UserError(f"project folder {project} not found: make it with 'accumulus compile' and 'accumulus build'")
    if simulator not in SIMULATORS:
        raise UserError(f"unknown simulator '{simulator}': choose one of {', '.join(SIMULATORS)}")
    if frames < 1:
        raise UserError(f"--frames must be >= 1, got {frames}")
    if not 0.0 <= backpressure < 1.0:
        raise UserError(f"--backpressure must be in [0, 1), got {backpressure}")
    plan = Plan.load(project)
    build = load_build(project)
    top = top_design(project, build, plan)
    out_dir = Path(out or project) / "sim"
    out_dir.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()

    jobs: list[tuple[Design, np.ndarray, np.ndarray, str]] = []
    if stimulus == "test":
        try:
            codes = stim.test_codes(plan, frames, seed)
            source = f"test split of '{stim.dataset_for_plan(plan)}'"
        except UserError:
            if stim.dataset_for_plan(plan) is not None:
                raise
            codes = stim.random_codes(plan, frames, seed)
            source = "random codes over the input type (no built-in dataset matches this plan)"
        jobs.append((top, codes.reshape(frames, -1), expected_design(plan, codes), source))
    elif stimulus == "worst":
        first = stim.first_mac_layer(plan)
        if first["inputs"][0] == plan.input_name:
            codes = stim.worst_case_codes(plan, first)
            jobs.append((top, codes.reshape(len(codes), -1), expected_design(plan, codes),
                         f"worst case of first layer '{first['name']}'"))
        else:
            # A layer without weights (e.g. a reorder) is in front of the first MAC layer, so
            # its worst case is no input of the design: the design runs on random codes and
            # every MAC engine, the first included, alone on its worst case.
            codes = stim.random_codes(plan, frames, seed)
            jobs.append((top, codes.reshape(frames, -1), expected_design(plan, codes),
                         f"random codes over the input type (first MAC layer '{first['name']}' does not read "
                         "the input: its worst case runs on its engine alone)"))
            first = None
        for layer, d in layer_designs(project, build, plan):
            if layer is first:
                continue
            x, y = _layer_stimulus(plan, layer, d)
            jobs.append((d, x, y, f"worst case of layer '{layer['name']}' (engine alone)"))
    else:
        codes = stim.npy_codes(plan, stimulus)[:frames]
        jobs.append((top, codes.reshape(len(codes), -1), expected_design(plan, codes), f"file {stimulus}"))

    if engines and stimulus != "worst":
        # Every single-input engine alone, fed the golden model's tensor in front of it:
        # a mismatch in the whole design is then pinned to one layer.
        env = golden.run(plan, codes)
        n = len(codes)
        for layer, d in layer_designs(project, build, plan, kinds=tuple(k for k in LAYER_KINDS if k != "add")):
            x, y = env[layer["inputs"][0]].reshape(n, -1), env[layer["output"]].reshape(n, -1)
            jobs.append((d, x, y, f"golden input of layer '{layer['name']}' (engine alone)"))

    runs = run_jobs(jobs, top, simulator, out_dir, seed=seed, backpressure=backpressure,
                    measure_frames=measure_frames, waves=waves, log=log)

    topr = runs[0]
    est = plan.doc.get("estimate", {}).get("cycles_per_frame")
    cpf = topr.get("cycles_per_frame")
    first_bad = next((dict(r["first_mismatch"], design=r["design"]) for r in runs if r.get("first_mismatch")), None)
    results = {
        "project": str(project),
        "simulator": simulator,
        "simulator_version": simulator_version(simulator),
        "stimulus": stimulus,
        "frames": int(sum(r["frames_checked"] for r in runs)),
        "seed": seed,
        "backpressure": backpressure,
        "acc_policy": build.get("acc_policy"),
        "verification": build.get("verification") or {"recorded": False},
        "passed": all(r["passed"] for r in runs),
        "mismatches": int(sum(r["mismatched_elements"] for r in runs)),
        "mismatched_frames": int(sum(r["mismatched_frames"] for r in runs)),
        "frames_missing": int(sum(r["frames_missing"] for r in runs)),
        "extra_frames": int(sum(r["extra_frames"] for r in runs)),
        "stalled": next((f"{r['design']}: {r['stalled']}" for r in runs if r.get("stalled")), None),
        "first_mismatch": first_bad,
        "cycles_per_frame": cpf,
        "cycles_per_frame_estimate": est,
        "cycles_per_frame_error": (abs(cpf - est) / est) if (cpf and est) else None,
        "latency_cycles": topr.get("latency_cycles"),
        "build_seconds": round(sum(r["build_seconds"] for r in runs), 3),
        "sim_seconds": round(sum(r["sim_seconds"] for r in runs), 3),
        "wall_seconds": round(time.perf_counter() - wall0, 3),
        "waves": topr.get("waves"),
        "runs": [_trim(r) for r in runs],
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    results["results_path"] = str(out_dir / "results.json")
    return results
