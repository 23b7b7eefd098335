"""accumulus build: plan -> Verilog (rtl/accumulus_top.v, rtl/layers/*.v, rtl/build.json)."""
from __future__ import annotations

NAME = "build"
HELP = "Generate the accelerator's Verilog from a plan: AXI-Stream top, one file per layer engine, build.json."
EXAMPLES = """
  accumulus build build/digits                          # reads build/digits/plan.json, writes build/digits/rtl/
  accumulus build build/tfc --acc-policy datatype       # accumulators at hls4ml's data-type width
  accumulus build build/tfc --acc-policy fixed:32 --out build/tfc-fixed32
  accumulus build build/tfc --acc-policy exact-minus:1  # deliberately one bit too narrow (wraps)
  accumulus build build/digits --engine const --out build/digits-const   # every MAC layer constant-weight

Policies size the whole reduction datapath (adder tree, accumulator, threshold compare and
storage): exact (default, per PE and per adder-tree stage), datatype, fixed:K, exact-minus:D.
--engine auto (default) builds each MAC layer with the engine the plan chose ('accumulus
compile --engine'); rom or const builds every MAC layer with that engine (a ROM-folded layer
built const runs one vector per cycle, faster than the plan's estimate).
"""


def add_arguments(p):
    p.add_argument("dir", metavar="DIR", help="project folder holding plan.json and plan.npz (from 'accumulus compile')")
    p.add_argument("--acc-policy", default="exact", metavar="POLICY",
                   help="exact | datatype | fixed:K | exact-minus:D (default: exact)")
    p.add_argument("--engine", default="auto", choices=("auto", "rom", "const"),
                   help="MAC layer engine: auto (the plan's choice per layer; default), rom or const (every layer)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: DIR); writes OUT/rtl/")
    p.add_argument("--no-layer-files", action="store_true", help="skip rtl/layers/*.v (the top stays self-contained)")


def run(args) -> int:
    import time
    from pathlib import Path

    from accumulus.errors import UserError
    from accumulus.hw.top import check_policy
    from accumulus.paths import load_plan, output_dir

    project = Path(args.dir)
    try:
        policy = check_policy(args.acc_policy)
    except ValueError as exc:
        raise UserError(f"--acc-policy: {exc}") from None
    from accumulus.compiler.frontend.mls_load import is_mls_plan

    if is_mls_plan(project):
        return _run_mls(args, project)
    t0 = time.perf_counter()
    plan = load_plan(project)
    out = output_dir(args.out or project, "--out" if args.out else "DIR", children=("rtl", "rtl/layers"))
    print(f"accumulus build: {len(plan.layers)} layers from {project / 'plan.json'}, acc-policy {policy}, engine {args.engine}", flush=True)

    from accumulus.hw.build import build

    try:
        doc = build(plan, out, policy, layers=not args.no_layer_files, engine=args.engine,
                    progress=lambda msg: print(f"  {msg}", flush=True))
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot build {project / 'plan.json'}: {exc}") from None
    top = doc["top"]
    pk = top["packing"]
    print(f"accumulus build: wrote {out / 'rtl'} in {time.perf_counter() - t0:.1f} s: "
          f"{top['cycles_per_frame']} cycles/frame (plan estimate {top['plan_cycles_per_frame']}), "
          f"input {pk['input']['elems_per_beat']} x {pk['input']['elem_bits']} bits/beat, "
          f"output {pk['output']['elems_per_beat']} x {pk['output']['elem_bits']} bits/beat")
    return 0


def _run_mls(args, project) -> int:
    """An MLS plan (docs/mls.md): hw/mls_top.py's stages behind AXI-Stream ports."""
    import time

    from accumulus.compiler.frontend.mls_load import MLSPlan
    from accumulus.errors import UserError
    from accumulus.hw.build import build_mls
    from accumulus.paths import output_dir

    ignored = [o for o, v, d in (("--acc-policy", args.acc_policy, "exact"), ("--engine", args.engine, "auto"))
               if v != d]
    if ignored:
        print(f"accumulus build: {', '.join(ignored)} does not apply to an MLS plan (ignored)", flush=True)
    t0 = time.perf_counter()
    plan = MLSPlan.load(project)
    out = output_dir(args.out or project, "--out" if args.out else "DIR", children=("rtl", "rtl/layers"))
    print(f"accumulus build: MLS plan, {len(plan.layers)} layers from {project / 'plan.json'}", flush=True)
    try:
        doc = build_mls(plan, out, layers=not args.no_layer_files, progress=lambda msg: print(f"  {msg}", flush=True))
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot build {project / 'plan.json'}: {exc}") from None
    top = doc["top"]
    pk = top["packing"]
    print(f"accumulus build: wrote {out / 'rtl'} in {time.perf_counter() - t0:.1f} s: {len(doc['layers'])} MLS stages, "
          f"{top['cycles_per_frame']} cycles/frame (slowest stage), input {pk['input']['element_bits']} bits/beat, "
          f"output {pk['output']['element_bits']} bits/beat")
    return 0
