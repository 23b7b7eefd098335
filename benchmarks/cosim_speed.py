"""Co-simulation speed: frames per second on Icarus and Verilator.

For each model (plans shaped like the presets, ``accumulus.sim.presets``; a project folder
from ``accumulus build`` may be given instead with ``--project``) the Verilog is built
with hw/build.py, then ``--frames`` test frames are co-simulated under ``--backpressure``
on each simulator; every frame is checked against the golden model. Reports frames/s and
simulated cycles/s of the simulation alone, the simulator's build time apart (Verilator
compiles C++; a second build of the same design is reused), and the bit-exact verdict.

Writes ``OUT/cosim_speed.json``.

    .venv/bin/python benchmarks/cosim_speed.py --frames 100
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits-mlp,mnist-tfc", help="comma-separated preset shapes")
    p.add_argument("--project", action="append", default=[], help="a built project folder (repeatable)")
    p.add_argument("--simulators", default="icarus,verilator")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--backpressure", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for projects and builds (default: a temporary one)")
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from accumulus.hw.build import build
    from accumulus.sim.cosim import simulate
    from accumulus.sim.presets import preset_plan
    from accumulus.sim.runner import simulator_version

    work = Path(args.work or tempfile.mkdtemp(prefix="cosim_speed_"))
    projects = []
    for name in [m for m in args.models.split(",") if m]:
        d = work / name
        plan = preset_plan(name, seed=args.seed)
        plan.save(d)
        t0 = time.perf_counter()
        build(plan, d)
        projects.append((name, d, time.perf_counter() - t0))
    projects += [(Path(p).name, Path(p), None) for p in args.project]

    rows = []
    for name, d, hw_seconds in projects:
        for sim in [s for s in args.simulators.split(",") if s]:
            r = simulate(d, simulator=sim, frames=args.frames, seed=args.seed, backpressure=args.backpressure,
                         log=lambda s: print(s, file=sys.stderr))
            run = r["runs"][0]
            sim_s = run["sim_seconds"]
            row = {
                "model": name, "simulator": sim, "simulator_version": r["simulator_version"],
                "frames": r["frames"], "passed": r["passed"], "mismatches": r["mismatches"],
                "sim_seconds": sim_s, "frames_per_second": round(r["frames"] / sim_s, 2),
                "sim_cycles": run["sim_cycles"], "cycles_per_second": round(run["sim_cycles"] / sim_s, 1),
                "testbench_seconds": round(run["testbench_seconds"], 3),
                "simulator_build_seconds": run["build_seconds"], "simulator_build_reused": run["build_reused"],
                "simulator_build_seconds_when_built": run.get("build_seconds_when_built"),
                "hw_build_seconds": None if hw_seconds is None else round(hw_seconds, 2),
                "cycles_per_frame": r["cycles_per_frame"], "cycles_per_frame_estimate": r["cycles_per_frame_estimate"],
                "latency_cycles": r["latency_cycles"],
            }
            rows.append(row)
            print(f"{name:14s} {sim:9s} {row['frames_per_second']:8.2f} frames/s  {row['cycles_per_second']:9.0f} cycles/s  "
                  f"sim {sim_s:6.1f} s  build {row['simulator_build_seconds']:6.1f} s  "
                  f"{'bit-exact' if r['passed'] else 'MISMATCH'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "cosim_speed", "frames": args.frames, "backpressure": args.backpressure, "seed": args.seed,
        "python": platform.python_version(), "machine": platform.machine(),
        "simulators": {s: simulator_version(s) for s in args.simulators.split(",") if s},
        "results": rows,
    }
    (out / "cosim_speed.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'cosim_speed.json'}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
