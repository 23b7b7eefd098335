"""digits-mlp (A2Q+ P=12), every layer constant-weight: LUTs of accumulus' constant-weight
engine (hw/constmv.py) against da4ml's distributed-arithmetic design of the same matrices
(da4ml 0.6.0, Sun et al., "da4ml: Distributed Arithmetic for Real-time Neural Networks on
FPGAs", 2025, LGPLv3) and against the folded ROM engine (hw/mvu.py) at the same
one-vector-per-cycle throughput (PE = N, SIMD = K), through the same Yosys script
(boards/synth.py: ``proc; splitnets; synth_ecp5 -nodsp -noflatten``; a CCU2C carry cell
counts as two LUT4s, as nextpnr counts it).

For each MAC layer of the trained, ``--engine const``-compiled plan, the layer's integer
weight matrix W (N x K) and input type are taken from the plan, and each design computes
the accumulators ``y = W @ x`` only (no requantizer: the matrix-vector product is what is
compared; da4ml's kernel is the same product):

* ``const_exact`` / ``const_datatype`` / ``const_fixed32``: the constant-weight engine
  under the three accumulator policies (``exact``: every adder at the exact width of its
  own partial sum; ``datatype`` / ``fixed:32``: every adder and accumulator at that width);
  pipeline registers every ``register_every`` adder levels, as the plan records.
  Every adder's wire is ``(* keep *)`` (hw/constmv.py ``keep_adders``): without it Yosys'
  ``alumacc`` merges chains of two-operand adders that share a pipeline stage into
  multi-operand ``$macc`` cells, which ``synth_ecp5`` maps to LUT4 compressor trees instead of
  CCU2C carry chains; the attribute keeps one carry chain per adder, as da4ml's
  one-module-instance-per-adder Verilog gets under ``-noflatten``;
* ``da4ml``: ``FixedVariableArrayInput(K).quantize(k, i, 0) @ W.T`` traced with
  ``comb_trace`` (da4ml's default solver, ``HWConfig(1, -1, -1)``: one latency unit per
  adder), written by ``VerilogModel(..., latency_cutoff=register_every)`` (the same adder
  levels per register stage), its ``src/*.v`` and ``src/static/*.v`` synthesised with the
  top being the core module;
* ``const_exact_nokeep``: ``const_exact`` without the attribute;
* ``const_da4ml_graph``: ``const_exact`` built over da4ml's shift-and-add graph of the same
  matrix (``AdderGraph(solver="da4ml")``: da4ml's optimisation step, our sizing, pipeline and
  stream interface);
* ``rom_full`` (``--rom``): the ROM engine at PE = N, SIMD = K (one vector per cycle);
  slow: the 64 x 64 one takes about 400 s of Yosys.

Every design is checked before synthesis: the constant engine's and the ROM engine's numpy
models against ``compiler/golden.py``, da4ml's Python model (``CombLogic.predict``) and
its emitted Verilog (Icarus Verilog, ``iverilog -g2012``) against ``x @ W.T``, on random
and worst-case vectors (each channel driven to both ends of its exact range).

Writes ``OUT/da4ml_peer.json`` (tool versions, per layer and design: resources, adder
graph report, check results; totals per design and the ratios).

    .venv/bin/python -P benchmarks/da4ml_peer.py --project build/dm --out benchmarks/results [--rom]

``--project DIR`` must hold ``plan.json`` of ``accumulus compile --engine const``; if it
does not exist, the script runs ``accumulus train --preset digits-mlp --epochs 10 --seed 0``
and that compile there first.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# our constant-weight designs: (accumulator policy, ConstMVSpec options)
POLICIES = {"const_exact": ("exact", {}), "const_datatype": ("datatype", {}), "const_fixed32": ("fixed:32", {}),
            "const_exact_nokeep": ("exact", {"keep_adders": False}),
            "const_da4ml_graph": ("exact", {"solver": "da4ml"})}


# -- the project ----------------------------------------------------------------------------
def ensure_project(project: Path, train_args: list[str], log=print) -> Path:
    """``project/plan.json`` of a constant-weight compile, training and compiling if missing."""
    plan = project / "plan.json"
    if plan.exists():
        return plan
    exe = shutil.which("accumulus", path=str(Path(sys.executable).parent)) or "accumulus"
    project.mkdir(parents=True, exist_ok=True)
    if not (project / "model.onnx").exists():
        cmd = [exe, "train", *train_args, "--threads", "1", "--quiet", "--out", str(project)]
        log(" ".join(cmd))
        subprocess.run(cmd, check=True)
    cmd = [exe, "compile", str(project / "model.onnx"), "--out", str(project), "--engine", "const", "--quiet"]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)
    return plan


def mac_layers(plan):
    return [l for l in plan.layers if l["kind"] in ("matvec", "conv")]


def accumulator_plan(w: np.ndarray, weight_type, input_type, pe: int = 1, simd: int = 1):
    """A one-layer plan ``y = W @ x`` with accumulators out (no requant), for engine-alone
    synthesis of a trained layer's matrix."""
    from accumulus.compiler.plan import FORMAT_VERSION, Plan
    from accumulus.compiler.synthetic import _mac_layer
    from accumulus.compiler.types import IntType

    arrays: dict = {}
    layer, lw = _mac_layer("fc", "matvec", "x", "y", np.asarray(w, dtype=np.int64), weight_type, input_type, None,
                           pe, simd, np.random.default_rng(0), arrays)
    k = int(w.shape[1])
    doc = {
        "format_version": FORMAT_VERSION,
        "source": {"model": "benchmark:one-layer", "sha256": "", "metadata": None},
        "input": {"tensor": "x", "onnx_name": "x", "onnx_shape": [1, k], "scale": 1.0, "zero_point": 0,
                  "type": input_type.to_json(), "rounding_mode": "ROUND"},
        "tensors": {"x": {"shape": [k], "type": input_type.to_json(), "scale": 1.0},
                    "y": {"shape": [int(w.shape[0])], "type": IntType(max(int(b) for b in lw.exact), True).to_json(),
                          "scale": 1.0}},
        "layers": [layer],
        "output": {"tensor": "y", "onnx_name": "y", "kind": "codes", "dequant": None, "trailing": []},
        "estimate": {"cycles_per_frame": layer["cycles_per_frame"]},
        "options": {"synthetic": True},
    }
    plan = Plan(doc, arrays)
    return plan, plan.layers[0]


