"""accumulus predict: run a compiled plan (golden model) on inputs, as the ONNX graph would."""
from __future__ import annotations

NAME = "predict"
HELP = "Run the golden model of a plan on a .npy input; write what the ONNX graph's first output would be."
EXAMPLES = """
  accumulus predict build/digits --input x.npy --output y.npy
  accumulus predict build/digits --input x.npy --output y.npy --codes codes.npz   # every integer tensor
"""


def add_arguments(p):
    p.add_argument("project", metavar="DIR", help="folder with plan.json + plan.npz")
    p.add_argument("--input", required=True, metavar="X.npy", help="float input in the ONNX layout, batch first")
    p.add_argument("--output", required=True, metavar="Y.npy", help="where to write the output")
    p.add_argument("--codes", metavar="Z.npz", help="also write every integer tensor (stream order)")


def onnx_output(plan, env):
    """The ONNX graph's first output from the golden model's tensors (see compiler.golden)."""
    from accumulus.compiler.golden import onnx_output as out

    return out(plan, env)


def predict(plan, x):
    """(ONNX output, every integer tensor) for a float input ``x`` in the ONNX layout."""
    from accumulus.compiler import golden

    env = golden.run_float(plan, x)
    return onnx_output(plan, env), env


def run(args) -> int:
    import numpy as np

    from accumulus.paths import load_array, load_plan, output_file

    plan = load_plan(args.project)
    output = output_file(args.output, "--output", ".npy")
    codes = output_file(args.codes, "--codes", ".npz") if args.codes else None
    x = load_array(args.input, "--input", plan)
    y, env = predict(plan, x)
    np.save(output, y)
    if codes:
        np.savez_compressed(codes, **{k: v for k, v in env.items()})
    print(f"wrote {output} {tuple(y.shape)} {y.dtype}" + (f" and {codes} ({len(env)} tensors)" if codes else ""))
    return 0
