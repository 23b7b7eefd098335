"""The compiler driver: ONNX path -> :class:`compiler.plan.Plan`.

front end -> IR -> lower -> fuse -> size -> fold -> plan, with ``verify()`` after every
pass. ``compile_model`` is what ``accumulus compile`` calls.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ir import IntGraph, IntKind, MAC_KINDS
from .plan import FORMAT_VERSION, Plan
from .types import IntType

__all__ = ["compile_model", "CompileOptions", "plan_from_intgraph"]


@dataclass
class CompileOptions:
    target_fps: float | None = None
    clock_mhz: float | None = None
    max_pes: int | None = None
    board: str | None = None
    budget: dict | None = None
    family: str | None = None
    binds: dict = field(default_factory=dict)
    input_type: str | None = None        # --input-type for a float graph input
    input_scale: float | None = None
    engine: str = "auto"                 # --engine rom | const | auto (compiler/passes/fold.py)
    const_solver: str = "csd"            # --const-solver csd | da4ml (compiler/addergraph.py)
    board_clock_mhz: float | None = None  # the board's clock (boards/data), when --clock-mhz is absent


def _jsonable(v, arrays, key):
    if isinstance(v, IntType):
        return v.to_json()
    if isinstance(v, np.ndarray):
        arrays[key] = v
        return key
    if isinstance(v, dict):
        return {k: _jsonable(x, arrays, f"{key}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, arrays, key) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def plan_from_intgraph(ig: IntGraph, source: dict, estimate: dict, options: dict) -> Plan:
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for layer in ig.layers:
        d = {"name": layer.name, "kind": layer.kind.value, "inputs": list(layer.inputs), "output": layer.output,
             "onnx_nodes": list(layer.onnx_nodes)}
        for k, v in layer.params.items():
            if k in ("acc_tensor",):
                continue
            d[k] = _jsonable(v, arrays, f"{layer.name}.{k}")
        if layer.kind in MAC_KINDS:
            d["acc"].pop("l1", None)
        layers.append(d)
    tensors = {}
    for name, t in ig.tensors.items():
        tensors[name] = {"shape": list(t.shape), "type": t.type.to_json(),
                         "scale": list(t.scale) if len(t.scale) > 1 else t.scale[0],
                         "zero_point": list(t.zero_point) if len(t.zero_point) > 1 else t.zero_point[0]}
    out = dict(ig.output)
    out["index"] = _jsonable(np.asarray(out["index"], dtype=np.int64), arrays, "output.index")
    doc = {"format_version": FORMAT_VERSION, "source": source, "input": dict(ig.input), "tensors": tensors,
           "layers": layers, "output": out,
           "estimate": estimate, "options": options, "notes": list(ig.notes)}
    return Plan(doc, arrays)


def compile_model(path, opts: CompileOptions | None = None, progress=None) -> Plan:
    """Compile the ONNX model at ``path`` into a plan (not saved)."""
    from .frontend.load import load
    from .passes.fold import fold
    from .passes.fuse import fuse
    from .passes.lower import lower
    from .passes.size import size

    opts = opts or CompileOptions()
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    graph = load(path, opts.binds)
    graph.verify()
    say(f"front end: {len(graph.nodes)} nodes ({time.perf_counter() - t0:.2f} s)")
    declared = None
    if opts.input_type is not None:
        from .types import parse_input_type
        declared = parse_input_type(opts.input_type, opts.input_scale)
    elif opts.input_scale is not None:
        from accumulus.errors import UserError
        raise UserError("--input-scale needs --input-type")
    ig = lower(graph, declared)
    ig.verify()
    ig = fuse(ig)
    ig.verify()
    ig = size(ig, graph.metadata)
    ig.verify()
    target = None
    if opts.target_fps is not None or opts.clock_mhz is not None:
        from accumulus.errors import UserError
        if opts.target_fps is None or opts.clock_mhz is None:
            raise UserError("--target-fps and --clock-mhz go together")
        if opts.target_fps <= 0 or opts.clock_mhz <= 0:
            raise UserError("--target-fps and --clock-mhz must be positive")
        target = opts.clock_mhz * 1e6 / opts.target_fps
    clock = opts.clock_mhz if opts.clock_mhz is not None else opts.board_clock_mhz
    ig, estimate = fold(ig, target, opts.max_pes, opts.budget, opts.family, engine=opts.engine, clock_mhz=clock,
                       const_solver=opts.const_solver)
    ig.verify()
    say(f"passes done ({time.perf_counter() - t0:.2f} s)")
    source = {"model": str(Path(graph.source)), "sha256": graph.sha256, "metadata": graph.metadata}
    options = {"target_fps": opts.target_fps, "clock_mhz": opts.clock_mhz, "max_pes": opts.max_pes,
               "board": opts.board, "binds": sorted(opts.binds), "input_type": opts.input_type,
               "engine": opts.engine, "const_solver": opts.const_solver, "input_scale": None if declared is None else declared[1]}
    plan = plan_from_intgraph(ig, source, estimate, options)
    from .plan import validate
    validate(plan.doc)
    return plan