def check_vectors(w: np.ndarray, input_type, n_random: int, seed: int) -> np.ndarray:
    """Random codes over the input range plus every channel's worst-case vectors."""
    from accumulus.compiler.accumulators import worst_case_inputs

    rng = np.random.default_rng(seed)
    x = rng.integers(input_type.min, input_type.max + 1, size=(n_random, w.shape[1]))
    return np.concatenate([x, *worst_case_inputs(w, input_type)]).astype(np.int64)


# -- our engines --------------------------------------------------------------------------------
def accumulus_design(label: str, w, wtype, itype, engine: str, work: Path, x: np.ndarray,
                     register_every: int = 2, acc_policy: str = "exact", cse: bool = True, **const_opts):
    """Verilog of our engine for ``W`` (accumulators out) and its checked numpy model."""
    from amaranth.back import verilog

    from accumulus.compiler import golden
    from accumulus.hw.constmv import ConstMVSpec
    from accumulus.hw.mvu import MVUSpec

    n, k = w.shape
    if engine == "const":
        plan, layer = accumulator_plan(w, wtype, itype)
        spec = ConstMVSpec(plan, layer, acc_policy=acc_policy, register_every=register_every, cse=cse, **const_opts)
    else:
        plan, layer = accumulator_plan(w, wtype, itype, pe=n, simd=k)
        spec = MVUSpec(plan, layer, acc_policy=acc_policy)
    want = golden.run_layer(plan, layer, {"x": x})
    if not np.array_equal(want, x @ w.T):
        raise SystemExit(f"{label}: compiler/golden.py disagrees with x @ W.T")
    agree = bool(np.array_equal(spec.compute(x), want))
    if not agree:
        raise SystemExit(f"{label}: the engine's model disagrees with compiler/golden.py")
    info = {"engine": engine, "acc_policy": acc_policy, "cycles_per_vector": spec.cycles_per_frame,
            "latency": spec.latency, "check": {"vectors": int(len(x)), "model_equals_golden": agree}}
    if engine == "const":
        rep = spec.report()
        info["register_every"] = register_every
        info["graph"] = {key: v for key, v in rep.items() if not isinstance(v, list)}
    else:
        info["pe"], info["simd"] = spec.pe, spec.simd
    top = label
    d = work / label
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    (d / f"{top}.v").write_text(verilog.convert(spec.create(), name=top))
    info["verilog_seconds"] = round(time.monotonic() - t0, 2)
    return [d / f"{top}.v"], top, info


