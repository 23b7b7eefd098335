"""The cost model's LUT/FF error against Yosys, for both MAC engines on three families.

For each network (digits-mlp, digits-cnn, mnist-tfc, trained by ``accumulus train`` with the
preset's defaults unless ``--epochs``), each board (iCEBreaker: iCE40, ULX3S-85F: ECP5,
Arty A7-35T: Xilinx 7) and each engine (``--engine rom``: the folded engine at the board's
folding, ``--engine const``: every MAC layer constant-weight), the plan is compiled for that
board and ``accumulus report --policies exact --no-pnr`` builds and synthesises it (Yosys,
LUT-only, hierarchy kept so that every layer engine has its own count). The report's
per-layer estimate (compiler/cost.py with the family's calibrated coefficients,
boards/calibrate.py) is compared with Yosys per MAC layer and over the MAC layers of the
design.

Writes ``OUT/estimator_error.json`` (tool versions, options, per design and layer: estimate,
Yosys, error) and prints the table.

    .venv/bin/python -P benchmarks/estimator_error.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

NETS = ("digits-mlp", "digits-cnn", "mnist-tfc")
BOARDS = {"icebreaker": "ice40", "ulx3s-85f": "ecp5", "arty-a7-35t": "xc7"}
ENGINES = ("rom", "const")


def _cli(args: list[str], log: Path) -> None:
    exe = Path(sys.executable).parent / "accumulus"
    with open(log, "a") as f:
        f.write("$ accumulus " + " ".join(args) + "\n")
        f.flush()
        r = subprocess.run([str(exe), *args], stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"accumulus {' '.join(args)} failed (exit {r.returncode}); see {log}")


def one(work: Path, net: str, board: str, engine: str, log: Path) -> dict:
    proj = work / net
    d = work / net / f"{board}-{engine}"
    rep = d / "reports" / "report.json"
    if not rep.exists():
        _cli(["compile", str(proj / "model.onnx"), "--out", str(d), "--board", board, "--engine", engine,
              "--quiet"], log)
        _cli(["report", str(d), "--board", board, "--policies", "exact", "--variants", "lut", "--no-pnr", "--jobs", "1"], log)
    from accumulus.boards.report import estimate_layers, policy_dir
    from accumulus.compiler.plan import Plan

    doc = json.loads(rep.read_text())
    plan = Plan.load(d / "plan.json")
    engines = {l["name"]: l.get("engine", "rom") for l in plan.layers if "folding" in l}
    # the estimate with the coefficients as they are now (a recalibration needs no new synthesis)
    bj = d / "reports" / policy_dir("exact") / "rtl" / "build.json"
    built = {l["layer"]: l for l in json.loads(bj.read_text())["layers"]}
    est = estimate_layers(plan, "exact", BOARDS[board], built=built)
    syn = doc["policy"]["exact"]["synth"]["lut"]["layers"]
    layers = {}
    for name, e in est.items():
        y = syn.get(name, {}).get("total")
        if not y or name not in engines:
            continue
        layers[name] = {"engine": engines[name], "lut_est": round(e["lut"]), "lut_yosys": y["lut"],
                        "lut_err": round(e["lut"] / y["lut"] - 1, 4), "ff_est": round(e["ff"]), "ff_yosys": y["ff"],
                        "ff_err": round(e["ff"] / y["ff"] - 1, 4)}
    lut_est = sum(r["lut_est"] for r in layers.values())
    lut_y = sum(r["lut_yosys"] for r in layers.values())
    ff_est = sum(r["ff_est"] for r in layers.values())
    ff_y = sum(r["ff_yosys"] for r in layers.values())
    return {
        "net": net, "board": board, "family": BOARDS[board], "engine": engine,
        "layer_engines": sorted(set(engines.values())),
        "layers": layers,
        "mac_layers": {"lut_est": lut_est, "lut_yosys": lut_y, "lut_err": round(lut_est / lut_y - 1, 4),
                       "ff_est": ff_est, "ff_yosys": ff_y, "ff_err": round(ff_est / ff_y - 1, 4)},
        "max_abs_layer_lut_err": max(abs(r["lut_err"]) for r in layers.values()),
        "calibration": doc.get("estimator_calibration"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="build/estimator_error", help="projects and reports (reused when present)")
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--boards", default=",".join(BOARDS))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    ap.add_argument("--merge", default=None,
                    help="an earlier estimator_error.json whose designs not run now are kept (recorded per result)")
    ap.add_argument("--collect-only", action="store_true",
                    help="only read designs already synthesised under --work (estimates with today's coefficients)")
    args = ap.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    t0 = time.monotonic()
    results = []
    for net in args.nets.split(","):
        if not args.collect_only and not (work / net / "model.onnx").exists():
            extra = ["--epochs", str(args.epochs)] if args.epochs else []
            _cli(["train", "--preset", net, "--out", str(work / net), "--quiet", "--no-float-baseline", *extra], log)
        for board in args.boards.split(","):
            for engine in args.engines.split(","):
                t = time.monotonic()
                if args.collect_only and not (work / net / f"{board}-{engine}" / "reports" / "report.json").exists():
                    results.append({"net": net, "board": board, "family": BOARDS[board], "engine": engine,
                                    "error": "not synthesised"})
                    print(f"{net:<11} {board:<12} {engine:<6} not synthesised")
                    continue
                try:
                    r = one(work, net, board, engine, log)
                except (RuntimeError, KeyError, ZeroDivisionError) as exc:
                    r = {"net": net, "board": board, "family": BOARDS[board], "engine": engine, "error": str(exc)}
                r["seconds"] = round(time.monotonic() - t, 1)
                results.append(r)
                m = r.get("mac_layers")
                print(f"{net:<11} {board:<12} {engine:<6} " + (
                    f"LUT est {m['lut_est']:>7} yosys {m['lut_yosys']:>7} err {m['lut_err']:+.1%}  "
                    f"FF err {m['ff_err']:+.1%}  max layer |LUT err| {r['max_abs_layer_lut_err']:.1%}"
                    if m else f"error: {r['error']}"), flush=True)
    if args.merge:
        done = {(r["net"], r["board"], r["engine"]) for r in results if "error" not in r}
        for r in json.loads(Path(args.merge).read_text())["results"]:
            if (r["net"], r["board"], r["engine"]) not in done and "error" not in r:
                results = [x for x in results if (x["net"], x["board"], x["engine"]) != (r["net"], r["board"], r["engine"])]
                results.append({**r, "merged_from": str(args.merge)})
    from accumulus.boards.synth import yosys_version

    doc = {
        "benchmark": "estimator_error",
        "tools": {"python": platform.python_version(), "yosys": yosys_version()},
        "options": vars(args),
        "script": "accumulus report --policies exact --no-pnr (Yosys LUT-only, hierarchy kept)",
        "results": results,
        "max_abs_mac_lut_err": {e: max((abs(r["mac_layers"]["lut_err"]) for r in results
                                        if r.get("engine") == e and "mac_layers" in r), default=None)
                                for e in ENGINES},
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "estimator_error.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'estimator_error.json'} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
