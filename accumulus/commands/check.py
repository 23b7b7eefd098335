"""accumulus check: the golden model beside the reference executor, tensor by tensor."""
from __future__ import annotations

NAME = "check"
HELP = "Compare the golden model with qonnx / onnxruntime on every requantized tensor (exit 0 agree, 1 differ)."
EXAMPLES = """
  accumulus check model.onnx                        # 32 inputs drawn over the input's code range
  accumulus check model.onnx --input x_test.npy     # your inputs (float, ONNX layout, batch first)
  accumulus check model.onnx --plan build/m         # an existing plan instead of compiling anew

A difference counts as a float tie when the reference's pre-rounding value is within 1e-4 of a
rounding boundary (float32 evaluation order decides it); ties are shown but do not fail.
"""


def add_arguments(p):
    p.add_argument("model", metavar="MODEL.onnx", help="QONNX / QCDQ / QDQ / QOperator graph")
    p.add_argument("--input", metavar="X.npy", help="inputs to compare on (default: drawn over the code range)")
    p.add_argument("--samples", type=int, default=32, metavar="N",
                   help="inputs drawn over the input's code range when --input is not given (default 32)")
    p.add_argument("--plan", metavar="DIR", help="check this compiled plan (plan.json) instead of compiling MODEL")
    from accumulus.commands.compile import add_input_type_arguments
    add_input_type_arguments(p)
    p.add_argument("--bind", action="append", default=[], metavar="NAME=FILE.npy",
                   help="bind a graph input to a constant (repeatable), as for compile")


def run(args) -> int:
    from pathlib import Path

    import numpy as np
    import onnx

    from accumulus.compiler.compile import CompileOptions, compile_model
    from accumulus.compiler.frontend.load import parse_binds
    from accumulus.compiler.verify import calibration_batch, compare
    from accumulus.errors import UserError
    from accumulus.paths import check_binds, input_file, load_array, load_plan

    if not args.input and args.samples <= 0:
        raise UserError(f"--samples {args.samples}: must be positive")
    check_binds(args.bind)
    binds = parse_binds(args.bind)
    plan = load_plan(args.plan, "--plan") if args.plan else compile_model(args.model, CompileOptions(
        binds=binds, input_type=args.input_type, input_scale=args.input_scale))
    if args.input:
        x = load_array(args.input, "--input", plan)
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
    else:
        x = calibration_batch(plan, args.samples)
    model_path = Path(args.model)
    if model_path.is_dir() and (model_path / "model.onnx").is_file():
        model_path = model_path / "model.onnx"   # a project folder, as compile accepts it
    input_file(model_path, "MODEL.onnx", "an ONNX model")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # protobuf raises assorted errors on a truncated or foreign file
        raise UserError(f"{model_path}: not a readable ONNX model ({type(exc).__name__}); pass the .onnx the "
                        "plan was compiled from") from None
    ver = compare(plan, model, x, binds)
    print(f"golden model vs {ver.reference} on {ver.samples} inputs")
    width = max([len(t.tensor) for t in ver.tensors] + [6])
    print(f"{'tensor':<{width}}  {'agree':>9}  {'ties':>5}  first difference")
    for t in ver.tensors:
        agree = (t.elements - t.mismatches) / t.elements if t.elements else 1.0
        f = t.first
        first = "-" if f is None else (
            f"sample {f['sample']} element {f['index']}: golden {f['golden']}, reference {f['reference']}"
            + ("" if f["pre"] is None else f" (pre-rounding {f['pre']:.6g})")
            + (" - float tie" if f["tie"] else " - NOT a tie"))
        print(f"{t.tensor:<{width}}  {agree:>9.4%}  {t.ties:>5}  {first}")
    if not ver.tensors:
        print("(no requantized tensor of the plan is visible in the reference; only the output is compared)")
    if ver.output_top1 is not None:
        print(f"output: top-1 agreement {ver.output_top1:.4%}, max abs error {ver.output_max_abs_err:.3g}")
    if ver.ok:
        extra = f" ({len(ver.tie_samples)} inputs differ only by float ties)" if ver.tie_samples else ""
        print(f"agree{extra}")
        return 0
    print(f"DIFFER: {ver.first_failure()}")
    return 1
