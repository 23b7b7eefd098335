"""accumulus compile: a quantized ONNX graph -> plan.json + plan.npz and the width table."""
from __future__ import annotations

NAME = "compile"
HELP = "Compile a QONNX/QCDQ graph into an integer dataflow plan with exact accumulator widths."
EXAMPLES = """
  accumulus compile build/digits/model.onnx --out build/digits
  accumulus compile tfc.onnx --out build/tfc --target-fps 100000 --clock-mhz 100 --board ulx3s-85f
  accumulus compile model.onnx --out build/m --max-pes 64
  accumulus compile model.onnx --out build/m --engine const          # every MAC layer constant-weight
  accumulus compile model.onnx --out build/m --engine const --const-solver da4ml   # da4ml's adder graphs
  accumulus compile qdq.onnx --out build/q --bind scale=scale.npy      # extra graph inputs as constants
  accumulus compile model.onnx --out build/m --calib x_test.npy          # verify on your data as well
  accumulus compile hls4ml_style.onnx --out build/h --input-type 'fixed<8,3>'   # float input, declared type

Before writing the plan, compile runs the golden model beside the reference executor (qonnx for
QONNX graphs, onnxruntime with optimisations off for QDQ/QOperator) on 32 inputs drawn over the
input's code range (plus --calib) and refuses (exit 2) when integer codes differ beyond float ties.

Default folding (no option): about 1024 cycles per frame (see compiler/passes/fold.py).
--engine auto (default) chooses per MAC layer between the folded ROM engine and the
constant-weight engine (one vector per cycle) by the cost model; the plan records both costs.
"""


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.onnx", help="QONNX / QCDQ / FINN graph")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for plan.json and plan.npz")
    p.add_argument("--target-fps", type=float, metavar="F", help="frames per second to reach (with --clock-mhz)")
    p.add_argument("--clock-mhz", type=float, metavar="C", help="clock the fps target is computed at")
    p.add_argument("--max-pes", type=int, metavar="N", help="at most N MAC lanes (PE x SIMD summed over layers)")
    p.add_argument("--const-solver", default="csd", choices=("csd", "da4ml"),
                   help="adder-graph optimiser of constant-weight layers: csd (CSD digits + greedy two-term "
                        "sharing, built in; default) or da4ml (da4ml's constant-matrix solver, about 6%% fewer "
                        "adder bits; pip install da4ml, LGPLv3)")
    p.add_argument("--engine", default="auto", choices=("rom", "const", "auto"),
                   help="MAC layer engine: rom (folded, weights in ROM), const (constant-weight adder graph, one "
                        "vector per cycle) or auto (per layer by the cost model; default)")
    p.add_argument("--board", metavar="B", help="board id (boards/data/B.json): fold within its budget")
    p.add_argument("--bind", action="append", default=[], metavar="NAME=FILE.npy",
                   help="bind a graph input to a constant (repeatable)")
    add_input_type_arguments(p)
    p.add_argument("--calib", metavar="X.npy", help="also verify on these inputs (float, ONNX layout, batch first)")
    p.add_argument("--calib-size", type=int, default=32, metavar="N",
                   help="inputs drawn over the input's code range for verification (default 32)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the comparison with the reference executor (recorded in plan.json and reports)")
    p.add_argument("--quiet", action="store_true", help="do not print the width table")


def add_input_type_arguments(p):
    p.add_argument("--input-type", metavar="T",
                   help="fixed-point type of a float graph input that the graph does not quantize: int8, uint8, "
                        "intN, uintN, fixed<W,I> or ufixed<W,I> (hls4ml's ap_fixed: scale 2^-(W-I))")
    p.add_argument("--input-scale", type=float, metavar="S",
                   help="value of one input code for --input-type (default 1 for intN, 2^-(W-I) for fixed)")


def board_budget(board: str | None):
    """(budget, family, message) for a board id, from boards/data/<id>.json."""
    budget, family, msg, _ = board_info(board)
    return budget, family, msg


def board_info(board: str | None):
    """(budget, family, message, clock_mhz) for a board id, from boards/data/<id>.json."""
    import json
    from importlib import resources

    if not board:
        return None, None, None, None
    if "/" in board or "\\" in board or board.startswith("."):
        from accumulus.errors import UserError
        raise UserError(f"--board '{board}': expected a board id such as icebreaker, ulx3s-85f, arty-a7-35t")
    try:
        text = resources.files("accumulus.boards").joinpath("data", f"{board}.json").read_text()
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return None, None, f"board '{board}' has no boards/data/{board}.json: folding without a resource budget", None
    doc = json.loads(text)
    return doc.get("budget"), doc.get("family"), None, doc.get("clock_mhz")


def verify(plan, args, binds) -> dict:
    """Golden model vs reference executor; raises UserError (nothing written) on disagreement."""
    import sys
    import time

    from accumulus.compiler.verify import verify_plan
    from accumulus.errors import UserError
    from accumulus.paths import load_array

    if args.no_verify:
        print("accumulus compile: warning: --no-verify: the golden model was not checked against a reference "
              "executor", file=sys.stderr)
        return {"skipped": True, "reason": "--no-verify"}
    if args.calib_size < 0:
        raise UserError(f"--calib-size {args.calib_size}: must be >= 0")
    x = load_array(args.calib, "--calib", plan) if args.calib else None
    if args.calib_size == 0 and x is None:
        raise UserError("--calib-size 0 without --calib leaves nothing to verify on; use --no-verify to skip")
    t0 = time.perf_counter()
    ver = verify_plan(plan, args.model, x, args.calib_size, binds)
    doc = ver.to_json()
    doc["calib"] = args.calib
    doc["seconds"] = round(time.perf_counter() - t0, 2)
    if not ver.ok:
        raise UserError(f"{args.model}: the golden model disagrees with {ver.reference} beyond float ties on "
                        f"{len(ver.bad_samples) or len(ver.output_bad)} of {ver.samples} inputs; first: "
                        f"{ver.first_failure()}. No plan written. This is a compiler bug for a supported "
                        "graph: please report it with the model; 'accumulus check' shows every tensor, and "
                        "--no-verify writes the plan anyway")
    ties = f", {len(ver.tie_samples)} with float ties" if ver.tie_samples else ""
    print(f"verified: golden model == {ver.reference} on {ver.samples} inputs ({len(ver.tensors)} tensors{ties}, "
          f"{doc['seconds']} s)")
    return doc


