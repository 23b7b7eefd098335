"""Sakr & Shanbhag per-tensor precision on digits-mlp: assignment vs uniform widths.

Steps (each the project's own CLI, one process, ``--threads 1``):

1. ``accumulus train --preset digits-mlp --quant float`` (the float reference);
2. ``accumulus precision DIR --mismatch M`` (default 0.01): per-tensor widths
   ``B_h = B_min + round(log2 sqrt(E_h/E_min))``, the measured float-vs-fixed-point
   mismatch on the test split and Sakr's full-adder cost;
3. for the chosen assignment and for every ``B_min`` in 2..8 (the same offsets), the
   smallest uniform width ``u`` in 2..16 whose *measured* mismatch is equal or lower, and
   both full-adder counts (precision.json's fixed-point forward, no training);
4. hardware for the chosen assignment and for each ``--hw-b-min`` (default 3,4) and each one's
   uniform width: QAT with those widths (``accumulus train --quant int --precision``; a
   uniform width ``u`` is a precision.json with every ``B = u``), accuracy against the
   float model, ``accumulus compile --engine rom --board B``, then Yosys on the built
   design (``boards/report.py`` run_report, policy exact, variant ``lut``: multipliers in
   LUTs; no place and route), with the plan's full-adder figure beside Yosys' LUTs.

Writes ``OUT/sakr_precision.json`` with tool versions and options.

    .venv/bin/python -P benchmarks/sakr_precision.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def run(argv):
    from accumulus.cli import main

    code = main(argv)
    if code != 0:
        raise SystemExit(f"accumulus {' '.join(argv)} failed with {code}")


def write_precision(doc: dict, bits: list[int], path: Path) -> Path:
    d = dict(doc)
    d["tensors"] = [dict(t, B=int(b)) for t, b in zip(doc["tensors"], bits)]
    path.write_text(json.dumps(d, indent=1))
    return path


def hardware(label, precision_file: Path, work: Path, args, float_acc: float) -> dict:
    from accumulus.boards.boards import load_board
    from accumulus.boards.report import run_report
    from accumulus.compiler.cost import layer_full_adders
    from accumulus.compiler.plan import Plan

    proj = work / label
    t0 = time.perf_counter()
    run(["train", "--preset", "digits-mlp", "--quant", "int", "--precision", str(precision_file),
         "--epochs", str(args.epochs), "--seed", str(args.seed), "--threads", "1", "--no-float-baseline",
         "--quiet", "--out", str(proj)])
    tr = json.loads((proj / "train.json").read_text())
    run(["compile", str(proj / "model.onnx"), "--out", str(proj), "--engine", "rom", "--board", args.board, "--quiet"])
    plan = Plan.load(proj)
    macs = [l for l in plan.layers if l["kind"] in ("matvec", "conv")]
    layers = []
    for l in macs:
        fa = layer_full_adders(l)
        layers.append({"layer": l["name"], "weight_bits": l["weight_type"]["bits"], "input_bits": l["input_type"]["bits"],
                       "input_signed": l["input_type"]["signed"], "fan_in": l["fan_in"], "channels": l["channels"],
                       "pe": l["folding"]["pe"], "simd": l["folding"]["simd"],
                       "acc_bits_exact_max": int(max(l["acc"]["bits"]["exact"])), "full_adders": fa["full_adders"]})
    doc = run_report(proj, load_board(args.board), policies=["exact"], pnr=False, variants=["lut"], workers=1,
                     progress=False)
    syn = doc["policy"]["exact"]["synth"]["lut"]
    if not syn.get("ok"):
        raise SystemExit(f"{label}: synthesis failed: {syn.get('error')}")
    for row in layers:
        y = syn["layers"].get(row["layer"])
        row["yosys_lut"] = y["total"]["lut"] if y else None
        row["yosys_ff"] = y["total"]["ff"] if y else None
    return {
        "label": label, "precision_file": precision_file.name, "widths": tr["precision"],
        "qat_test_accuracy": tr["test_accuracy"], "float_test_accuracy": float_acc,
        "accuracy_drop_points": round(100 * (float_acc - tr["test_accuracy"]), 2),
        "full_adders": sum(r["full_adders"] for r in layers),
        "yosys_total": syn["total"], "yosys_seconds": syn["seconds"],
        # every part of the netlist split: MAC layers, requantizers, "rest" (FIFOs, control, ArgMax)
        "yosys_lut_by_part": {k: v["total"]["lut"] for k, v in syn["layers"].items()},
        "cycles_per_frame": plan.doc.get("estimate", {}).get("cycles_per_frame"),
        "layers": layers, "seconds": round(time.perf_counter() - t0, 1),
    }


def main_(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default=None, help="scratch folder (default OUT/sakr_work)")
    ap.add_argument("--mismatch", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--board", default="ulx3s-85f", help="board id (its FPGA family is the synthesis target)")
    ap.add_argument("--hw-b-min", default="3,4", help="also build the assignment at these B_min (comma-separated)")
    ap.add_argument("--no-hw", action="store_true", help="skip QAT, compile and synthesis")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from accumulus.quant import precision as P
    from accumulus.boards.synth import yosys_version

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or out / "sakr_work")
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    fdir = work / "float"
    run(["train", "--preset", "digits-mlp", "--quant", "float", "--epochs", str(args.epochs), "--seed",
         str(args.seed), "--threads", "1", "--quiet", "--out", str(fdir)])
    run(["precision", str(fdir), "--mismatch", str(args.mismatch), "--threads", "1", "--quiet"])
    pdoc = json.loads((fdir / "precision.json").read_text())
    model, cfg, ds, _ = P.load_float_project(fdir)
    infos = P.tensor_infos(model, ds.x_train)
    P.set_input_exact_bits(infos, cfg.input_scale)
    gains = [t["E"] for t in pdoc["tensors"]]
    ref = P.float_predictions(model, ds.x_test)
    float_acc = float(np.mean(ref == ds.y_test))

    uniform_cache = {}

    def uniform(b):
        if b not in uniform_cache:
            bits = [b] * len(infos)
            uniform_cache[b] = {"bits": b, "measured_mismatch": P.measure_mismatch(model, infos, bits, ds.x_test, ref),
                                "mismatch_bound": P.mismatch_bound(gains, bits),
                                "full_adders": P.full_adder_cost(infos, bits)[0]}
        return uniform_cache[b]

    def compare(b_min):
        bits = P.assign_bits(gains, b_min)
        mm = P.measure_mismatch(model, infos, bits, ds.x_test, ref)
        fa = P.full_adder_cost(infos, bits)[0]
        u = next((uniform(b) for b in range(2, 17) if uniform(b)["measured_mismatch"] <= mm), None)
        return {"B_min": b_min, "bits": dict(zip([t.name for t in infos], bits)),
                "mismatch_bound": P.mismatch_bound(gains, bits), "measured_mismatch": mm,
                "full_adders": fa, "uniform": u,
                "full_adders_ratio_uniform_over_assignment": round(u["full_adders"] / fa, 3) if u else None,
                "assignment_cheaper": bool(u and fa < u["full_adders"])}

    chosen = compare(pdoc["B_min"])
    sweep = [compare(b) for b in range(2, 9)]
    result = {
        "benchmark": "sakr_precision", "model": "digits-mlp (64-64-64-10)",
        "method": pdoc["method"], "convention": pdoc["convention"],
        "options": vars(args), "float_test_accuracy": float_acc, "test_samples": int(len(ds.x_test)),
        "tensors": [{k: t[k] for k in ("name", "kind", "E", "offset", "B", "range")} for t in pdoc["tensors"]],
        "chosen": {"mismatch_target": args.mismatch, **chosen},
        "b_min_2_to_8": sweep,
        "uniform": [uniform(b) for b in sorted(uniform_cache)],
    }
    hw = []
    if not args.no_hw:
        points = [("chosen", chosen)]
        for b in (int(v) for v in str(args.hw_b_min).split(",") if v.strip()):
            if b != chosen["B_min"]:
                points.append((f"bmin{b}", compare(b)))
        for label, pt in points:
            f_a = write_precision(pdoc, list(pt["bits"].values()), work / f"{label}.json")
            a = hardware(f"{label}_assignment", f_a, work, args, float_acc)
            u = pt["uniform"]["bits"]
            f_u = write_precision(pdoc, [u] * len(infos), work / f"{label}_uniform{u}.json")
            b = hardware(f"{label}_uniform{u}", f_u, work, args, float_acc)
            hw.append({"point": label, "B_min": pt["B_min"], "uniform_bits": u, "assignment": a, "uniform": b,
                       "assignment_within_1_point_of_float": a["accuracy_drop_points"] <= 1.0,
                       "full_adders_lower": a["full_adders"] < b["full_adders"],
                       "yosys_lut_lower": a["yosys_total"]["lut"] < b["yosys_total"]["lut"]})
            print(f"{label}: assignment acc {a['qat_test_accuracy']:.4f} FA {a['full_adders']} LUT "
                  f"{a['yosys_total']['lut']}; uniform {u}: acc {b['qat_test_accuracy']:.4f} FA {b['full_adders']} "
                  f"LUT {b['yosys_total']['lut']}", flush=True)
    result["hardware"] = hw
    result["hardware_notes"] = (
        "QAT with --quant int (per-channel weights, learned activation scales): weights B signed bits, "
        "ReLU outputs B-1 unsigned bits, the input keeps the dataset's 5-bit codes; compiled with --engine rom "
        f"--board {args.board}; Yosys synth (boards/synth.py) of the whole built top, multipliers in LUTs, "
        "per-layer LUTs from the netlist split (boards/split.py); no place and route.")
    import amaranth
    import brevitas

    result["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "brevitas": brevitas.__version__, "numpy": np.__version__, "amaranth": amaranth.__version__,
                          "yosys": yosys_version() if hw else None}
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    path = out / "sakr_precision.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"chosen B_min {chosen['B_min']}: measured {chosen['measured_mismatch']:.4f}, FA {chosen['full_adders']}; "
          f"uniform {chosen['uniform']['bits'] if chosen['uniform'] else '-'} FA "
          f"{chosen['uniform']['full_adders'] if chosen['uniform'] else '-'}")
    for s in sweep:
        u = s["uniform"]
        print(f"  B_min {s['B_min']}: measured {s['measured_mismatch']:.4f} FA {s['full_adders']} | uniform "
              f"{u['bits'] if u else '-'}: {u['measured_mismatch'] if u else '-'} FA {u['full_adders'] if u else '-'}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
