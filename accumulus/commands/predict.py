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
    """The ONNX graph's first output from the golden model's tensors (dequant + trailing ops)."""
    import numpy as np

    out = plan.doc["output"]
    codes = env[out["tensor"]]
    B = codes.shape[0]
    flat = codes.reshape(B, -1)
    C = plan.tensor_shape(out["tensor"])[-1]
    dq = out.get("dequant")
    if dq is not None and dq.get("layout") == "onnx":
        # per-element (blocked) dequantization, given in the ONNX layout
        index = plan.array(out["index"]) if isinstance(out.get("index"), str) else np.arange(flat.shape[1])
        shape = tuple(out.get("onnx_shape") or (1, flat.shape[1]))[1:]
        codes_onnx = flat[:, index].reshape((B,) + shape)
        s = np.asarray(dq["scale"], dtype=np.float32)
        z = np.asarray(dq["zero_point"], dtype=np.float32)
        return ((codes_onnx.astype(np.float32) - z) * s).astype(np.dtype(out.get("onnx_dtype") or "float32"))
    if dq is not None:
        a = np.asarray(dq["scale"], dtype=np.float64)
        b = np.asarray(dq.get("offset", -a * np.asarray(dq["zero_point"], dtype=np.float64)), dtype=np.float64)
        ch = np.arange(flat.shape[1]) % C
        val = flat.astype(np.float64) * a[ch] + b[ch]
    else:
        val = flat
    for t in out.get("trailing") or []:
        if t["op"] == "Relu":
            val = np.maximum(val, 0)
        elif t["op"] == "Clip":
            val = np.clip(val, -np.inf if t["min"] is None else t["min"], np.inf if t["max"] is None else t["max"])
        elif t["op"] == "Affine":
            ch = np.arange(flat.shape[1]) % C
            val = val * np.asarray(t["a"])[ch] + np.asarray(t["b"])[ch]
    index = plan.array(out["index"]) if isinstance(out.get("index"), str) else np.arange(flat.shape[1])
    shape = tuple(out.get("onnx_shape") or (1, flat.shape[1]))[1:]
    val = val[:, index].reshape((B,) + shape)
    for t in out.get("trailing") or []:
        if t["op"] == "Softmax":
            v = val.astype(np.float32)
            e = np.exp(v - v.max(axis=t["axis"], keepdims=True))
            val = e / e.sum(axis=t["axis"], keepdims=True)
    dtype = np.dtype(out.get("onnx_dtype") or ("float32" if dq is not None else "int64"))
    if np.issubdtype(dtype, np.integer):
        return np.asarray(np.rint(val)).astype(dtype)
    return np.asarray(val).astype(dtype)


def predict(plan, x):
    """(ONNX output, every integer tensor) for a float input ``x`` in the ONNX layout."""
    from accumulus.compiler import golden

    env = golden.run_float(plan, x)
    return onnx_output(plan, env), env


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from accumulus.compiler.plan import Plan
    from accumulus.errors import UserError

    plan = Plan.load(args.project)
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"--input {args.input}: not a readable .npy array ({exc})") from None
    y, env = predict(plan, x)
    np.save(args.output, y)
    if args.codes:
        np.savez_compressed(args.codes, **{k: v for k, v in env.items()})
    print(f"wrote {args.output} {tuple(y.shape)} {y.dtype}" + (f" and {args.codes} ({len(env)} tensors)" if args.codes else ""))
    del Path
    return 0
