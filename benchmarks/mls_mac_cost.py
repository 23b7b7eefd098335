"""Yosys LUTs and FFs of the MLS MAC (hw/mls_mac.py; Zhong et al., "Exploring the Potential of
Low-bit Training of CNNs") against the INT4 and INT8 MAC cells of hw/mac.py, at equal dot
length.

The dot product is one 3x3 convolution output over ``--channels`` input channels
(``K = channels * 9`` products). Every accumulator is sized by its own rule:

* INT cells (``hw/mac.py``, signed x signed): the data-type bound ``Wb + Xb + ceil(log2 K)``;
* MLS: the intra-group width ``(2M+2) + (2^(E+1)-2) + ceil(log2(G*kh*kw)) + 1`` and the dot
  width ``+ 2(2^Eg-1) + ceil(log2(groups))`` (compiler/mls.py).

Designs: the bare MLS MAC cell (sign XOR, exponent add, (M+1)x(M+1) mantissa product,
alignment shift, intra-group accumulator: the like-for-like counterpart of an INT MAC cell),
the one-lane MLS dot engine (the cell plus the cross-group shift-add and dot accumulator:
what one lane costs to produce a finished dot product) and the G-lane engine (resources also
given per lane). Each design is written to Verilog by Amaranth and synthesised alone with the
project's Yosys script (boards/synth.py: ``proc; splitnets; synth_<family> -nodsp
-noflatten``; ECP5 LUTs count a CCU2C carry cell as two LUT4s). Before synthesis each model
is checked: the MLS engine's against ``compiler/mls.py``'s integer convolution on random and
worst-case operands, the INT cell's against the plain integer dot product.

Writes ``OUT/mls_mac_cost.json`` (tool versions, options, one table).

    .venv/bin/python -P benchmarks/mls_mac_cost.py --out benchmarks/results
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

KH = KW = 3


def designs(channels: int):
    from accumulus.compiler.accumulators import datatype_bits
    from accumulus.compiler.mls import FORMAT_1M2E, FORMAT_4M2E
    from accumulus.compiler.types import IntType
    from accumulus.hw.mac import MACSpec
    from accumulus.hw.mls_mac import MLSDotSpec, MLSMACSpec

    k = channels * KH * KW
    out = []
    for bits in (4, 8):
        t = IntType(bits, True)
        out.append((f"int{bits}_mac", "int_cell", MACSpec(t, t, datatype_bits(t, t, k)), {"bits": bits}))
    for fmt in (FORMAT_1M2E, FORMAT_4M2E):
        tag = f"{fmt.mantissa_bits}M{fmt.exponent_bits}E"
        groups = -(-channels // fmt.group_size)
        out.append((f"mls_{tag}_mac", "mls_cell", MLSMACSpec(fmt, fmt.group_size * KH * KW), {"format": fmt.name}))
        out.append((f"mls_{tag}_dot1", "mls_engine", MLSDotSpec(fmt, KH * KW, groups, lanes=1), {"format": fmt.name}))
        out.append((f"mls_{tag}_dot{fmt.group_size}", "mls_engine",
                    MLSDotSpec(fmt, KH * KW, groups, lanes=fmt.group_size), {"format": fmt.name}))
    return k, out


def check_model(label, kind, spec, channels, seed):
    """Refuse to measure a design whose numpy model disagrees with the golden semantics."""
    rng = np.random.default_rng(seed)
    if kind == "int_cell":
        t = spec.weight_type
        w = rng.integers(t.min, t.max + 1, (4, channels * KH * KW))
        x = rng.integers(t.min, t.max + 1, (4, channels * KH * KW))
        w[0], x[0] = t.min, t.min              # the data-type bound's extreme
        for wi, xi in zip(w, x):
            first = np.zeros(wi.size, bool)
            first[0] = True
            if int(spec.compute(wi, xi, first)[-1]) != int(np.dot(wi, xi)):
                raise SystemExit(f"{label}: the MAC model disagrees with the integer dot product")
        return
    from accumulus.compiler import mls

    fmt = spec.fmt
    if kind == "mls_cell":
        return   # the cell's terms are compiler.mls.mls_product itself; the engine check covers the sum
    w = mls.quantize(rng.standard_normal((3, channels, KH, KW)), fmt)
    x = mls.quantize(rng.standard_normal((2, channels, KH, KW)), fmt)
    ww = mls.worst_case_codes((2, channels, KH, KW), fmt)
    ww.sign[1] = 1
    xw = mls.worst_case_codes((1, channels, KH, KW), fmt)
    for wc, xc in ((w, x), (ww, xw)):
        want = mls.mls_conv2d(wc, xc).acc[:, :, 0, 0].reshape(-1)
        names = (("sign", "sign"), ("exponent", "exp"), ("mantissa", "man"), ("zero", "zero"))
        streams = [spec.arrange({b: getattr(wc, a)[n].reshape(channels, -1) for a, b in names},
                                {b: getattr(xc, a)[bi].reshape(channels, -1) for a, b in names},
                                wc.group_exponent[n], xc.group_exponent[bi])
                   for bi in range(xc.shape[0]) for n in range(wc.shape[0])]
        stream = {key: np.concatenate([s[key] for s in streams]) for key in streams[0]}
        if not np.array_equal(spec.compute(stream), want):
            raise SystemExit(f"{label}: the engine's model disagrees with compiler/mls.py")


def widths(kind, spec) -> dict:
    if kind == "int_cell":
        return {"acc_bits": spec.acc_bits}
    if kind == "mls_cell":
        return {"acc_bits": spec.acc_bits, "terms_per_group": spec.terms_per_group}
    return {"group_acc_bits": spec.group_acc_bits, "acc_bits": spec.acc_bits, "lanes": spec.lanes,
            "groups": spec.groups, "steps_per_dot": spec.steps_per_dot, "latency": spec.latency}


def main(argv=None):
    import amaranth
    from amaranth.back import verilog

    from accumulus.boards.synth import SynthJob, run_synth, yosys_version

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for mls_mac_cost.json")
    ap.add_argument("--channels", type=int, default=32, help="input channels of the 3x3 dot product (K = 9 x channels)")
    ap.add_argument("--families", default="ecp5,ice40", help="comma-separated Yosys families")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per Yosys run")
    ap.add_argument("--work", default=None, help="keep Yosys files here (default: a temporary folder)")
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]

    k, wanted = designs(args.channels)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mls_mac_cost_"))
    rows = []
    for label, kind, spec, info in wanted:
        check_model(label, kind, spec, args.channels, args.seed)
        top = f"mac_{label}"
        d = work / label
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{top}.v").write_text(verilog.convert(spec.create(), name=top))
        row = {"label": label, "kind": kind, **info, **widths(kind, spec), "resources": {}}
        for fam in families:
            print(f"{label} ({fam}): synthesising ...", file=sys.stderr, flush=True)
            res = run_synth(SynthJob(f"{label}/{fam}", [d / f"{top}.v"], top, fam, d / fam), timeout=args.timeout)
            if not res.ok:
                raise SystemExit(f"{label} ({fam}): Yosys failed: {res.error}")
            r = {key: res.total[key] for key in ("lut", "ff", "carry")}
            r["synth_seconds"] = round(res.seconds, 1)
            if kind == "mls_engine" and spec.lanes > 1:
                r["lut_per_lane"] = round(res.total["lut"] / spec.lanes, 1)
                r["ff_per_lane"] = round(res.total["ff"] / spec.lanes, 1)
            row["resources"][fam] = r
            row.setdefault("script", {})[fam] = res.script
            print(f"{label} ({fam}): {r}", file=sys.stderr, flush=True)
        rows.append(row)

    doc = {
        "benchmark": "mls_mac_cost",
        "dot": {"channels": args.channels, "kernel": [KH, KW], "dot_length": k},
        "families": families,
        "synth_options": "proc; splitnets; synth_<family> -nodsp -noflatten (boards/synth.py)",
        "tools": {"yosys": yosys_version(), "amaranth": amaranth.__version__, "python": platform.python_version()},
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": rows,
    }
    base = {f: next(r for r in rows if r["label"] == "int4_mac")["resources"][f] for f in families}
    for r in rows:
        r["lut_vs_int4"] = {f: round(r["resources"][f]["lut"] / base[f]["lut"], 2) for f in families}
        r["ff_vs_int4"] = {f: round(r["resources"][f]["ff"] / base[f]["ff"], 2) for f in families}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mls_mac_cost.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{'design':18s} {'acc':>8s} " + " ".join(f"{f + ' LUT':>9s} {f + ' FF':>8s}" for f in families))
    for r in rows:
        acc = f"{r.get('group_acc_bits', '')}/{r['acc_bits']}" if "group_acc_bits" in r else str(r["acc_bits"])
        print(f"{r['label']:18s} {acc:>8s} " + " ".join(
            f"{r['resources'][f]['lut']:>9d} {r['resources'][f]['ff']:>8d}" for f in families))


if __name__ == "__main__":
    main()
