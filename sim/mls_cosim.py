"""Co-simulate a built MLS project (``accumulus sim DIR`` on an MLS plan, docs/mls.md).

Reads ``DIR/plan.json`` + ``plan.npz`` (an MLS plan, compiler/frontend/mls_load.py) and
``DIR/rtl/build.json`` (``"kind": "mls"``, hw/build.py's ``build_mls``), runs the top
(``accumulus_top``) through the same cocotb testbench as every other design
(sim/runner.py, sim/testbench.py: random ``tvalid`` gaps and ``tready`` stalls) and compares
its output integers with ``compiler.golden.run_mls``. Worst-case stimulus also runs every
MLS stage of ``rtl/layers/`` alone on its corner frames (:func:`worst_frames`) against the
golden layer (:func:`layer_golden`). Writes ``DIR/sim/results.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from accumulus.compiler import golden, mls
from accumulus.compiler.frontend.mls_load import MLSPlan
from accumulus.errors import UserError

from .axis import StreamFormat
from .cosim import run_jobs
from .runner import SIMULATORS, Design, simulator_version

__all__ = ["layer_golden", "worst_frames", "input_worst_frames", "test_inputs", "simulate_mls"]

_DATASET_BY_SIZE = {64: "digits", 784: "mnist5k"}


def layer_golden(plan: MLSPlan, layer: dict, a: np.ndarray) -> np.ndarray:
    """One MLS layer of ``compiler.golden.run_mls`` on integer frames ``a`` (B, *in_shape):
    ``quantize_int`` per sample, the integer dot products, ``golden.mls_requant``; (B, outputs)."""
    a = np.asarray(a, np.int64).reshape((len(a),) + tuple(layer["in_shape"]))
    if layer["kind"] == "maxpool":
        (kh, kw), (sh, sw) = layer["kernel"], layer["stride"]
        _, _, h, w = a.shape
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        win = np.stack([a[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] for i in range(kh) for j in range(kw)])
        return win.max(axis=0).reshape(len(a), -1)
    wc, fmt = plan.weight_codes(layer), plan.format(layer)
    accs, smax = [], []
    for i in range(a.shape[0]):
        xc = mls.quantize_int(a[i:i + 1], fmt)
        if layer["kind"] == "mls_conv":
            r = mls.mls_conv2d(wc, xc, stride=layer["stride"], padding=layer["padding"])
        elif len(wc.shape) == 2:
            r = mls.mls_linear(wc, xc)
        else:
            r = mls.mls_conv2d(wc, xc)
        accs.append(r.acc[0].reshape(-1))
        smax.append(xc.tensor_scale)
    acc = np.stack(accs).reshape((a.shape[0],) + tuple(layer["out_shape"]))
    return golden.mls_requant(layer, acc, smax).reshape(a.shape[0], -1)


def worst_frames(plan: MLSPlan, layer: dict) -> np.ndarray:
    """Corner frames of one MLS layer's input (B, *in_shape): every element at the input bound
    ``m`` with the signs of the first / last weight row (the largest dot accumulators of those
    channels), every element at ``m`` and at ``-m``, one element at ``m`` and the rest at the
    largest element of a finer group (mantissa all ones, ``g > 0``), all zero (``S = 1``), a
    single 1."""
    m = int(layer["requant"]["in_max_int"])
    shape = tuple(layer["in_shape"])
    k = int(np.prod(shape))
    wc = plan.weight_codes(layer)
    fmt = plan.format(layer)
    frames = []
    sw = np.where(wc.sign.reshape(wc.shape[0], -1) == 1, -1, 1)
    if sw.shape[1] == k:
        frames += [m * sw[0], m * sw[-1]]
    frames += [np.full(k, m), np.full(k, -m)]
    fine = np.full(k, (m * ((1 << (fmt.mantissa_bits + 1)) - 1)) >> (fmt.mantissa_bits + 1))
    fine[0] = m
    frames += [fine, np.zeros(k, np.int64), np.eye(1, k, k // 2, dtype=np.int64)[0]]
    return np.stack(frames).astype(np.int64).reshape((-1,) + shape)


def _input_range(plan: MLSPlan) -> tuple[int, int]:
    spec = plan.doc["input"]
    if spec["signed"]:
        return -(1 << (spec["bits"] - 1)), (1 << (spec["bits"] - 1)) - 1
    return 0, (1 << spec["bits"]) - 1


def input_worst_frames(plan: MLSPlan) -> np.ndarray:
    """Graph-input corner frames (codes): every code at the top (and, signed, the bottom) of
    the input range, the first MLS layer's first / last weight-row sign pattern between them
    (when it reads the input directly), all zero, a single top code."""
    lo, hi = _input_range(plan)
    shape = tuple(plan.doc["input"]["shape"])
    k = int(np.prod(shape))
    frames = [np.full(k, hi), np.zeros(k, np.int64), np.eye(1, k, k // 2, dtype=np.int64)[0] * hi]
    if lo < 0:
        frames.append(np.full(k, lo))
    first = next(l for l in plan.layers if l["kind"].startswith("mls_"))
    wc = plan.weight_codes(first)
    sw = wc.sign.reshape(wc.shape[0], -1)
    if sw.shape[1] == k:
        for row in (sw[0], sw[-1]):
            frames.append(np.where(row == 1, lo, hi))
    return np.stack(frames).astype(np.int64).reshape((-1,) + shape)


def _dataset(plan: MLSPlan) -> str | None:
    src = Path(str((plan.doc.get("source") or {}).get("model") or ""))
    if src.is_file():
        try:
            import onnx

            meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
            name = json.loads(meta.get("accumulus", "{}")).get("dataset")
            if isinstance(name, str) and name:
                return name
        except (OSError, ValueError, AttributeError):
            pass
    return _DATASET_BY_SIZE.get(int(np.prod(plan.doc["input"]["shape"])))


def test_inputs(plan: MLSPlan, frames: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``frames`` input code frames: the test split of the model's dataset (wrapping), else
    uniform random codes over the input range."""
    shape = tuple(plan.doc["input"]["shape"])
    name = _dataset(plan)
    if name is not None:
        from accumulus.quant.data import load_dataset

        ds = load_dataset(name, seed=seed)
        x = ds.x_test[np.resize(np.arange(len(ds.x_test)), frames)]
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise UserError(f"dataset '{name}' images have shape {x.shape[1:]}, the MLS plan's input is {shape}")
        return golden.mls_input_codes(plan, x.reshape((len(x),) + shape)), f"test split of '{name}'"
    lo, hi = _input_range(plan)
    return (np.random.default_rng(seed).integers(lo, hi + 1, (frames,) + shape),
            "random codes over the input range (no built-in dataset matches this plan)")


