"""MLS (Zhong et al., multi-level scaling) quantization-aware training against float.

For each preset (``digits-cnn``, ``digits-mlp``), MLS format and seed: train the MLS model
(weights, activations and the error gradients of every layer in MLS; quant/mls.py) and the
same architecture in float with the same seed, data split, epochs and learning-rate
schedule (train.py's float twin), and record both test accuracies and their difference.

Writes ``OUT/mls_accuracy.json``.

    .venv/bin/python -P benchmarks/mls_accuracy.py --epochs 10 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits-cnn,digits-mlp", help="comma-separated presets")
    p.add_argument("--formats", default="1,2,4,2;4,2,4,2", help="semicolon-separated --mls formats")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import numpy as np
    import torch

    from accumulus.quant.models import preset
    from accumulus.quant.train import TrainOptions, train

    args = parse_args(argv)
    rows = []
    floats = {}
    for name in args.models.split(","):
        for fmt in args.formats.split(";"):
            for seed in args.seeds:
                cfg = preset(name, quant="mls", mls=fmt)
                t0 = time.perf_counter()
                opts = TrainOptions(epochs=args.epochs, seed=seed, progress=False, threads=args.threads,
                                    float_baseline=(name, seed) not in floats)
                _, res = train(cfg, None, opts)
                if (name, seed) not in floats:
                    floats[(name, seed)] = res["float_test_accuracy"]
                row = {"model": name, "mls": cfg.mls, "seed": seed, "epochs": args.epochs,
                       "test_accuracy": res["test_accuracy"], "float_test_accuracy": floats[(name, seed)],
                       "gap_points": round(100 * (floats[(name, seed)] - res["test_accuracy"]), 3),
                       "test_samples": res["dataset"]["test"], "seconds": round(time.perf_counter() - t0, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for r in rows:
        summary.setdefault(f"{r['model']} {r['mls']}", []).append(r)
    summary = {k: {"mean_test_accuracy": float(np.mean([r["test_accuracy"] for r in v])),
                   "mean_float_test_accuracy": float(np.mean([r["float_test_accuracy"] for r in v])),
                   "mean_gap_points": float(np.mean([r["gap_points"] for r in v])),
                   "max_gap_points": float(np.max([r["gap_points"] for r in v])), "seeds": len(v)}
               for k, v in summary.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "mls_accuracy", "epochs": args.epochs, "seeds": args.seeds,
           "float_reference": "same architecture trained with quant=float, same seed, split, epochs and schedule",
           "gradients": "error tensor of every MLS layer's output quantized with stochastic rounding",
           "rows": rows, "summary": summary,
           "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}}
    (out / "mls_accuracy.json").write_text(json.dumps(doc, indent=2))
    for k, v in summary.items():
        print(f"{k}: MLS {v['mean_test_accuracy']:.4f} float {v['mean_float_test_accuracy']:.4f} "
              f"gap {v['mean_gap_points']:.2f} points (max {v['max_gap_points']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
