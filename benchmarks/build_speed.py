"""Generation time of the mnist-tfc design: ``accumulus build`` (plan -> Verilog).

Requirement (issue 5): generating the mnist-tfc design takes under 30 s once the Yosys
WebAssembly cache is warm. Amaranth converts through its built-in Yosys (WebAssembly),
so a first, untimed warm-up conversion fills that cache; then each repeat runs the
whole build (engines sized, every layer converted once, the top assembled, build.json).

The plan: ``--plan DIR`` (a compiled mnist-tfc project), else the mnist-tfc-shaped
synthetic plan of the co-simulation presets (784-64-64-64-10, 8-bit unsigned input, W4
A4, ~1k cycles per frame), plus the heavier fully-parallel folding with ``--wide``.
Writes JSON with the timings, the design's cycles per frame and the tool versions.

    .venv/bin/python benchmarks/build_speed.py [--plan build/tfc] [--repeat 3] \\
        [--out benchmarks/results/build_speed.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def tfc_plans(plan_dir, wide):
    from accumulus.compiler.plan import Plan
    from accumulus.compiler.synthetic import mlp_plan
    from accumulus.compiler.types import IntType

    if plan_dir:
        yield f"plan:{plan_dir}", Plan.load(plan_dir)
        return
    from accumulus.sim.presets import preset_plan

    yield "mnist-tfc preset folding (pe 8,2,2,1 simd 8,4,4,4)", preset_plan("mnist-tfc", seed=0)
    if wide:
        yield "mnist-tfc wide folding (pe 16,16,16,10 simd 16)", mlp_plan(
            (784, 64, 64, 64, 10), input_type=IntType(8, False), pe=[16, 16, 16, 10], simd=[16, 16, 16, 16],
            argmax=True, seed=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", help="project folder with a compiled mnist-tfc plan.json (default: synthetic)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wide", action="store_true", help="also time the fully parallel folding")
    ap.add_argument("--limit", type=float, default=30.0, help="seconds allowed (exit 1 when exceeded)")
    ap.add_argument("--out", default="benchmarks/results/build_speed.json")
    args = ap.parse_args(argv)

    import amaranth
    from amaranth.back import verilog
    from amaranth.hdl import Module, Signal

    from accumulus.hw.build import build

    # Warm-up: the first conversion compiles Amaranth's built-in Yosys (WebAssembly).
    t0 = time.perf_counter()
    m = Module()
    s = Signal()
    m.d.sync += s.eq(~s)
    verilog.convert(m, ports=[s])
    warmup = time.perf_counter() - t0

    results = []
    for label, plan in tfc_plans(args.plan, args.wide):
        times = []
        doc = None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                doc = build(plan, tmp)
                times.append(time.perf_counter() - t0)
                top_bytes = (Path(tmp) / "rtl" / "accumulus_top.v").stat().st_size
        row = {
            "design": label, "seconds": times, "best_s": min(times), "median_s": sorted(times)[len(times) // 2],
            "top_verilog_bytes": top_bytes, "cycles_per_frame": doc["top"]["cycles_per_frame"],
            "plan_cycles_per_frame": doc["top"]["plan_cycles_per_frame"],
            "layers": [{"layer": l["layer"], "pe": l.get("pe"), "simd": l.get("simd"), "acc_bits": l.get("acc_bits")}
                       for l in doc["layers"]],
        }
        results.append(row)
        print(f"{label}: best {row['best_s']:.1f} s, median {row['median_s']:.1f} s over {args.repeat}")

    out = {
        "benchmark": "build_speed", "requirement_s": args.limit, "warmup_s": round(warmup, 2),
        "results": results, "passed": all(r["median_s"] < args.limit for r in results),
        "python": sys.version.split()[0], "amaranth": amaranth.__version__, "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {'PASS' if out['passed'] else 'FAIL'} (< {args.limit} s)")
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
