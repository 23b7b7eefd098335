"""accumulus sweep: one flow run per point of a grid or list of flow options."""
from __future__ import annotations

NAME = "sweep"
HELP = "Run the flow over a grid or a list of options (one project folder per point), then tabulate and plot."
EXAMPLES = """
  accumulus sweep examples/sweep.toml --out build/sweep                     # local process pool
  accumulus sweep examples/sweep.toml --out build/sweep --workers 4
  accumulus sweep examples/sweep.toml --out build/sweep --executor ray      # a local Ray instance
  accumulus sweep sweep.toml --out /shared/sweep --executor ray --address 10.0.0.5:6379
  accumulus sweep examples/sweep.toml --out build/sweep --list              # print the points, run nothing

SWEEP.toml is a flow.toml (one table per stage, [flow] stages = [...] to run only some) plus
  [sweep]
  grid = { "train.acc-bits" = [10, 12, 14], "compile.engine" = ["rom", "const"] }   # cartesian product
  points = [ { "train.quant" = "int", "train.acc-bits" = 32 } ]                    # extra points
Keys are STAGE.OPTION (the long options of 'accumulus STAGE --help'); "compile.board+report.board"
sets both. Each point runs in DIR/points/<id>/ with the flow's stage cache: rerunning the same
command (after a kill, or with more points) runs only what is not done. A failing point records
its error and the sweep goes on. Writes DIR/results.json, results.csv, report.md, pareto-BOARD.png.
"""


def add_arguments(p):
    p.add_argument("spec", metavar="SWEEP.toml", help="flow tables plus a [sweep] table with grid and/or points")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder: points/<id>/, results.*, report.md, plots")
    p.add_argument("--executor", default="pool", choices=("pool", "ray"),
                   help="pool: local processes (default); ray: tasks on a Ray cluster (pip install 'accumulus[ray]')")
    p.add_argument("--workers", type=int, metavar="N",
                   help="points run at once (default: CPU count; with ray, the cluster's CPUs)")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray cluster address (host:port or 'auto'); default: start a local Ray instance")
    p.add_argument("--list", action="store_true", help="print every point's id and options, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    from accumulus import sweep
    from accumulus.errors import UserError
    from accumulus.paths import input_file, output_dir

    input_file(args.spec, "SWEEP.toml", "TOML file")
    if args.address and args.executor != "ray":
        raise UserError("--address is for --executor ray; add --executor ray or drop --address")
    spec = sweep.load(args.spec)
    if args.list:
        print(f"{len(spec.points)} points, stages {', '.join(spec.stages)}:")
        for pt in spec.points:
            print(f"  {pt.id}  " + ", ".join(f"{k}={v}" for k, v in pt.options.items()))
        return 0
    output_dir(args.out, "--out")
    doc = sweep.run(spec, out=args.out, executor=args.executor, workers=args.workers,
                    address=args.address, quiet=args.quiet)
    failed = [e for e in doc["points"] if e["status"] != "ok"]
    for e in failed:
        print(f"point {e['id']} failed: {e['error']}")
    print(f"{len(doc['points']) - len(failed)}/{len(doc['points'])} points ok; see {args.out}/report.md")
    return 1 if failed and len(failed) == len(doc["points"]) else 0
