"""accumulus report: resources and Fmax per layer under each accumulator policy, on one board."""
from __future__ import annotations

NAME = "report"
HELP = "Synthesise, place and route each accumulator policy; per-layer savings, fit, Fmax, estimator error."
EXAMPLES = """
  accumulus report build/digits --board icebreaker
  accumulus report build/tfc --board ulx3s-85f --policies exact,fixed:32
  accumulus report build/tfc --board arty-a7-35t --no-pnr          # Yosys numbers + Vivado TCL/XDC
  accumulus report build/tfc --board ulx3s-85f --estimate-only     # compiler/cost.py only, milliseconds
  accumulus report build/dm --board ulx3s-85f --policies exact --variants lut --pnr-clock-mhz 150   # Fmax at 150 MHz
  accumulus report build/demo --board icebreaker --synthetic-preset digits-mlp   # no trained plan yet
"""


def add_arguments(p):
    p.add_argument("project", metavar="DIR", help="project folder with plan.json (+ plan.npz)")
    p.add_argument("--board", required=True, metavar="B",
                   help="icebreaker | ulx3s-85f | arty-a7-35t, or the path of a board JSON file")
    p.add_argument("--policies", default="exact,datatype,fixed:32",
                   help="comma-separated accumulator policies: exact, datatype, fixed:K, exact-minus:D "
                        "(default: exact,datatype,fixed:32)")
    p.add_argument("--estimate-only", action="store_true", help="only the cost model: no build, no synthesis")
    p.add_argument("--no-pnr", action="store_true", help="skip place and route (Yosys numbers only)")
    p.add_argument("--pnr-clock-mhz", type=float, default=None, metavar="F",
                   help="place and route against an F MHz clock constraint instead of the board oscillator's, "
                        "to measure how fast the design can go (the bitstream then needs that clock: a PLL)")
    p.add_argument("--pnr-router", choices=["router1", "router2"], default=None,
                   help="nextpnr's router (default: nextpnr's own, router1); router2 is nextpnr's newer router "
                        "for large designs (benchmarks/const_fmax.py uses it)")
    p.add_argument("--variants", default=None,
                   help="synthesis variants, comma-separated: lut (multipliers in LUTs), dsp (hard multipliers); "
                        "default: lut on iCE40, lut,dsp elsewhere")
    p.add_argument("--layer-jobs", action="store_true",
                   help="also synthesise each layer engine (rtl/layers/*.v) alone, hierarchy kept (stat per submodule)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel synthesis jobs (default: CPU count)")
    p.add_argument("--synthetic-preset", default=None, metavar="NAME",
                   help="when DIR has no plan.json, write the synthetic stand-in of a preset "
                        "(digits-mlp, mnist-tfc) there first; the report says so")
    p.add_argument("--out", default=None, help="write reports/ under this folder (default: DIR)")


def run(args) -> int:
    from pathlib import Path

    from accumulus.boards.boards import load_board
    from accumulus.boards.report import run_report
    from accumulus.errors import UserError
    from accumulus.paths import load_plan, output_dir

    board = load_board(args.board)
    project = Path(args.project)
    from accumulus.compiler.frontend.mls_load import is_mls_plan

    if not args.synthetic_preset and is_mls_plan(project):
        return run_mls(args, project, board)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    note = None
    if args.synthetic_preset:
        from accumulus.boards.presets import preset_plan

        plan, note = preset_plan(args.synthetic_preset)
        output_dir(project, "DIR")
        if (project / "plan.json").exists():
            raise UserError(f"{project}/plan.json exists; --synthetic-preset only fills an empty project folder")
        plan.save(project)
        print(f"wrote {project}/plan.json: {note}")
    else:
        doc = load_plan(project).doc
        if doc.get("options", {}).get("synthetic"):
            note = f"synthetic plan ({doc['source']['model']})"
    output_dir(args.out or project, "--out" if args.out else "DIR", children=("reports",))
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    if variants and any(v not in ("lut", "dsp") for v in variants):
        raise UserError(f"--variants {args.variants}: each variant is 'lut' or 'dsp'")
    doc = run_report(project, board, policies, estimate_only=args.estimate_only, pnr=not args.no_pnr,
                     variants=variants, workers=args.jobs, out=Path(args.out) if args.out else None, plan_note=note,
                     layer_jobs=args.layer_jobs, pnr_clock_mhz=args.pnr_clock_mhz,
                     pnr_router=args.pnr_router)
    rep = Path(args.out or project) / "reports"
    for pol in doc["policies"]:
        p = doc["policy"][pol]
        for var, syn in p.get("synth", {}).items():
            if syn.get("ok"):
                t = syn["total"]
                fits = all(v["fits"] for v in syn["fits"].values())
                print(f"{pol:>12} {var:>3}: LUT {t['lut']} FF {t['ff']} carry {t['carry']} DSP {t['dsp']} "
                      f"BRAM bits {t['bram_bits']}  Yosys cells within {board.id}'s budget: {'yes' if fits else 'NO'}")
        if p.get("pnr"):
            from accumulus.boards.report import packed_summary

            pr = p["pnr"]
            print(f"{pol:>12} PnR: fits {'yes' if pr['fits'] else 'no'} (packed {packed_summary(pr.get('packed_utilization'))}), "
                  f"Fmax {pr['fmax_mhz']} MHz")
            if pr.get("error") and not pr["fits"]:
                print(f"{'':>12}      {pr['error'].splitlines()[0]}")
    print(f"report: {rep / 'report.md'}")
    return 0


def run_mls(args, project, board) -> int:
    """An MLS plan: the plan's cost estimate per layer (compiler/frontend/mls_load.cost_estimate)."""
    import json
    from pathlib import Path

    from accumulus.compiler.frontend.mls_load import MLSPlan, cost_estimate
    from accumulus.paths import output_dir

    plan = MLSPlan.load(project)
    out = output_dir(args.out or project, "--out" if args.out else "DIR", children=("reports",))
    rows = cost_estimate(plan)
    lines = [f"# accumulus report: MLS plan {project / 'plan.json'}", "",
             f"Board {board.id}. MLS plans get the plan's estimate only: synthesis, place and route and the "
             "accumulator policies apply to integer plans (docs/mls.md).", "",
             "| layer | kind | format | outputs x pixels | dot length | MACs | group acc | dot acc | act bits | "
             "lanes | cycles |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['kind']} | {r['format']} | {r['outputs']} x {r['pixels']} | "
                     f"{r['dot_length']} | {r['macs']} | {r['group_acc_bits']} | {r['dot_acc_bits']} | "
                     f"{r['act_bits']} | {r['lanes']} | {r['cycles']} |")
    total = sum(r["cycles"] for r in rows)
    slowest = max((r["cycles"] for r in rows), default=0)
    lines += ["", f"Cycles per frame (slowest layer, dataflow): {slowest}; all layers in sequence: {total}."]
    rep = Path(out) / "reports"
    rep.mkdir(exist_ok=True)
    (rep / "report.md").write_text("\n".join(lines) + "\n")
    (rep / "report.json").write_text(json.dumps({"mls": True, "board": board.id, "layers": rows,
                                                 "cycles_per_frame_estimate": slowest}, indent=1))
    print("\n".join(lines[4:]))
    print(f"report: {rep / 'report.md'} (MLS plan: estimate only)")
    return 0
