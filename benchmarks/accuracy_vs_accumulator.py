"""Accuracy and weight sparsity against the target accumulator width P.

For each model (``mnist-tfc``, ``digits-mlp``) and seed: train ``float`` and ``int`` once,
and ``a2q`` and ``a2q+`` at every P of ``--acc-bits``; export each quantized model to
QONNX (the exported integers are checked against their exact accumulator range) and
record test accuracy, the fraction of zero integer weights (all layers, and the
constrained ones), and the exact accumulator width of every layer.

Writes ``OUT/accuracy_vs_accumulator.json`` (with seed, epochs, torch/brevitas versions)
and ``OUT/accuracy_vs_accumulator.png``.

    .venv/bin/python benchmarks/accuracy_vs_accumulator.py --epochs 20 --seeds 0,1,2
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


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mnist-tfc,digits-mlp", help="comma-separated presets")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--acc-bits", type=_ints, default=[32, 20, 16, 14, 12, 10], help="P values")
    p.add_argument("--quants", default="float,int,a2q,a2q+")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    return p.parse_args(argv)


def run_one(name, quant, acc_bits, seed, epochs, datasets):
    import torch

    from accumulus.quant.export import export_model, verify_onnx
    from accumulus.quant.models import preset
    from accumulus.quant.train import TrainOptions, train

    cfg = preset(name, quant=quant, acc_bits=acc_bits if quant in ("a2q", "a2q+") else None)
    key = (cfg.dataset, seed)
    if key not in datasets:
        from accumulus.quant.data import load_dataset

        datasets[key] = load_dataset(cfg.dataset, seed=seed)
    ds = datasets[key]
    t0 = time.perf_counter()
    model, res = train(cfg, None, TrainOptions(epochs=epochs, seed=seed, progress=False, float_baseline=False), dataset=ds)
    row = {"model": name, "quant": quant, "acc_bits": cfg.acc_bits, "seed": seed,
           "test_accuracy": res["test_accuracy"], "train_seconds": round(time.perf_counter() - t0, 2),
           "final_loss": res["history"][-1]["loss"]}
    if quant != "float":
        row.update(sparsity=res["sparsity"], constrained_sparsity=res["constrained_sparsity"],
                   layer_sparsity=res["layer_sparsity"])
        with tempfile.TemporaryDirectory() as tmp:
            path = export_model(model, cfg, tmp, torch.from_numpy(ds.x_test[:8]), res["test_accuracy"])
            widths = verify_onnx(path)      # raises if any constrained layer exceeds P
        row["exact_bits"] = {k: v["exact_bits"] for k, v in widths.items()}
        row["datatype_bits"] = {k: v["datatype_bits"] for k, v in widths.items()}
    return row


def summarize(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["quant"], r["acc_bits"]), []).append(r)
    out = []
    for (m, q, p), rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        s = {"model": m, "quant": q, "acc_bits": p, "seeds": len(rs), "accuracy_mean": float(np.mean(acc)),
             "accuracy_min": float(np.min(acc)), "accuracy_max": float(np.max(acc))}
        if q != "float":
            s["sparsity_mean"] = float(np.mean([r["sparsity"] for r in rs]))
            cs = [r["constrained_sparsity"] for r in rs if r["constrained_sparsity"] is not None]
            s["constrained_sparsity_mean"] = float(np.mean(cs)) if cs else None
            s["max_exact_bits_constrained"] = max(
                (b for r in rs for k, b in r["exact_bits"].items() if not k.startswith("/layers.0/")), default=None)
        out.append(s)
    return out


def plot(summary, models, acc_bits, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7), squeeze=False)
    for col, m in enumerate(models):
        ax, ax2 = axes[0][col], axes[1][col]
        flat = {s["quant"]: s for s in summary if s["model"] == m and s["acc_bits"] is None}
        for q, style in (("float", "k--"), ("int", "k:")):
            if q in flat:
                ax.axhline(flat[q]["accuracy_mean"], color="gray", linestyle=style[1:], label=f"{q} (no P)")
        for q, color in (("a2q", "tab:blue"), ("a2q+", "tab:red")):
            pts = sorted((s for s in summary if s["model"] == m and s["quant"] == q), key=lambda s: s["acc_bits"])
            if not pts:
                continue
            ps = [s["acc_bits"] for s in pts]
            mean = np.array([s["accuracy_mean"] for s in pts])
            err = np.array([[mn - s["accuracy_min"] for mn, s in zip(mean, pts)],
                            [s["accuracy_max"] - mn for mn, s in zip(mean, pts)]])
            ax.errorbar(ps, mean, yerr=err, marker="o", color=color, capsize=3, label=q.upper())
            ax2.plot(ps, [s["constrained_sparsity_mean"] for s in pts], marker="o", color=color, label=q.upper())
        ax.set_title(f"{m}: test accuracy vs target accumulator P")
        ax.set_xlabel("P (bits)")
        ax.set_ylabel("test accuracy")
        ax.set_xticks(acc_bits)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax2.set_title(f"{m}: zero weights in constrained layers")
        ax2.set_xlabel("P (bits)")
        ax2.set_ylabel("fraction of zero integer weights")
        ax2.set_xticks(acc_bits)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    import torch

    import brevitas
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    quants = [q for q in args.quants.split(",") if q]
    jobs = []
    # Seed outermost: a run stopped early still has every model and P for the seeds it finished.
    for seed in args.seeds:
        for m in models:
            for q in quants:
                for p in (args.acc_bits if q in ("a2q", "a2q+") else [None]):
                    jobs.append((m, q, p, seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "accuracy_vs_accumulator.json"
    rows, datasets = [], {}
    t0 = time.perf_counter()
    from dataclasses import asdict

    from accumulus.quant.train import TrainOptions

    train_options = {k: v for k, v in asdict(TrainOptions()).items()
                     if k in ("batch_size", "lr", "schedule", "test_fraction")}
    meta = {"benchmark": "accuracy_vs_accumulator", "models": models, "epochs": args.epochs,
            "train_options": {**train_options, "optimizer": "Adam"},
            "seeds": args.seeds, "acc_bits": args.acc_bits, "quants": quants, "threads": args.threads,
            "versions": {"torch": torch.__version__, "brevitas": brevitas.__version__,
                         "python": platform.python_version(), "numpy": np.__version__},
            "notes": "W4, A4 hidden, fixed-scale dataset input; a2q/a2q+ constrain every layer but the first "
                     "(first layer per-channel int QAT); float = same architecture without quantizers; "
                     "sparsity = fraction of zero integer weights; exact_bits from the exported QONNX integers."}
    bar = tqdm(jobs, desc="runs", dynamic_ncols=True, mininterval=1.0)
    for m, q, p, seed in bar:
        bar.set_postfix_str(f"{m} {q} P={p} seed={seed}")
        rows.append(run_one(m, q, p, seed, args.epochs, datasets))
        r = rows[-1]
        print(f"{m:10s} {q:5s} P={str(p):4s} seed={seed} acc={r['test_accuracy']:.4f} "
              f"sparsity={r.get('constrained_sparsity')} ({r['train_seconds']:.0f} s)", flush=True)
        summary = summarize(rows)
        json_path.write_text(json.dumps({**meta, "seconds": round(time.perf_counter() - t0, 1),
                                         "complete": len(rows) == len(jobs), "summary": summary, "runs": rows},
                                        indent=1))
    plot(summarize(rows), models, args.acc_bits, out / "accuracy_vs_accumulator.png")
    print(f"wrote {json_path} and {out / 'accuracy_vs_accumulator.png'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
