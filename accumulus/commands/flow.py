"""accumulus flow: every stage, one command."""
from __future__ import annotations

NAME = "flow"
HELP = "Run train -> export -> compile -> build -> sim -> report, skipping unchanged stages."
EXAMPLES = """
  accumulus flow --out build/demo                      # built-in example: digits-mlp, A2Q+ P=12, iCEBreaker
  accumulus flow --config flow.toml --out build/tfc    # one [table] per stage, keys = that command's options
  accumulus flow --model my_qonnx.onnx --out build/my  # start from your graph: compile -> report, no torch
  accumulus flow --out build/demo --from build --to sim
"""


def add_arguments(p):
    p.add_argument("--config", metavar="FLOW.TOML", help="stage options: one table per stage ([train], [compile], ...)")
    p.add_argument("--out", required=True, metavar="DIR", help="project folder every stage writes into")
    p.add_argument("--model", metavar="MODEL.onnx", help="start from this QONNX/QCDQ graph (skips train and export)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="first stage to run")
    p.add_argument("--to", dest="to_stage", metavar="STAGE", help="last stage to run")
    p.add_argument("--force", action="store_true", help="re-run stages even when nothing changed")


def run(args) -> int:
    from accumulus import flow
    from accumulus.paths import input_file, output_dir

    if args.config:
        input_file(args.config, "--config", "TOML file")
    if args.model:
        input_file(args.model, "--model", "ONNX model")
    config = flow.load_config(args.config)
    output_dir(args.out, "--out")
    flow.run(config, out=args.out, model=args.model, from_stage=args.from_stage,
             to_stage=args.to_stage, force=args.force)
    print(flow.summary(args.out))
    return 0
