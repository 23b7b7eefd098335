"""Placed Fmax on the ULX3S (LFE5U-85F, nextpnr-ecp5) of digits-mlp built constant-weight at
one frame per cycle, beside the folded (ROM) build of the same network: frames/s and frames/s
per LUT in one table.

Steps, each the project's own CLI (``--threads 1``):

1. ``accumulus train --preset digits-mlp --quant a2q+ --acc-bits P --seed S [--constrain-first]``;
2. ``accumulus compile --engine const --board ulx3s-85f --target-fps F*1e6 --clock-mhz F``
   (one frame per cycle at F MHz: the folding pass picks the adder levels per pipeline stage
   from that clock) and ``accumulus compile --engine rom --board ulx3s-85f`` (the default
   folding within the board);
3. ``accumulus report DIR --board ulx3s-85f --policies exact --variants lut --pnr-clock-mhz F
   --pnr-router R`` (R = ``--router``, default router2) for both: Yosys, nextpnr's packer (the packed cell counts), placement and routing against
   an F MHz constraint; Fmax is nextpnr's for the harness clock.

frames/s = Fmax / cycles per frame (build.json); per LUT: Yosys' LUT count (a CCU2C counts
two) and nextpnr's packed TRELLIS_COMB count. A report that exists in ``--work`` is reused.

    .venv/bin/python -P benchmarks/const_fmax.py --out benchmarks/results [--constrain-first]

The default preset (first layer plain integer QAT) at P=12 packs to 94% of the device's
logic cells and the placer finds no legal placement (benchmarks/results/const_fmax_ulx3s.json
records those runs); ``--constrain-first`` applies A2Q+ to the first layer too, which needs
68% and places.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def run(argv):
    from accumulus.cli import main

    code = main(argv)
    if code != 0:
        raise SystemExit(f"accumulus {' '.join(argv)} failed with {code}")


def build(proj: Path, model: Path, engine: str, args) -> dict:
    if not (proj / "reports" / "report.json").exists():
        proj.mkdir(parents=True, exist_ok=True)
        cmd = ["compile", str(model), "--out", str(proj), "--engine", engine, "--board", args.board, "--quiet"]
        if engine == "const":
            cmd += ["--target-fps", str(args.clock_mhz * 1e6), "--clock-mhz", str(args.clock_mhz)]
        run(cmd)
        run(["report", str(proj), "--board", args.board, "--policies", "exact", "--variants", "lut",
             "--pnr-clock-mhz", str(args.clock_mhz), "--pnr-router", args.router])
    rep = json.loads((proj / "reports" / "report.json").read_text())
    pol = rep["policy"]["exact"]
    built = json.loads((proj / "reports" / "exact" / "rtl" / "build.json").read_text())
    plan = json.loads((proj / "plan.json").read_text())
    syn, pnr = pol["synth"]["lut"], pol.get("pnr") or {}
    cpf = int(built["top"]["cycles_per_frame"])
    comb = (pnr.get("packed_utilization") or {}).get("TRELLIS_COMB", {}).get("used")
    fmax = pnr.get("fmax_mhz")
    fps = fmax * 1e6 / cpf if fmax and pnr.get("fits") else None
    layers = []
    for l in plan["layers"]:
        if l["kind"] not in ("matvec", "conv"):
            continue
        row = {"layer": l["name"], "engine": l.get("engine", "rom"), "cycles_per_frame": l.get("cycles_per_frame")}
        if l.get("engine") == "const":
            row.update({k: l["const"][k] for k in ("register_every", "adders", "adder_bits", "pipeline_depth",
                                                   "requant_form")})
        else:
            row.update({"pe": l["folding"]["pe"], "simd": l["folding"]["simd"]})
        layers.append(row)
    return {"engine": engine, "project": str(proj), "cycles_per_frame": cpf, "latency_cycles": built["top"].get("latency"),
            "yosys_total": syn["total"], "packed_comb": comb, "packed_ff": (pnr.get("packed_utilization") or {})
            .get("TRELLIS_FF", {}).get("used"), "placed": bool(pnr.get("fits")), "fmax_mhz": fmax,
            "constraint_mhz": pnr.get("constraint_mhz"), "frames_per_s": fps,
            "frames_per_s_per_lut": fps / syn["total"]["lut"] if fps else None,
            "frames_per_s_per_packed_comb": fps / comb if fps and comb else None,
            "pnr_seconds": pnr.get("seconds"), "error": pnr.get("error"), "layers": layers,
            "tools": rep["tools"]}


def main_(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default=None, help="scratch folder (default OUT/const_fmax_work)")
    ap.add_argument("--acc-bits", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--constrain-first", action="store_true", help="A2Q+ on the first layer too")
    ap.add_argument("--clock-mhz", type=float, default=150.0, help="the clock both builds are placed against")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--router", default="router2", choices=["router1", "router2"],
                    help="nextpnr's router for both builds (router1 did not converge on the constant-weight "
                         "build in 1,000 s of routing)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    work = Path(args.work or out / "const_fmax_work")
    tag = f"dm_p{args.acc_bits}_s{args.seed}{'_cf' if args.constrain_first else ''}"
    tdir = work / tag / "train"
    if not (tdir / "model.onnx").exists():
        cmd = ["train", "--preset", "digits-mlp", "--quant", "a2q+", "--acc-bits", str(args.acc_bits), "--epochs",
               str(args.epochs), "--seed", str(args.seed), "--threads", "1", "--quiet", "--out", str(tdir)]
        run(cmd + (["--constrain-first"] if args.constrain_first else []))
    train = json.loads((tdir / "train.json").read_text())
    rows = [build(work / tag / engine, tdir / "model.onnx", engine, args) for engine in ("const", "rom")]
    const, rom = rows
    table = [{"engine": r["engine"], "cycles_per_frame": r["cycles_per_frame"], "yosys_lut": r["yosys_total"]["lut"],
              "packed_comb": r["packed_comb"], "ff": r["yosys_total"]["ff"], "fmax_mhz": r["fmax_mhz"],
              "frames_per_s": r["frames_per_s"], "frames_per_s_per_lut": r["frames_per_s_per_lut"]} for r in rows]
    result = {
        "benchmark": "const_fmax", "board": args.board, "options": vars(args),
        "model": f"digits-mlp, A2Q+ P={args.acc_bits}{' (first layer constrained too)' if args.constrain_first else ''}, "
                 f"seed {args.seed}, {args.epochs} epochs",
        "test_accuracy": train.get("test_accuracy"), "float_test_accuracy": train.get("float_test_accuracy"),
        "table": table, "builds": rows,
        "fmax_target_mhz": 150.0,
        "fmax_at_least_150": bool(const["fmax_mhz"] and const["placed"] and const["fmax_mhz"] >= 150.0),
        "speedup_frames_per_s": (const["frames_per_s"] / rom["frames_per_s"]
                                 if const["frames_per_s"] and rom["frames_per_s"] else None),
        "frames_per_s_per_lut_ratio": (const["frames_per_s_per_lut"] / rom["frames_per_s_per_lut"]
                                       if const["frames_per_s_per_lut"] and rom["frames_per_s_per_lut"] else None),
        "python": platform.python_version(), "seconds": round(time.perf_counter() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"const_fmax_{tag}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    for t in table:
        print(f"{t['engine']:>5}: {t['cycles_per_frame']} cycles/frame, LUT {t['yosys_lut']} (packed COMB "
              f"{t['packed_comb']}), Fmax {t['fmax_mhz']} MHz, {t['frames_per_s']} frames/s, "
              f"{t['frames_per_s_per_lut']} frames/s/LUT")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
