"""accumulus compile: a quantized ONNX graph -> plan.json + plan.npz and the width table."""
from __future__ import annotations

NAME = "compile"
HELP = "Compile a QONNX/QCDQ graph into an integer dataflow plan with exact accumulator widths."
EXAMPLES = """
  accumulus compile build/digits/model.onnx --out build/digits
  accumulus compile tfc.onnx --out build/tfc --target-fps 100000 --clock-mhz 100 --board ulx3s-85f
  accumulus compile model.onnx --out build/m --max-pes 64
  accumulus compile qdq.onnx --out build/q --bind scale=scale.npy      # extra graph inputs as constants

Default folding (no option): about 1024 cycles per frame (see compiler/passes/fold.py).
"""


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.onnx", help="QONNX / QCDQ / FINN graph")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for plan.json and plan.npz")
    p.add_argument("--target-fps", type=float, metavar="F", help="frames per second to reach (with --clock-mhz)")
    p.add_argument("--clock-mhz", type=float, metavar="C", help="clock the fps target is computed at")
    p.add_argument("--max-pes", type=int, metavar="N", help="at most N MAC lanes (PE x SIMD summed over layers)")
    p.add_argument("--board", metavar="B", help="board id (boards/data/B.json): fold within its budget")
    p.add_argument("--bind", action="append", default=[], metavar="NAME=FILE.npy",
                   help="bind a graph input to a constant (repeatable)")
    p.add_argument("--quiet", action="store_true", help="do not print the width table")


def board_budget(board: str | None):
    """(budget, family, message) for a board id, from boards/data/<id>.json."""
    import json
    from importlib import resources

    if not board:
        return None, None, None
    if "/" in board or "\\" in board or board.startswith("."):
        from accumulus.errors import UserError
        raise UserError(f"--board '{board}': expected a board id such as icebreaker, ulx3s-85f, arty-a7-35t")
    try:
        text = resources.files("accumulus.boards").joinpath("data", f"{board}.json").read_text()
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return None, None, f"board '{board}' has no boards/data/{board}.json: folding without a resource budget"
    doc = json.loads(text)
    return doc.get("budget"), doc.get("family"), None


def run(args) -> int:
    import sys
    from pathlib import Path

    from accumulus.compiler.compile import CompileOptions, compile_model
    from accumulus.compiler.frontend.load import parse_binds
    from accumulus.compiler.report import width_table

    budget, family, msg = board_budget(args.board)
    if msg:
        print(f"accumulus compile: warning: {msg}", file=sys.stderr)
    opts = CompileOptions(target_fps=args.target_fps, clock_mhz=args.clock_mhz, max_pes=args.max_pes,
                          board=args.board, budget=budget, family=family, binds=parse_binds(args.bind))
    plan = compile_model(args.model, opts)
    if args.board and budget:
        plan.doc["options"]["budget"] = budget
    json_path, npz_path = plan.save(Path(args.out))
    if not args.quiet:
        print(width_table(plan))
    print(f"wrote {json_path} and {npz_path}")
    return 0