def _npy_inputs(plan: MLSPlan, path: str, frames: int) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"stimulus file {p} not found: pass an .npy of inputs (N, ...) in the model's ONNX layout")
    try:
        x = np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy raises several kinds for a bad file
        raise UserError(f"stimulus file {p} is not a readable .npy ({type(exc).__name__}: {exc})") from None
    shape = tuple(plan.doc["input"]["shape"])
    if x.ndim < 1 or int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise UserError(f"stimulus file {p} has shape {x.shape}; the MLS plan takes (N, {', '.join(map(str, shape))})")
    x = x[:frames].reshape((-1,) + shape)
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = _input_range(plan)
        if x.min() < lo or x.max() > hi:
            raise UserError(f"stimulus file {p}: integer codes span [{x.min()}, {x.max()}], outside the input range "
                            f"[{lo}, {hi}]")
        return x.astype(np.int64)
    return golden.mls_input_codes(plan, x)


def _fmt(port: dict) -> StreamFormat:
    return StreamFormat(int(port["elements_per_beat"]), int(port["element_bits"]), bool(port["signed"]),
                        int(port["beat_bytes"]), int(port["frame_elements"]))


def simulate_mls(project: str | Path, simulator: str = "icarus", frames: int = 100, seed: int = 0,
                 backpressure: float = 0.3, stimulus: str = "test", waves: bool = False, measure_frames: int = 8,
                 out: str | Path | None = None, engines: bool = False, log: Callable[[str], None] = print) -> dict:
    """The MLS counterpart of :func:`accumulus.sim.cosim.simulate` (same results document)."""
    project = Path(project)
    if simulator not in SIMULATORS:
        raise UserError(f"unknown simulator '{simulator}': choose one of {', '.join(SIMULATORS)}")
    plan = MLSPlan.load(project)
    bpath = project / "rtl" / "build.json"
    if not bpath.is_file():
        raise UserError(f"{bpath} not found: the Verilog is made by the build stage; run 'accumulus build {project}' first")
    build = json.loads(bpath.read_text())
    if build.get("kind") != "mls":
        raise UserError(f"{bpath} is not an MLS build; re-run 'accumulus build {project}'")
    t = build["top"]
    top = Design(name="top", sources=[project / "rtl" / t["file"]], toplevel=t["module"],
                 input=_fmt(t["packing"]["input"]), output=_fmt(t["packing"]["output"]),
                 cycles_per_frame_estimate=t.get("cycles_per_frame"))
    out_dir = Path(out or project) / "sim"
    out_dir.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    by_name = {l["name"]: l for l in plan.layers}

    def stage_designs():
        for entry in build.get("layers", []):
            if not entry.get("file"):
                continue
            src = project / "rtl" / entry["file"]
            if not src.is_file():
                raise UserError(f"{src} (layer '{entry['layer']}') not found: re-run 'accumulus build {project}'")
            d = Design(name=f"layer-{entry['layer']}", sources=[src], toplevel=entry["module"],
                       input=_fmt(entry["input"]), output=_fmt(entry["output"]),
                       input_ports=entry["input"]["signals"], output_ports=entry["output"]["signals"],
                       cycles_per_frame_estimate=entry.get("cycles_per_frame"))
            yield by_name[entry["layer"]], d

    jobs = []
    if stimulus == "test":
        codes, source = test_inputs(plan, frames, seed)
    elif stimulus == "worst":
        codes, source = input_worst_frames(plan), "worst case of the graph input"
    else:
        codes, source = _npy_inputs(plan, stimulus, frames), f"file {stimulus}"
    scale = float(plan.doc["input"]["scale"])
    env = golden.run_mls(plan, (codes * np.float32(scale)).astype(np.float32))
    assert np.array_equal(env[plan.doc["input"]["name"] + ".int"], codes)
    jobs.append((top, codes.reshape(len(codes), -1), env[plan.doc["output"] + ".int"], source))
    if stimulus == "worst":
        for layer, d in stage_designs():
            if layer["kind"].startswith("mls_"):
                x = worst_frames(plan, layer)
                jobs.append((d, x.reshape(len(x), -1), layer_golden(plan, layer, x),
                             f"worst case of layer '{layer['name']}' (stage alone)"))
    if engines:
        n = len(codes)
        for layer, d in stage_designs():
            x = env[layer["input"] + ".int"].reshape(n, -1)
            jobs.append((d, x, env[layer["output"] + ".int"].reshape(n, -1),
                         f"golden input of layer '{layer['name']}' (stage alone)"))

    runs = run_jobs(jobs, top, simulator, out_dir, seed=seed, backpressure=backpressure,
                    measure_frames=measure_frames, waves=waves, log=log)
    topr = runs[0]
    est = t.get("cycles_per_frame")
    cpf = topr.get("cycles_per_frame")
    first_bad = next((dict(r["first_mismatch"], design=r["design"]) for r in runs if r.get("first_mismatch")), None)
    results = {
        "project": str(project), "plan_format": plan.doc.get("format"), "simulator": simulator,
        "simulator_version": simulator_version(simulator), "stimulus": stimulus,
        "frames": int(sum(r["frames_checked"] for r in runs)), "seed": seed, "backpressure": backpressure,
        "acc_policy": None, "verification": build.get("verification") or {"recorded": False},
        "passed": all(r["passed"] for r in runs),
        "mismatches": int(sum(r["mismatched_elements"] for r in runs)),
        "mismatched_frames": int(sum(r["mismatched_frames"] for r in runs)),
        "frames_missing": int(sum(r["frames_missing"] for r in runs)),
        "extra_frames": int(sum(r["extra_frames"] for r in runs)),
        "stalled": next((f"{r['design']}: {r['stalled']}" for r in runs if r.get("stalled")), None),
        "first_mismatch": first_bad, "cycles_per_frame": cpf, "cycles_per_frame_estimate": est,
        "cycles_per_frame_error": (abs(cpf - est) / est) if (cpf and est) else None,
        "latency_cycles": topr.get("latency_cycles"),
        "build_seconds": round(sum(r["build_seconds"] for r in runs), 3),
        "sim_seconds": round(sum(r["sim_seconds"] for r in runs), 3),
        "wall_seconds": round(time.perf_counter() - wall0, 3), "waves": topr.get("waves"),
        "runs": [{k: v for k, v in r.items() if k != "mismatches"} for r in runs],
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    results["results_path"] = str(out_dir / "results.json")
    return results
