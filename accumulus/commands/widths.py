"""accumulus widths: print the accumulator width table of a model or a compiled plan."""
from __future__ import annotations

NAME = "widths"
HELP = "Print accumulator widths per layer (data-type / A2Q / A2Q+ / exact / target P)."
EXAMPLES = """
  accumulus widths build/digits                 # a project folder with plan.json
  accumulus widths model.onnx                   # compiles in memory, writes nothing
The 'full adders' column is Sakr & Shanbhag's count per layer and frame (multipliers and
adder tree, compiler/cost.py), the figure 'accumulus precision' minimises.
"""


def add_arguments(p):
    p.add_argument("source", metavar="MODEL.onnx|DIR", help="an ONNX model or a folder with plan.json")
    p.add_argument("--bind", action="append", default=[], metavar="NAME=FILE.npy",
                   help="bind a graph input to a constant (ONNX models only)")


def run(args) -> int:
    from pathlib import Path

    from accumulus.paths import load_plan
    from accumulus.compiler.report import width_table

    src = Path(args.source)
    if src.is_dir() and (src / "plan.json").exists() or src.suffix == ".json":
        plan = load_plan(src, "DIR")
    else:
        from accumulus.compiler.compile import CompileOptions, compile_model
        from accumulus.compiler.frontend.load import parse_binds
        from accumulus.paths import check_binds

        check_binds(args.bind)
        plan = compile_model(src, CompileOptions(binds=parse_binds(args.bind)))
    print(width_table(plan))
    return 0
