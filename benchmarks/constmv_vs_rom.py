"""LUTs of the constant-weight engine (hw/constmv.py) against the folded ROM engine
(hw/mvu.py) for one digits-mlp-sized layer: 64 inputs x 64 channels, 4-bit signed
weights with about half of them zero, 4-bit unsigned inputs (a hidden layer's codes).

Each design is the engine alone (accumulators out, no requantizer, so that the matvec
itself is compared; ``--requant`` adds the threshold requantizer to both), written to
Verilog by Amaranth and synthesised with the project's Yosys script
(boards/synth.py: ``proc; splitnets; synth_ecp5 -nodsp -noflatten``; LUTs count a CCU2C
carry cell as two LUT4s, as nextpnr does). Every design's numpy model is first checked
against ``compiler/golden.py`` on random and worst-case vectors.

Writes ``OUT/constmv_vs_rom.json`` with tool versions, options and per design the
resources, the adder-graph report (constant engine) and throughput in cycles per vector.

    .venv/bin/python -P benchmarks/constmv_vs_rom.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# (label, engine, options): the ROM engine at the digits-mlp folding (PE=SIMD=8) and at
# one vector per cycle (PE=N, SIMD=K); the constant engine with and without sharing
DESIGNS = [
    ("const_cse_L2", "const", {"cse": True, "register_every": 2}),
    ("const_nocse_L2", "const", {"cse": False, "register_every": 2}),
    ("const_cse_L0", "const", {"cse": True, "register_every": 0}),
    ("rom_pe8_simd8", "rom", {"pe": 8, "simd": 8}),
    ("rom_pe64_simd64", "rom", {"pe": 64, "simd": 64}),
]


def make_plan(pe: int, simd: int, seed: int, sparsity: float, requant: bool):
    from accumulus.compiler.synthetic import mlp_plan
    from accumulus.compiler.types import IntType

    # layer fc1 of a 64-64-64 MLP: 4-bit unsigned input codes, 4-bit signed weights;
    # with --requant a third layer makes fc1 requantize to 4 bits, otherwise it outputs
    # accumulators
    widths = (64, 64, 64, 10) if requant else (64, 64, 64)
    plan = mlp_plan(widths, input_type=IntType(4, False), weight_bits=4, act_bits=4,
                    pe=[1, pe] + ([1] if requant else []), simd=[1, simd] + ([1] if requant else []),
                    seed=seed, sparsity=sparsity)
    return plan, plan.layers[1]


def build(label, engine, opts, seed, sparsity, requant, frames=64):
    from accumulus.compiler import golden
    from accumulus.compiler.accumulators import worst_case_inputs
    from accumulus.hw.constmv import ConstMVSpec
    from accumulus.hw.mvu import MVUSpec

    if engine == "const":
        plan, layer = make_plan(1, 1, seed, sparsity, requant)
        spec = ConstMVSpec(plan, layer, **opts)
    else:
        plan, layer = make_plan(opts["pe"], opts["simd"], seed, sparsity, requant)
        spec = MVUSpec(plan, layer)
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.integers(0, 16, size=(frames, 64)), *worst_case_inputs(spec.weights, spec.input_type)])
    want = golden.run_layer(plan, layer, {layer["inputs"][0]: x})
    if not np.array_equal(spec.compute(x), want):
        raise SystemExit(f"{label}: the engine's model disagrees with compiler/golden.py")
    w = spec.weights
    info = {"label": label, "engine": engine, "options": opts, "cycles_per_vector": spec.cycles_per_frame,
            "latency": spec.latency, "acc_bits": [int(b) for b in spec.acc_bits],
            "nonzero_weights": int(np.count_nonzero(w)), "zero_fraction": round(float(np.mean(w == 0)), 4)}
    if engine == "const":
        rep = spec.report()
        info["graph"] = {k: v for k, v in rep.items() if not isinstance(v, list)}
    return spec, info


def main(argv=None):
    from amaranth.back import verilog

    from accumulus.boards.synth import SynthJob, run_synth, yosys_version

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for constmv_vs_rom.json")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sparsity", type=float, default=0.5, help="fraction of weights set to zero")
    ap.add_argument("--requant", action="store_true", help="include the threshold requantizer")
    ap.add_argument("--only", default="", help="comma-separated design labels (default: all)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per Yosys run")
    ap.add_argument("--work", default=None, help="keep Yosys files here (default: a temporary folder)")
    args = ap.parse_args(argv)
    wanted = [d for d in DESIGNS if not args.only or d[0] in args.only.split(",")]

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="constmv_vs_rom_"))
    results = []
    for label, engine, opts in wanted:
        spec, info = build(label, engine, opts, args.seed, args.sparsity, args.requant)
        top = f"eng_{label}"
        d = work / label
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        (d / f"{top}.v").write_text(verilog.convert(spec.create(), name=top))
        info["verilog_seconds"] = round(time.monotonic() - t0, 2)
        print(f"{label}: synthesising ...", file=sys.stderr, flush=True)
        res = run_synth(SynthJob(label, [d / f"{top}.v"], top, "ecp5", d / "synth"), timeout=args.timeout)
        info.update({"ok": res.ok, "synth_seconds": round(res.seconds, 1), "resources": res.total,
                     "error": res.error, "script": res.script})
        print(f"{label}: {res.total if res.ok else res.error}", file=sys.stderr, flush=True)
        results.append(info)

    import amaranth

    doc = {
        "benchmark": "constmv_vs_rom",
        "layer": {"fan_in": 64, "channels": 64, "weight_type": "int4", "input_type": "uint4",
                  "sparsity": args.sparsity, "seed": args.seed, "requant": args.requant},
        "family": "ecp5",
        "tools": {"yosys": yosys_version(), "amaranth": amaranth.__version__, "python": platform.python_version()},
        "results": results,
    }
    by = {r["label"]: r for r in results if r.get("ok")}
    if "const_cse_L2" in by:
        base = by["const_cse_L2"]["resources"]["lut"]
        doc["lut_ratio_const_over"] = {k: round(base / v["resources"]["lut"], 3) for k, v in by.items()
                                       if v["engine"] == "rom" and v["resources"]["lut"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "constmv_vs_rom_requant.json" if args.requant else "constmv_vs_rom.json"
    (out / name).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({r["label"]: r.get("resources") for r in results}, indent=1))


if __name__ == "__main__":
    main()
