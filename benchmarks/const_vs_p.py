"""LUTs of the constant-weight engine (hw/constmv.py) against the trained accumulator width
P: digits-mlp trained with A2Q and A2Q+ at P = 10, 12, 14, 16 and with plain integer QAT
(``--quant int``, the same W4/A4 network), each compiled with ``--engine const``.

For every trained model and MAC layer the constant-weight engine of the layer's integer
matrix (accumulators out, ``exact`` policy, the plan's ``register_every``) is written by
Amaranth and synthesised with the project's Yosys script (boards/synth.py: ``proc;
splitnets; synth_ecp5 -nodsp -noflatten``; a CCU2C counts as two LUT4s); the engine's numpy
model is checked against ``compiler/golden.py`` first (random and worst-case vectors). The
first layer is plain integer QAT in every variant (the presets constrain the hidden layers
only), so it is reported apart from the constrained layers. Accuracy is the test accuracy
of the trained model; ``--seeds`` trains more seeds for the accuracy (mean, min, max) while
the hardware is synthesised for the first seed only.

Writes ``OUT/const_vs_p.json`` (tool versions, per model: accuracy, per layer LUT/FF,
adders, adder bits, exact widths; the plan's estimated LUTs beside the Yosys ones;
monotonicity checks; A2Q+ P=12 against plain QAT) and ``OUT/const_vs_p.png``.

    .venv/bin/python -P benchmarks/const_vs_p.py --root build/const_vs_p --out benchmarks/results
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_peer_spec = importlib.util.spec_from_file_location("da4ml_peer", Path(__file__).with_name("da4ml_peer.py"))
peer = importlib.util.module_from_spec(_peer_spec)
_peer_spec.loader.exec_module(peer)


def variants(ps):
    out = [("int", None)]
    for q in ("a2q+", "a2q"):
        out += [(q, p) for p in sorted(ps)]
    return out


def tag(quant, p, seed):
    name = quant.replace("+", "p") + (f"_P{p}" if p is not None else "")
    return f"{name}_s{seed}"


def main(argv=None):
    from accumulus.compiler.plan import Plan
    from accumulus.compiler.types import IntType

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="folder for the trained projects (reused when present)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--acc-bits", default="10,12,14,16", help="P values for a2q and a2q+")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (hardware: the first)")
    ap.add_argument("--no-synth", action="store_true", help="plan estimates only")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)
    ps = [int(v) for v in args.acc_bits.split(",") if v]
    seeds = [int(v) for v in args.seeds.split(",") if v]
    root = Path(args.root)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="const_vs_p_"))
    t_all = time.monotonic()
    models = []
    done: dict[str, dict] = {}     # an identical matrix (e.g. A2Q at two P above the bound) is synthesised once
    for quant, p in variants(ps):
        accs = []
        hw = None
        for seed in seeds:
            proj = root / tag(quant, p, seed)
            train = ["--preset", "digits-mlp", "--quant", quant, "--epochs", str(args.epochs), "--seed", str(seed)]
            if p is not None:
                train += ["--acc-bits", str(p)]
            plan_path = peer.ensure_project(proj, train, log=lambda s: print(s, file=sys.stderr))
            tj = json.loads((proj / "train.json").read_text())
            accs.append(float(tj["test_accuracy"]))
            if seed != seeds[0]:
                continue
            plan = Plan.load(plan_path)
            layers = []
            for idx, layer in enumerate(peer.mac_layers(plan)):
                w = np.asarray(plan.array(layer["weight"])).astype(np.int64)
                wtype, itype = IntType.from_json(layer["weight_type"]), IntType.from_json(layer["input_type"])
                every = int(layer.get("const", {}).get("register_every", 2))
                row = {"layer": layer["name"], "channels": int(w.shape[0]), "fan_in": int(w.shape[1]),
                       "constrained": idx > 0, "exact_bits_max": int(max(layer["acc"]["bits"]["exact"])),
                       "nonzero_weights": int(np.count_nonzero(w)), "zero_fraction": round(float(np.mean(w == 0)), 4),
                       "register_every": every,
                       "estimate_lut": layer.get("engine_cost", {}).get("const", {}).get("lut")}
                key = hashlib.sha256(w.tobytes() + str((w.shape, str(itype), every)).encode()).hexdigest()
                if not args.no_synth and key in done:
                    row.update({k: done[key][k] for k in ("graph", "check", "ok", "resources", "synth_seconds",
                                                          "error")})
                    row["same_matrix_as"] = done[key]["label"]
                elif not args.no_synth:
                    label = f"{tag(quant, p, seed).replace('.', '_')}_l{idx}"
                    x = peer.check_vectors(w, itype, 32, seed=idx)
                    srcs, top, info = peer.accumulus_design(label, w, wtype, itype, "const", work, x, every, "exact")
                    info.update(peer.synth(label, srcs, top, work, args.timeout))
                    row.update({"graph": info["graph"], "check": info["check"], "ok": info["ok"],
                                "resources": info["resources"], "synth_seconds": info["synth_seconds"],
                                "error": info["error"]})
                    done[key] = dict(row, label=label)
                layers.append(row)
            hw = layers
        m = {"quant": quant, "acc_bits": p, "seeds": seeds, "test_accuracy": accs,
             "accuracy_mean": float(np.mean(accs)), "accuracy_min": min(accs), "accuracy_max": max(accs),
             "layers": hw}
        m["estimate_lut"] = round(sum(l["estimate_lut"] or 0 for l in hw), 1)
        if all(l.get("ok") for l in hw):
            m["lut"] = int(sum(l["resources"]["lut"] for l in hw))
            m["ff"] = int(sum(l["resources"]["ff"] for l in hw))
            m["lut_constrained"] = int(sum(l["resources"]["lut"] for l in hw if l["constrained"]))
            m["adder_bits"] = int(sum(l["graph"]["adder_bits"] for l in hw))
        models.append(m)
        write(args, models, ps, seeds, time.monotonic() - t_all, complete=False)
    write(args, models, ps, seeds, time.monotonic() - t_all, complete=True)


def _monotone(models, quant, key):
    rows = sorted((m for m in models if m["quant"] == quant and key in m), key=lambda m: m["acc_bits"])
    vals = [m[key] for m in rows]
    # non-increasing as P falls; strictly where the bound binds (at P above the network's
    # unconstrained width the A2Q/A2Q+ constraint is inactive and the trained model is the same)
    if len(vals) < 2:
        return {"P": [m["acc_bits"] for m in rows], key: vals, "falls_as_P_falls": None}
    return {"P": [m["acc_bits"] for m in rows], key: vals,
            "falls_as_P_falls": all(a <= b for a, b in zip(vals, vals[1:])),
            "strictly": all(a < b for a, b in zip(vals, vals[1:]))}


def write(args, models, ps, seeds, seconds, complete):
    summary = {}
    for q in ("a2q", "a2q+"):
        summary[q] = {k: _monotone(models, q, k) for k in ("lut", "lut_constrained", "estimate_lut")}
    ref = next((m for m in models if m["quant"] == "int"), None)
    cmp = {}
    for q in ("a2q", "a2q+"):
        at12 = next((m for m in models if m["quant"] == q and m["acc_bits"] == 12), None)
        if ref and at12 and "lut" in ref and "lut" in at12:
            cmp[f"{q}_P12_vs_int"] = {
                "lut_ratio": round(at12["lut"] / ref["lut"], 3),
                "lut_ratio_constrained_layers": round(at12["lut_constrained"] / ref["lut_constrained"], 3),
                "accuracy_gap_mean": round(at12["accuracy_mean"] - ref["accuracy_mean"], 4)}
    doc = {"benchmark": "const_vs_p", "model": "digits-mlp (64-64-64-10, W4, A4 hidden, 5-bit input)",
           "epochs": args.epochs, "seeds": seeds, "acc_bits": ps, "family": "ecp5",
           "tools": peer.tool_versions(), "complete": complete, "seconds": round(seconds, 1),
           "notes": "engine alone per layer (accumulators out, exact policy, the plan's register_every); "
                    "layer 0 is plain int QAT in every variant; hardware from the first seed; "
                    "estimate_lut: the compiler's cost model (plan engine_cost.const.lut)",
           "summary": summary, "vs_plain_qat": cmp, "models": models}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "const_vs_p.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    plot(models, out / "const_vs_p.png")


def plot(models, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "lut" if all("lut" in m for m in models) else "estimate_lut"
    fig, ax = plt.subplots(figsize=(6, 4))
    for q, marker in (("a2q", "o"), ("a2q+", "s")):
        rows = sorted((m for m in models if m["quant"] == q and key in m), key=lambda m: m["acc_bits"])
        if rows:
            ax.plot([m["acc_bits"] for m in rows], [m[key] for m in rows], marker=marker, label=q.upper())
    ref = next((m for m in models if m["quant"] == "int" and key in m), None)
    if ref:
        ax.axhline(ref[key], color="grey", linestyle="--", label=f"plain QAT (acc {max(l['exact_bits_max'] for l in ref['layers'])} b)")
    ax.set_xlabel("trained accumulator width P (bits)")
    ax.set_ylabel("LUT4 (Yosys synth_ecp5)" if key == "lut" else "estimated LUTs")
    ax.set_title("digits-mlp, constant-weight engine, all three layers")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
