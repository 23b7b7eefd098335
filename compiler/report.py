"""The width table: per MAC layer, data-type / A2Q / A2Q+ / exact (max and per PE) / target P,
and the engine (folded ROM or constant-weight) with its estimated LUTs, and Sakr & Shanbhag's
full-adder count per layer (compiler/cost.py)."""
from __future__ import annotations

import numpy as np

from .cost import layer_full_adders
from .plan import Plan


def width_rows(plan: Plan) -> list[dict]:
    rows = []
    for layer in plan.layers:
        if layer["kind"] not in ("matvec", "conv"):
            continue
        bits = layer["acc"]["bits"]
        exact = np.asarray(bits["exact"])
        pe_bits = layer["folding"]["pe_acc_bits"]
        rows.append({
            "layer": layer["name"], "kind": layer["kind"], "K": layer["fan_in"], "N": layer["channels"],
            "datatype": bits["datatype"], "a2q": int(max(bits["a2q"])), "a2q_plus": int(max(bits["a2q_plus"])),
            "exact": int(exact.max()), "exact_min": int(exact.min()), "pe_bits": list(pe_bits),
            "target": bits["target"], "pe": layer["folding"]["pe"], "simd": layer["folding"]["simd"],
            "cycles": layer.get("cycles_per_frame"),
            "saving": int(bits["datatype"] - exact.max()),
            "engine": layer.get("engine", "rom"),
            "engine_cost": layer.get("engine_cost"),
            "const": layer.get("const"),
            "full_adders": layer_full_adders(layer)["full_adders"],
        })
    return rows


def _pe_text(pe_bits: list[int]) -> str:
    """Built width per PE: the list for a few PEs, else ``width:count`` pairs."""
    if len(pe_bits) <= 4:
        return ",".join(str(b) for b in pe_bits)
    vals, counts = np.unique(pe_bits, return_counts=True)
    return " ".join(f"{v}:{c}" for v, c in zip(vals[::-1], counts[::-1]))


def _cost_text(costs) -> str:
    """Estimated LUTs of both engines (``-`` where the plan has no estimate)."""
    if not costs:
        return "-"
    return "/".join(f"{costs[e]['lut']:.0f}" if e in costs else "-" for e in ("rom", "const"))


def _const_text(graph, key) -> str:
    return "-" if not graph else str(graph[key])


def _digits_text(graph) -> str:
    """The most CSD digits of one channel against the bound of the trained P."""
    if not graph:
        return "-"
    bound = graph.get("digit_bound")
    return f"{graph['csd_digits_max']}/{'-' if bound is None else bound}"


def width_table(plan: Plan) -> str:
    rows = width_rows(plan)
    head = ["layer", "K x N", "datatype", "A2Q", "A2Q+", "exact", "per-PE bits", "target P", "saving", "PExSIMD",
            "cycles", "engine", "est. LUT rom/const", "adders", "digits/bound",
            "full adders"]
    lines = []
    for r in rows:
        lines.append([r["layer"], f"{r['K']}x{r['N']}", str(r["datatype"]), str(r["a2q"]), str(r["a2q_plus"]),
                      f"{r['exact_min']}..{r['exact']}" if r["exact_min"] != r["exact"] else str(r["exact"]),
                      _pe_text(r["pe_bits"]), "-" if r["target"] is None else str(r["target"]),
                      f"{r['saving']} bits ({100 * r['saving'] / r['datatype']:.0f}%)",
                      f"{r['pe']}x{r['simd']}", str(r["cycles"]), r["engine"], _cost_text(r["engine_cost"]),
                      _const_text(r["const"], "adders"), _digits_text(r["const"]), str(r["full_adders"])])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
    est = plan.doc.get("estimate") or {}
    if rows:
        dt = sum(r["datatype"] * r["N"] for r in rows)
        ex = sum(sum(r["pe_bits"]) * (r["N"] // r["pe"]) for r in rows)
        out.append(f"accumulator bits (sum over channels): data-type {dt}, exact per PE {ex} "
                   f"({100 * (dt - ex) / dt:.0f}% fewer)")
        out.append(f"full adders (Sakr & Shanbhag, per frame): {sum(r['full_adders'] for r in rows)}")
    if est:
        out.append(f"estimate: {est.get('cycles_per_frame')} cycles per frame (bottleneck {est.get('bottleneck')})")
    for note in plan.doc.get("notes") or []:
        out.append(f"note: {note}")
    for note in est.get("notes") or []:
        out.append(f"note: {note}")
    return "\n".join(out)
