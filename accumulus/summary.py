"""The short summary `accumulus flow` ends with: what was made, how good, and where it is."""
from __future__ import annotations

import json
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(v, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def summarize(out: Path) -> str:
    lines = [f"accumulus flow: {out}"]
    train = _load(out / "train.json")
    if train:
        lines.append(
            f"  accuracy      float {_fmt(train.get('float_test_accuracy'), '.3f')}  "
            f"quantized {_fmt(train.get('test_accuracy'), '.3f')}  "
            f"({train.get('config', {}).get('quant', '?')}, P={train.get('config', {}).get('acc_bits')})"
        )
    if (out / "plan.json").exists():
        from accumulus.compiler.plan import Plan
        from accumulus.compiler.report import width_table

        lines.append("  accumulator widths (bits):")
        lines += ["    " + row for row in width_table(Plan.load(out)).splitlines()]
    sim = _load(out / "sim" / "results.json")
    if sim:
        verdict = "bit-exact" if sim.get("passed") else f"FAILED ({sim.get('mismatches')} mismatching elements)"
        lines.append(
            f"  co-simulation {sim.get('simulator')}: {sim.get('frames')} frames {verdict}, back-pressure "
            f"{sim.get('backpressure')}; {sim.get('cycles_per_frame')} cycles/frame "
            f"(plan estimate {sim.get('cycles_per_frame_estimate')})"
        )
    rep = _load(out / "reports" / "report.json")
    if rep:
        board = rep.get("board", {})
        lines.append(f"  board         {board.get('id')} ({board.get('part')})")
        for pol in rep.get("policies", []):
            entry = rep["policy"].get(pol, {})
            for var, syn in entry.get("synth", {}).items():
                if not syn.get("ok"):
                    lines.append(f"    {pol:>10} [{var}]: synthesis failed: {syn.get('error')}")
                    continue
                t = syn["total"]
                pnr = entry.get("pnr") or {}
                fits = pnr.get("fits", all(syn.get("fits", {}).values()) if isinstance(syn.get("fits"), dict) else None)
                lines.append(
                    f"    {pol:>10} [{var}]: LUT {t.get('lut')}  FF {t.get('ff')}  DSP {t.get('dsp')}  "
                    f"BRAM bits {t.get('bram_bits')}  Fmax {_fmt(pnr.get('fmax_mhz'), '.1f')} MHz  fits {fits}"
                )
        for var, others in rep.get("savings", {}).items():
            for other, s in others.items():
                tot = s["total"]
                parts = [f"{k.upper()} {tot[k]['ratio']:.2f}x" for k in ("lut", "ff", "dsp")
                         if k in tot and tot[k].get("ratio")]
                lines.append(f"  saving of exact vs {other} [{var}]: " + ", ".join(parts))
    lines.append("  artifacts:")
    for name, what in (("model.onnx", "QONNX model"), ("plan.json", "plan (+ plan.npz)"),
                       ("rtl/accumulus_top.v", "Verilog top"), ("rtl/build.json", "build description"),
                       ("sim/results.json", "co-simulation results"), ("reports/report.md", "cost report")):
        if (out / name).exists():
            lines.append(f"    {what:<22} {out / name}")
    return "\n".join(lines)