# -- da4ml ---------------------------------------------------------------------------------------
def da4ml_design(label: str, w: np.ndarray, itype, work: Path, x: np.ndarray, latency_cutoff: int,
                 simulate: bool = True):
    """da4ml's design of ``y = W @ x``: traced, solved, written as Verilog, checked."""
    from da4ml.codegen import VerilogModel
    from da4ml.trace import FixedVariableArrayInput, HWConfig, comb_trace

    n, k = w.shape
    t0 = time.monotonic()
    inp = FixedVariableArrayInput(k, hwconf=HWConfig(1, -1, -1))
    # da4ml's (keep_negative, integer bits, fractional bits) of the input code type
    sign = int(itype.signed)
    xq = inp.quantize(sign, itype.bits - sign, 0)
    y = xq @ np.ascontiguousarray(w.T.astype(np.float64))
    comb = comb_trace(inp, y)
    solve_s = time.monotonic() - t0
    pred = np.asarray(comb.predict(x.astype(np.float64)))
    want = x @ w.T
    model_ok = bool(np.array_equal(pred.astype(np.int64), want) and np.all(pred == np.round(pred)))
    if not model_ok:
        raise SystemExit(f"{label}: da4ml's model (CombLogic.predict) disagrees with x @ W.T")
    prj = work / label
    if prj.exists():
        shutil.rmtree(prj)
    model = VerilogModel(comb, label, prj, latency_cutoff=latency_cutoff, print_latency=False)
    model.write()
    pipe = model._pipe
    stages = len(pipe.solutions) if pipe is not None else 0
    srcs = da4ml_sources(prj)
    info = {"engine": "da4ml", "latency_cutoff": latency_cutoff, "stages": stages,
            "latency": stages + 1, "cycles_per_vector": 1, "solve_seconds": round(solve_s, 2),
            "cost": float(comb.cost), "adders": int(sum(1 for op in comb.ops if op.opcode in (0, 1))),
            "ops": len(comb.ops),
            "reg_bits": int(pipe.reg_bits) if pipe is not None else None,
            "check": {"vectors": int(len(x)), "python_model_equals_W_x": model_ok}}
    if simulate:
        got = simulate_da4ml(prj, label, comb, x, stages + 1)
        info["check"]["verilog_equals_W_x"] = bool(np.array_equal(got, want))
        if not info["check"]["verilog_equals_W_x"]:
            bad = int(np.sum(np.any(got != want, axis=1)))
            raise SystemExit(f"{label}: da4ml's Verilog (Icarus) disagrees with x @ W.T on {bad} vectors")
    # the wrapper only repacks wires; the core module is the design
    srcs = [s for s in srcs if s.name != f"{label}_wrapper.v"]
    return srcs, label, info


def da4ml_sources(prj: Path) -> list[Path]:
    """The design's ``src/*.v`` and the ``src/static/*.v`` library modules it instantiates
    (the unused ones are left out: Icarus 11 rejects lookup_table.v's parameter expression)."""
    own = sorted((prj / "src").glob("*.v"))
    text = "\n".join(p.read_text() for p in own)
    lib = [p for p in sorted((prj / "src" / "static").glob("*.v")) if f"{p.stem} #(" in text or f"{p.stem} " in text]
    return own + lib