def run(args) -> int:
    import math
    import sys
    from pathlib import Path

    from accumulus.compiler.compile import CompileOptions, compile_model
    from accumulus.compiler.frontend.load import parse_binds
    from accumulus.compiler.report import width_table
    from accumulus.errors import UserError
    from accumulus.paths import check_binds, output_dir

    output_dir(args.out, "--out", create=False)  # nothing is written unless the plan verifies
    if _is_mls(args.model):
        return run_mls(args)
    for option, value in (("--target-fps", args.target_fps), ("--clock-mhz", args.clock_mhz)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{option} {value}: must be a positive number")
    check_binds(args.bind)
    budget, family, msg, board_clock = board_info(args.board)
    if msg:
        print(f"accumulus compile: warning: {msg}", file=sys.stderr)
    opts = CompileOptions(target_fps=args.target_fps, clock_mhz=args.clock_mhz, max_pes=args.max_pes,
                          board=args.board, budget=budget, family=family, binds=parse_binds(args.bind),
                          input_type=args.input_type, input_scale=args.input_scale,
                          engine=args.engine, board_clock_mhz=board_clock, const_solver=args.const_solver)
    plan = compile_model(args.model, opts)
    if args.board and budget:
        plan.doc["options"]["budget"] = budget
    plan.doc["verification"] = verify(plan, args, opts.binds)
    json_path, npz_path = plan.save(Path(args.out))
    if not args.quiet:
        print(width_table(plan))
    print(f"wrote {json_path} and {npz_path}")
    return 0


# -- MLS models (accumulus.MLSQuant nodes, docs/mls.md) -------------------------------------
def _is_mls(model) -> bool:
    from pathlib import Path

    from accumulus.compiler.frontend.mls_load import is_mls_model

    try:
        return Path(model).is_file() and is_mls_model(model)
    except Exception:          # unreadable files get compile_model's one-line error
        return False


def run_mls(args) -> int:
    """Lower an MLS graph to the MLS plan, check its golden model against onnx.reference."""
    import sys
    import time
    from pathlib import Path

    from accumulus.compiler.frontend.mls_load import cost_estimate, lower_mls, verify_mls
    from accumulus.errors import UserError
    from accumulus.paths import load_array

    ignored = [o for o, v in (("--target-fps", args.target_fps), ("--clock-mhz", args.clock_mhz),
                              ("--max-pes", args.max_pes), ("--board", args.board), ("--input-type", args.input_type))
               if v is not None] + (["--bind"] if args.bind else []) + (["--engine"] if args.engine != "auto" else [])
    if ignored:
        print(f"accumulus compile: warning: {', '.join(ignored)} do not apply to MLS models (one G-lane MLS "
              "engine per layer); ignored", file=sys.stderr)
    plan = lower_mls(args.model)
    if args.no_verify:
        print("accumulus compile: warning: --no-verify: the golden model was not checked against a reference "
              "executor", file=sys.stderr)
        plan.doc["verification"] = {"skipped": True, "reason": "--no-verify"}
    else:
        if args.calib_size < 0:
            raise UserError(f"--calib-size {args.calib_size}: must be >= 0")
        x = load_array(args.calib, "--calib") if args.calib else None
        if args.calib_size == 0 and x is None:
            raise UserError("--calib-size 0 without --calib leaves nothing to verify on; use --no-verify to skip")
        t0 = time.perf_counter()
        ver = verify_mls(plan, args.model, x, args.calib_size)
        ver["calib"] = args.calib
        ver["seconds"] = round(time.perf_counter() - t0, 2)
        if not ver["ok"]:
            raise UserError(f"{args.model}: the MLS golden model disagrees with {ver['reference']} beyond ties on "
                            f"{len(ver['bad_samples'])} of {ver['samples']} inputs; first: {ver['first_failure']}. "
                            "No plan written. Please report it with the model; --no-verify writes the plan anyway")
        ties = f", {len(ver['tie_samples'])} with ties" if ver["tie_samples"] else ""
        print(f"verified: MLS golden model == onnx.reference on {ver['samples']} inputs{ties} "
              f"({ver['seconds']} s)")
        plan.doc["verification"] = ver
    json_path = plan.save(Path(args.out))
    if not args.quiet:
        print(f"{'layer':<12} {'kind':<11} {'format':<12} {'dot':>5} {'group acc':>9} {'dot acc':>7} "
              f"{'act':>4} {'cycles':>7}")
        for r in cost_estimate(plan):
            print(f"{r['layer']:<12} {r['kind']:<11} {r['format']:<12} {r['dot_length']:>5} "
                  f"{r['group_acc_bits']:>9} {r['dot_acc_bits']:>7} {r['act_bits']:>4} {r['cycles']:>7}")
    print(f"wrote {json_path} and {json_path.with_suffix('.npz')} (MLS plan)")
    return 0
