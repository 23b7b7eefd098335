"""Collect the measured numbers of the trained presets into one JSON file.

Reads project folders made by the real pipeline (no synthetic plan anywhere):

    accumulus train --preset P --seed 0 --threads 1 --out ROOT/P
    accumulus compile ROOT/P/model.onnx --out ROOT/P --board B
    accumulus build ROOT/P
    accumulus sim ROOT/P --frames 100 --backpressure 0.3 --simulator S --out ROOT/P/runs/S-test
    accumulus sim ROOT/P --stimulus worst --backpressure 0.3 --simulator S --out ROOT/P/runs/S-worst
    (plan copied to ROOT/P-em1)  accumulus build ROOT/P-em1 --acc-policy exact-minus:1
    accumulus sim ROOT/P-em1 --stimulus worst ... --out ROOT/P-em1/runs/S-worst
    accumulus report ROOT/P --board B [--out ROOT/P-<board>]   (Arty: ROOT/mnist-tfc-arty2)
    accumulus bitstream ROOT/digits-mlp --board icebreaker

and writes ``OUT`` (default ``benchmarks/results/real_models.json``): training accuracy and
options, accumulator widths and folding, co-simulation runs (bit-exact verdict, cycles per
frame against the plan's estimate, simulator build and run time), the ``exact-minus:1``
worst-case failures, per-board fit / Fmax, the savings of ``exact`` against ``fixed:32`` and
``datatype`` per layer and part, the target verdicts, the bitstream, and tool versions.
Missing pieces are recorded as missing, not invented.

    .venv/bin/python benchmarks/real_models.py --root build/real --load-note "..."
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

PRESETS = ("digits-mlp", "mnist-tfc", "digits-rescnn")
REPORTS = (  # (key, preset, folder holding reports/ relative to root)
    ("digits-mlp/icebreaker", "digits-mlp", "digits-mlp"),
    ("mnist-tfc/ulx3s-85f", "mnist-tfc", "mnist-tfc"),
    ("mnist-tfc/arty-a7-35t", "mnist-tfc", "mnist-tfc-arty2"),
)


# the commands that made ROOT (ROOT = build/real), in order; S = icarus, verilator
COMMANDS = [
    "accumulus train --preset digits-mlp --epochs 10 --seed 0 --threads 1 --out ROOT/digits-mlp",
    "accumulus train --preset mnist-tfc --epochs 15 --seed 0 --threads 1 --out ROOT/mnist-tfc",
    "accumulus train --preset digits-rescnn --seed 0 --threads 1 --out ROOT/digits-rescnn",
    "accumulus compile ROOT/digits-mlp/model.onnx --out ROOT/digits-mlp --board icebreaker",
    "accumulus compile ROOT/mnist-tfc/model.onnx --out ROOT/mnist-tfc --board ulx3s-85f",
    "accumulus compile ROOT/digits-rescnn/model.onnx --out ROOT/digits-rescnn --board ulx3s-85f",
    "accumulus build ROOT/P                                   (P = each preset)",
    "cp ROOT/P/plan.json ROOT/P/plan.npz ROOT/P-em1/ && accumulus build ROOT/P-em1 --acc-policy exact-minus:1",
    "accumulus sim ROOT/P --frames 100 --backpressure 0.3 --simulator S --out ROOT/P/runs/S-test",
    "accumulus sim ROOT/P --stimulus worst --backpressure 0.3 --simulator S --out ROOT/P/runs/S-worst",
    "accumulus sim ROOT/P-em1 --stimulus worst --backpressure 0.3 --simulator S --out ROOT/P-em1/runs/S-worst",
    "accumulus report ROOT/digits-mlp --board icebreaker -j 1",
    "accumulus report ROOT/mnist-tfc --board ulx3s-85f -j 1",
    "accumulus report ROOT/mnist-tfc --board arty-a7-35t --no-pnr --variants lut,dsp --out ROOT/mnist-tfc-arty2 -j 1",
    "accumulus bitstream ROOT/digits-mlp --board icebreaker",
    "python benchmarks/cosim_speed.py --models '' --project ROOT/digits-mlp --project ROOT/mnist-tfc "
    "--project ROOT/digits-rescnn --frames 100 --backpressure 0.3",
]


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _train(d: Path) -> dict | None:
    t = _load(d / "train.json")
    if t is None:
        return None
    return {"preset": t["config"].get("preset"), "dataset": t["dataset"] if not isinstance(t["dataset"], dict)
            else {k: v for k, v in t["dataset"].items() if not isinstance(v, (list, dict))},
            "test_accuracy": t["test_accuracy"], "float_test_accuracy": t.get("float_test_accuracy"),
            "float_reference": t.get("float_reference"), "sparsity": t.get("sparsity"),
            "constrained_sparsity": t.get("constrained_sparsity"), "train_seconds": t.get("train_seconds"),
            "epochs": len(t.get("history", [])), "config": t["config"], "options": t.get("options"),
            "versions": t.get("versions")}


def _plan(d: Path) -> dict | None:
    p = _load(d / "plan.json")
    if p is None:
        return None
    layers = []
    for l in p["layers"]:
        if l["kind"] not in ("matvec", "conv"):
            continue
        b = l["acc"]["bits"]
        layers.append({"name": l["name"], "kind": l["kind"], "fan_in": l["fan_in"], "channels": l["channels"],
                       "weight_bits": l["weight_type"]["bits"], "input_bits": l["input_type"]["bits"],
                       "pe": l["folding"]["pe"], "simd": l["folding"]["simd"],
                       "datatype_bits": int(b["datatype"]), "a2q_bits": int(max(b["a2q"])),
                       "a2q_plus_bits": int(max(b["a2q_plus"])), "exact_bits": int(max(b["exact"])),
                       "exact_bits_min": int(min(b["exact"])), "target_p": b.get("target"),
                       "pe_acc_bits": l["folding"]["pe_acc_bits"], "cycles_per_frame": l.get("cycles_per_frame")})
    return {"board": p["options"].get("board"), "options": p["options"], "estimate": p["estimate"],
            "onnx_sha256": p["source"].get("sha256"), "layers": layers}


def _sim(path: Path) -> dict | None:
    r = _load(path)
    if r is None:
        return None
    keep = ("simulator", "simulator_version", "stimulus", "frames", "seed", "backpressure", "acc_policy", "passed",
            "mismatches", "mismatched_frames", "frames_missing", "extra_frames", "first_mismatch",
            "cycles_per_frame", "cycles_per_frame_estimate", "cycles_per_frame_error", "latency_cycles",
            "build_seconds", "sim_seconds", "wall_seconds")
    out = {k: r.get(k) for k in keep}
    out["runs"] = [{"design": run.get("design"), "stimulus": run.get("stimulus"), "passed": run.get("passed"),
                    "frames_checked": run.get("frames_checked"), "frames_ok": run.get("frames_ok"),
                    "mismatched_elements": run.get("mismatched_elements"), "first_mismatch": run.get("first_mismatch"),
                    "frames_missing": run.get("frames_missing"), "extra_frames": run.get("extra_frames"),
                    "build_seconds": run.get("build_seconds"), "build_reused": run.get("build_reused"),
                    "build_seconds_when_built": run.get("build_seconds_when_built"),
                    "sim_seconds": run.get("sim_seconds"), "sim_cycles": run.get("sim_cycles")}
                   for run in r.get("runs", [])]
    return out


def _cosim(root: Path, preset: str) -> dict:
    out = {}
    for sim in ("icarus", "verilator"):
        for stim in ("test", "worst"):
            out[f"{sim}/{stim}/exact"] = _sim(root / preset / "runs" / f"{sim}-{stim}" / "sim" / "results.json")
        out[f"{sim}/worst/exact-minus:1"] = _sim(root / f"{preset}-em1" / "runs" / f"{sim}-worst" / "sim"
                                                  / "results.json")
    # repeated runs (e.g. the same simulation again at a lower machine load) under their folder name
    standard = {f"{s}-{t}" for s in ("icarus", "verilator") for t in ("test", "worst")}
    runs = root / preset / "runs"
    for extra in sorted(runs.iterdir()) if runs.is_dir() else []:
        if extra.name not in standard and (extra / "sim" / "results.json").exists():
            out[f"repeat/{extra.name}"] = _sim(extra / "sim" / "results.json")
    return out


def _report(doc: dict) -> dict:
    fit = []
    for pol in doc["policies"]:
        p = doc["policy"][pol]
        pnr = p.get("pnr") or {}
        for var, syn in p.get("synth", {}).items():
            if not syn.get("ok"):
                fit.append({"policy": pol, "variant": var, "ok": False, "error": syn.get("error")})
                continue
            row = {"policy": pol, "variant": var, "ok": True, **syn["total"],
                   "fits_yosys": all(v["fits"] for v in syn["fits"].values()), "synth_seconds": syn.get("seconds")}
            if pnr and (pnr.get("dsp") == (var == "dsp")):
                row.update(pnr_fits=pnr.get("fits"), fmax_mhz=pnr.get("fmax_mhz"), clock_mhz=pnr.get("clock_mhz"),
                           pnr_seconds=pnr.get("seconds"), pnr_error=pnr.get("error"))
            fit.append(row)
    savings = {}
    for var, by_other in (doc.get("savings") or {}).items():
        for other, s in by_other.items():
            layers = {}
            for lname, parts in s["layers"].items():
                layers[lname] = {part: {m: [v["base"], v["other"]] for m, v in metrics.items()}
                                 for part, metrics in parts.items()}
            savings[f"{var}/{other}"] = {"layers": layers,
                                         "total": {m: [v["base"], v["other"]] for m, v in s["total"].items()}}
    # sums over layers of parts of the split, exact against each other policy: the README's "where it goes"
    sums = {}
    target_layers = [l for l, w in doc["widths"].items() if w.get("target")]
    for key, s in savings.items():
        for scope, layers in (("target_p_layers", target_layers), ("mac_layers", list(doc["widths"]))):
            for parts in (("multipliers", "reduction"), ("reduction",), ("reduction", "thresholds"), ("total",)):
                for m in ("lut", "ff", "carry"):
                    vals = [s["layers"][l][p][m] for l in layers if l in s["layers"] for p in parts
                            if p in s["layers"][l] and m in s["layers"][l][p]]
                    e, o = sum(v[0] for v in vals), sum(v[1] for v in vals)
                    sums[f"{key}/{scope}/{'+'.join(parts)}/{m}"] = [e, o, round(o / e, 3) if e else None]
    return {"board": doc["board"]["id"], "family": doc["board"]["family"], "plan": doc["plan"],
            "policies": doc["policies"], "variants": doc["variants"], "widths": doc["widths"], "tools": doc["tools"],
            "fit": fit, "targets": doc.get("targets"), "estimator": doc.get("estimator"),
            "savings_note": "per layer and part: metric -> [exact, other]", "savings": savings,
            "sums_note": "variant/other/scope/parts/metric -> [exact, other, other/exact]", "sums": sums,
            "seconds": doc.get("seconds")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="build/real")
    ap.add_argument("--out", default="benchmarks/results/real_models.json")
    ap.add_argument("--load-note", default="", help="machine load while measuring (free text)")
    args = ap.parse_args(argv)
    root = Path(args.root)

    models = {}
    for p in PRESETS:
        d = root / p
        models[p] = {"dir": str(d), "train": _train(d), "plan": _plan(d), "cosim": _cosim(root, p)}
    reports = {}
    for key, preset, folder in REPORTS:
        doc = _load(root / folder / "reports" / "report.json")
        reports[key] = _report(doc) if doc else None
    bit = _load(root / "digits-mlp" / "bitstream" / "bitstream.json")

    try:
        from accumulus.sim.runner import simulator_version
        sims = {s: simulator_version(s) for s in ("icarus", "verilator")}
    except Exception as e:  # noqa: BLE001 - versions are informative; record why one is missing
        sims = {"error": str(e)}
    doc = {
        "benchmark": "real_models",
        "what": "trained presets (seed 0, 1 torch thread) through compile, build, co-simulation, reports, bitstream",
        "python": platform.python_version(), "machine": platform.machine(),
        "load_note": args.load_note, "simulators": sims,
        "models": models, "reports": reports, "bitstream": {"digits-mlp/icebreaker": bit},
        "accuracy_vs_accumulator": "benchmarks/results/accuracy_vs_accumulator.json (15 epochs, seeds 0-2)",
        "commands": COMMANDS,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
