"""Compile time of an mnist-tfc-shaped QONNX graph (784-64-64-64-10, W4A4, 8-bit input).

The graph is built here with onnx.helper the way Brevitas' export_qonnx lays it out
(input Quant 1/255 8-bit unsigned, per-channel 4-bit narrow weight Quants, MatMul + bias,
ReLU + 4-bit unsigned Quant). Requirement (issue 4): compiling takes under 5 s.

    .venv/bin/python benchmarks/compile_speed.py [--out benchmarks/results/compile_speed.json] [--repeat 3]
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

LIMIT_S = 5.0


def tfc_model(seed=0, widths=(784, 64, 64, 64, 10)):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dom = "qonnx.custom_op.general"
    nodes, inits = [], []

    def const(v, name):
        inits.append(numpy_helper.from_array(np.asarray(v), name))
        return name

    def quant(x, s, bits, signed, narrow, name):
        nodes.append(helper.make_node("Quant", [x, const(np.float32(s) if np.ndim(s) == 0 else s, name + "_s"),
                                                const(np.float32(0), name + "_z"),
                                                const(np.float32(bits), name + "_b")],
                                      [name + "_out"], name=name, domain=dom, signed=int(signed),
                                      narrow=int(narrow), rounding_mode="ROUND"))
        return name + "_out"

    x = quant("x", 1 / 255, 8, False, False, "input_quant")
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x = "flat"
    for i in range(len(widths) - 1):
        k, n = widths[i], widths[i + 1]
        w = rng.normal(0, 1, (k, n)).astype(np.float32)
        w[rng.random((k, n)) < 0.5] = 0
        s = (np.abs(w).max(axis=0, keepdims=True) / 7).astype(np.float32)
        wq = quant(const(w, f"w{i}"), s, 4, True, True, f"wq{i}")
        nodes.append(helper.make_node("MatMul", [x, wq], [f"mm{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Add", [f"mm{i}", const(rng.normal(0, .3, n).astype(np.float32), f"b{i}")],
                                      [f"add{i}"], name=f"bias{i}"))
        x = f"add{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = quant(f"relu{i}", np.float32(rng.uniform(0.1, 0.5)), 4, False, False, f"act{i}")
    g = helper.make_graph(nodes, "tfc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, widths[-1]])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(dom, 1)])


def versions() -> dict:
    import onnx

    import accumulus
    return {"python": sys.version.split()[0], "numpy": np.__version__, "onnx": onnx.__version__,
            "accumulus": getattr(accumulus, "__version__", "unknown"), "platform": platform.platform(),
            "machine": platform.machine()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_speed.json"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    import onnx

    from accumulus.compiler.compile import compile_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tfc.onnx"
        onnx.save(tfc_model(), str(path))
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            plan = compile_model(path)
            times.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            plan.save(Path(tmp) / "out")
            save_s = time.perf_counter() - t1
    result = {
        "benchmark": "compile_speed", "model": "mnist-tfc shape 784-64-64-64-10 W4A4, 8-bit input (synthetic weights)",
        "compile_s": {"min": min(times), "median": float(np.median(times)), "max": max(times), "runs": times},
        "save_s": save_s, "limit_s": LIMIT_S, "pass": max(times) < LIMIT_S,
        "cycles_per_frame": plan.doc["estimate"]["cycles_per_frame"],
        "layers": [{"name": l["name"], "kind": l["kind"], "exact_max": max(l["acc"]["bits"]["exact"]),
                    "datatype": l["acc"]["bits"]["datatype"], "pe": l["folding"]["pe"], "simd": l["folding"]["simd"]}
                   for l in plan.layers if l["kind"] == "matvec"],
        "versions": versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"compile {result['compile_s']['median']:.2f} s (median of {len(times)}; limit {LIMIT_S} s) -> {args.out}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
