"""Plan -> Verilog: ``rtl/accumulus_top.v`` (self-contained), one file per layer engine in
``rtl/layers/`` (for unit co-simulation) and ``rtl/build.json`` describing what was built.

build.json holds, per layer: the Verilog module and file, PE/SIMD, the accumulator width
built for each PE under the policy (beside the plan's exact per-PE widths), the
channel-to-PE permutation, latency and cycles per frame, and the stream ports with their
packing; at the top: the AXI-Stream ports and packing, the policy, and the cycle
estimates (ours and the plan's).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from accumulus.compiler.plan import Plan

from .top import Engine, GraphSpec, check_policy

__all__ = ["build", "BUILD_FORMAT_VERSION", "TOP_NAME"]

BUILD_FORMAT_VERSION = 1
TOP_NAME = "accumulus_top"


def _ports(component) -> list[dict]:
    from amaranth.hdl import Shape
    from amaranth.lib import wiring

    out = []
    for name, member in component.signature.members.flatten():
        if member.is_port:
            out.append({"name": "__".join(name), "dir": "in" if member.flow == wiring.In else "out",
                        "bits": Shape.cast(member.shape).width})
    return out


def _convert(component, name: str) -> str:
    from amaranth.back import verilog

    return verilog.convert(component, name=name, emit_src=False)


def build(plan: Plan, out_dir, acc_policy: str = "exact", layers: bool = True, progress=None) -> dict:
    """Write the RTL of ``plan`` under ``out_dir/rtl``; returns the build.json document."""
    acc_policy = check_policy(acc_policy)
    say = progress or (lambda msg: None)
    out_dir = Path(out_dir)
    rtl = out_dir / "rtl"
    (rtl / "layers").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    graph = GraphSpec(plan, acc_policy)
    say(f"sized {len(graph.engines)} engines under acc-policy {acc_policy}")

    top = graph.create()
    text = _convert(top, TOP_NAME)
    (rtl / f"{TOP_NAME}.v").write_text(text)
    say(f"wrote {rtl / (TOP_NAME + '.v')} ({len(text) // 1024} KiB, {time.perf_counter() - t0:.1f} s)")

    layer_docs = []
    for spec in graph.engines:
        info = spec.info()
        if layers:
            eng = Engine(spec)
            path = rtl / "layers" / f"{spec.module_name}.v"
            path.write_text(_convert(eng, spec.module_name))
            info["ports"] = _ports(eng)
            say(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")
        layer_docs.append(info)

    import amaranth

    doc = {
        "format_version": BUILD_FORMAT_VERSION,
        "plan": {"source": plan.doc.get("source", {}).get("model"), "arrays_sha256": plan.doc.get("arrays_sha256")},
        "acc_policy": acc_policy,
        "top": {
            "module": TOP_NAME, "file": f"{TOP_NAME}.v", "ports": _ports(top),
            "clock": "clk", "reset": "rst (synchronous, active high)",
            "packing": graph.packing(),
            "cycles_per_frame": graph.cycles_per_frame,
            "plan_cycles_per_frame": plan.doc.get("estimate", {}).get("cycles_per_frame"),
            "latency": graph.latency,
            "notes": "s_axis_tlast is ignored (frames have a fixed length); m_axis_tlast marks a frame's last beat",
        },
        "layers": layer_docs,
        "tools": {"amaranth": amaranth.__version__},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (rtl / "build.json").write_text(json.dumps(doc, indent=1) + "\n")
    say(f"wrote {rtl / 'build.json'}")
    return doc