def simulate_da4ml(prj: Path, name: str, comb, x: np.ndarray, latency: int) -> np.ndarray:
    """Run da4ml's wrapper (uniform element widths) in Icarus Verilog, one vector per cycle."""
    from da4ml.types import minimal_kif

    iverilog = shutil.which("iverilog")
    if not iverilog:
        raise SystemExit("iverilog not found: install Icarus Verilog (apt-get install iverilog) or pass --no-sim")
    kin = [minimal_kif(q) for q in comb.inp_qint]
    kout = [minimal_kif(q) for q in comb.out_qint]
    wi = max(p.keep_negative for p in kin) + max(p.integers for p in kin) + max(p.fractional for p in kin)
    fo = max(p.fractional for p in kout)
    wo = max(p.keep_negative for p in kout) + max(p.integers for p in kout) + fo
    signed_out = any(p.keep_negative for p in kout)
    fi = max(p.fractional for p in kin)
    k, n = comb.shape
    words = []
    for row in x:
        v = 0
        for j, c in enumerate(row):
            v |= (int(c) << fi & ((1 << wi) - 1)) << (j * wi)
        words.append(v)
    sim = prj / "sim_icarus"
    sim.mkdir(exist_ok=True)
    (sim / "vectors.hex").write_text("".join(f"{v:x}\n" for v in words))
    cycles = len(words) + latency + 2
    tb = f"""`timescale 1ns/1ps
module tb;
  reg clk = 0;
  reg [{k * wi - 1}:0] mem [0:{len(words) - 1}];
  reg [{k * wi - 1}:0] inp = 0;
  wire [{n * wo - 1}:0] out;
  integer t;
  {name}_wrapper dut (.clk(clk), .model_inp(inp), .model_out(out));
  initial begin
    $readmemh("vectors.hex", mem);
    for (t = 0; t < {cycles}; t = t + 1) begin
      if (t < {len(words)}) inp = mem[t];
      #1 clk = 1; #1 clk = 0;
      $display("%0d %h", t, out);
    end
    $finish;
  end
endmodule
"""
    (sim / "tb.v").write_text(tb)
    srcs = [str(p) for p in da4ml_sources(prj)]
    subprocess.run([iverilog, "-g2012", "-o", "tb.vvp", "tb.v", *srcs], cwd=sim, check=True, capture_output=True)
    out = subprocess.run(["vvp", "-n", "tb.vvp"], cwd=sim, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            rows[int(parts[0])] = int(parts[1], 16) if "x" not in parts[1].lower() else None
    got = np.zeros((len(words), n), dtype=np.int64)
    for t in range(len(words)):
        # vector t enters at the edge ending cycle t; the output register holds it `latency` edges later
        word = rows.get(t + latency - 1)
        if word is None:
            got[t] = np.iinfo(np.int64).min
            continue
        for c in range(n):
            v = (word >> (c * wo)) & ((1 << wo) - 1)
            if signed_out and v >> (wo - 1):
                v -= 1 << wo
            got[t, c] = v >> fo if fo >= 0 else v << -fo
    return got


# -- synthesis -------------------------------------------------------------------------------------
def synth(label: str, srcs, top: str, work: Path, timeout: float, flatten: bool = False) -> dict:
    from accumulus.boards.synth import SynthJob, run_synth

    print(f"{label}: synthesising{' (flattened)' if flatten else ''} ...", file=sys.stderr, flush=True)
    res = run_synth(SynthJob(label, list(srcs), top, "ecp5", work / label / ("synth_flat" if flatten else "synth"),
                             flatten=flatten), timeout=timeout)
    print(f"{label}: {res.total if res.ok else res.error} ({res.seconds:.0f} s)", file=sys.stderr, flush=True)
    return {"ok": res.ok, "synth_seconds": round(res.seconds, 1), "resources": res.total, "error": res.error,
            "script": res.script}


def tool_versions() -> dict:
    import amaranth
    import da4ml

    from accumulus.boards.synth import yosys_version

    iv = shutil.which("iverilog")
    ivv = subprocess.run([iv, "-V"], capture_output=True, text=True).stdout.splitlines()[0] if iv else None
    return {"yosys": yosys_version(), "amaranth": amaranth.__version__, "da4ml": da4ml.__version__,
            "iverilog": ivv, "python": platform.python_version(), "numpy": np.__version__}


def totals(layers: list[dict], labels) -> dict:
    out = {}
    for lab in labels:
        rows = [l["designs"].get(lab) for l in layers]
        if rows and all(r is not None and r.get("ok") for r in rows):
            out[lab] = {key: int(sum(r["resources"][key] for r in rows)) for key in ("lut", "ff", "carry")}
    return out


def main(argv=None):
    from accumulus.compiler.plan import Plan
    from accumulus.compiler.types import IntType

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", required=True, help="folder with plan.json (accumulus compile --engine const)")
    ap.add_argument("--train", default="--preset digits-mlp --epochs 10 --seed 0",
                    help="accumulus train options if the project has no model yet")
    ap.add_argument("--out", default="benchmarks/results", help="folder for da4ml_peer.json")
    ap.add_argument("--name", default="da4ml_peer", help="output file stem")
    ap.add_argument("--designs", default="const_exact,da4ml,const_datatype,const_fixed32",
                    help=f"comma-separated: {', '.join([*POLICIES, 'da4ml', 'rom_full'])}")
    ap.add_argument("--rom", action="store_true", help="also rom_full (PE=N, SIMD=K; slow)")
    ap.add_argument("--flatten", action="store_true",
                    help="also synthesise const_exact and da4ml flattened (synth_ecp5 without -noflatten)")
    ap.add_argument("--layers", default="", help="comma-separated layer indices (default: all MAC layers)")
    ap.add_argument("--register-every", type=int, default=None,
                    help="adder levels per register stage (default: the plan's const.register_every)")
    ap.add_argument("--vectors", type=int, default=48, help="random check vectors (plus worst cases)")
    ap.add_argument("--no-sim", action="store_true", help="skip the Icarus check of da4ml's Verilog")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per Yosys run")
    ap.add_argument("--work", default=None, help="keep design files here (default: a temporary folder)")
    ap.add_argument("--merge", default=None, help="an earlier OUT json whose layers not run now are kept")
    args = ap.parse_args(argv)

    designs = [d for d in args.designs.split(",") if d]
    if args.rom and "rom_full" not in designs:
        designs.append("rom_full")
    plan_path = ensure_project(Path(args.project), args.train.split(), log=lambda s: print(s, file=sys.stderr))
    plan = Plan.load(plan_path)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="da4ml_peer_"))
    work.mkdir(parents=True, exist_ok=True)
    layers_out = []
    if args.merge:
        layers_out = [l for l in json.loads(Path(args.merge).read_text())["layers"]]
    wanted = [int(i) for i in args.layers.split(",") if i]
    t_all = time.monotonic()
    for idx, layer in enumerate(mac_layers(plan)):
        if wanted and idx not in wanted:
            continue
        w = np.asarray(plan.array(layer["weight"])).astype(np.int64)
        wtype, itype = IntType.from_json(layer["weight_type"]), IntType.from_json(layer["input_type"])
        every = args.register_every if args.register_every is not None else int(layer.get("const", {}).get(
            "register_every", 2))
        x = check_vectors(w, itype, args.vectors, seed=idx)
        row = {"layer": layer["name"], "channels": int(w.shape[0]), "fan_in": int(w.shape[1]),
               "weight_type": str(wtype), "input_type": str(itype), "engine_in_plan": layer.get("engine"),
               "register_every": every, "exact_bits_max": int(max(layer["acc"]["bits"]["exact"])),
               "datatype_bits": int(layer["acc"]["bits"]["datatype"]),
               "nonzero_weights": int(np.count_nonzero(w)), "zero_fraction": round(float(np.mean(w == 0)), 4),
               "designs": {}}
        for d in designs:
            label = f"l{idx}_{d}"
            if d in POLICIES:
                pol, opts = POLICIES[d]
                srcs, top, info = accumulus_design(label, w, wtype, itype, "const", work, x, every, pol, **opts)
            elif d == "rom_full":
                srcs, top, info = accumulus_design(label, w, wtype, itype, "rom", work, x)
            elif d == "da4ml":
                srcs, top, info = da4ml_design(label, w, itype, work, x, every, simulate=not args.no_sim)
            else:
                raise SystemExit(f"unknown design {d!r} ({', '.join([*POLICIES, 'da4ml', 'rom_full'])})")
            info.update(synth(label, srcs, top, work, args.timeout))
            if args.flatten and d in ("const_exact", "da4ml"):
                info["flattened"] = synth(label, srcs, top, work, args.timeout, flatten=True)
            row["designs"][d] = info
        for old in layers_out:
            if old["layer"] == row["layer"]:
                row["designs"] = {**old["designs"], **row["designs"]}
        layers_out = [l for l in layers_out if l["layer"] != row["layer"]] + [row]
        layers_out.sort(key=lambda l: [m["name"] for m in mac_layers(plan)].index(l["layer"]))
        # partial results survive a later failure
        write(args, plan_path, designs, layers_out, time.monotonic() - t_all, complete=False)
    write(args, plan_path, designs, layers_out, time.monotonic() - t_all, complete=True)


