"""accumulus precision: Sakr & Shanbhag per-tensor precision assignment of a float-trained project."""
from __future__ import annotations

NAME = "precision"
HELP = ("Assign per-tensor fixed-point widths to a float-trained project (Sakr & Shanbhag) "
        "and write DIR/precision.json.")
EXAMPLES = """
  accumulus train --preset digits-mlp --quant float --out build/dmf      # a float-trained project
  accumulus precision build/dmf --mismatch 0.01                          # writes build/dmf/precision.json
  accumulus precision build/dmf --mismatch 0.05 --samples 200 --out p05.json
  accumulus precision build/dmf --mismatch 0.01 --bound capped           # the per-sample capped bound
  accumulus train --preset digits-mlp --quant int --precision build/dmf/precision.json --out build/dsakr
                  # QAT with those widths: weights B signed bits, ReLU outputs B-1 unsigned bits
Each weight and activation tensor h gets B_h = B_min + round(log2 sqrt(E_h/E_min)) bits, with
the smallest B_min whose bound sum_h E_h 4^(1-B_h) on the float-vs-fixed-point mismatch
probability is <= --mismatch. precision.json also holds the measured mismatch on the test
split, Sakr's full-adder cost (D*B_A*B_W + (D-1)(B_A+B_W+ceil(log2 D)-1) per D-term dot
product, multipliers and adder tree only) and the smallest uniform width measured to be as good.
The bound is loose: compare the measured mismatch of several --mismatch targets. --bound capped
chooses B_min by the same bound taken per held-out sample and capped at 1 there
(mean_s min(1, sum_h e_hs 4^(1-B_h))): as rigorous, never looser, and not ruled by the few
samples the float model barely decides (quant/precision.py explains both).
"""


def add_arguments(p):
    p.add_argument("dir", metavar="DIR", help="project folder trained with 'accumulus train --quant float'")
    p.add_argument("--mismatch", type=float, required=True, metavar="P",
                   help="target bound on the probability that fixed point changes the top-1 class, in (0, 1)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="held-out (test-split) samples over which the noise gains are averaged (default: all)")
    p.add_argument("--bound", choices=("sakr", "capped"), default="sakr",
                   help="bound that chooses B_min: sakr (sum_h E_h 4^(1-B_h), the paper's; default) or capped "
                        "(per sample, capped at 1: tighter, as rigorous)")
    p.add_argument("--out", metavar="FILE", help="output file (default: DIR/precision.json)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    from pathlib import Path

    from accumulus.errors import UserError

    if not 0.0 < args.mismatch < 1.0:
        raise UserError(f"--mismatch must be in (0, 1), got {args.mismatch}")
    if args.samples is not None and args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    src = Path(args.dir)
    if src.exists() and not src.is_dir():
        raise UserError(f"{src} is a file; pass the project folder that holds model.pt (from 'accumulus train --quant float')")
    if not src.is_dir():
        raise UserError(f"project folder {src} does not exist; train one with "
                        f"'accumulus train --quant float --out {src}'")

    from accumulus.quant.precision import load_float_project, precision_assignment, write_json
    from accumulus.quant.train import set_threads

    set_threads(args.threads)
    model, cfg, ds, split = load_float_project(src)
    x_gain = ds.x_test if args.samples is None else ds.x_test[:args.samples]
    result = precision_assignment(model, ds.x_train, x_gain, ds.x_test, args.mismatch, y_test=ds.y_test,
                                  progress=not args.quiet, input_scale=cfg.input_scale, bound=args.bound)
    result["project"] = str(src)
    result["dataset"] = {"name": ds.name, **split, "calibration": "train split", "calibration_samples": len(ds.x_train),
                         "gain_samples": len(x_gain), "test_samples": len(ds.x_test)}
    out = write_json(result, Path(args.out) if args.out else src / "precision.json")
    m = result["measured"]
    b = result["bounds"]
    print(f"B_min {result['B_min']}, {args.bound} bound {result['mismatch_bound']:.4g} <= {args.mismatch} "
          f"(sakr {b['sakr']:.4g}, capped {b['capped']:.4g}); "
          f"measured mismatch {m['mismatch']:.4f} on {m['test_samples']} test samples; wrote {out}")
    for t in result["tensors"]:
        print(f"  {t['kind']:<10} {t['name']:<20} E {t['E']:<10.4g} B {t['B']:>2}  range {t['range']:g}")
    u = result["uniform"]["smallest_bits_with_mismatch_at_most_assignment"]
    line = f"  full adders {result['cost_full_adders']}"
    if u is not None:
        line += (f"; smallest uniform width measured as good: {u['bits']} bits "
                 f"(mismatch {u['measured_mismatch']:.4f}, {u['cost_full_adders']} full adders)")
    print(line)
    return 0