def write(args, plan_path: Path, designs, layers_out, seconds: float, complete: bool):
    designs = list(dict.fromkeys([*designs, *(d for l in layers_out for d in l["designs"])]))
    tot = totals(layers_out, designs)
    ratios = {}
    for a in POLICIES:
        for b in ("da4ml", "rom_full", "const_exact"):
            if a != b and a in tot and b in tot:
                ratios[f"{a}/{b}"] = round(tot[a]["lut"] / tot[b]["lut"], 3)
    flat = {}
    for d in ("const_exact", "da4ml"):
        rows = [l["designs"].get(d, {}).get("flattened") for l in layers_out]
        if rows and all(r and r.get("ok") for r in rows):
            flat[d] = {key: int(sum(r["resources"][key] for r in rows)) for key in ("lut", "ff", "carry")}
    plan = json.loads(plan_path.read_text())
    train = plan_path.parent / "train.json"
    doc = {
        "benchmark": "da4ml_peer",
        "project": str(plan_path.parent),
        "model": plan.get("source", {}).get("model"),
        "train": json.loads(train.read_text()) if train.exists() else None,
        "family": "ecp5",
        "tools": tool_versions(),
        "designs": designs,
        "complete": complete,
        "seconds": round(seconds, 1),
        "layers": layers_out,
        "totals": tot,
        "totals_flattened": flat,
        "lut_ratios": ratios,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
