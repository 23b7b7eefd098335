"""accumulus export: DIR/model.pt -> DIR/model.onnx (QONNX) or DIR/model.qcdq.onnx."""
from __future__ import annotations

NAME = "export"
HELP = "Export a trained DIR/model.pt as QONNX (model.onnx) or QCDQ (model.qcdq.onnx), with exact A2Q integers."
EXAMPLES = """
  accumulus export build/digits                    # writes build/digits/model.onnx and checks every P
  accumulus export build/digits --format qcdq      # writes build/digits/model.qcdq.onnx
"""


def add_arguments(p):
    p.add_argument("dir", metavar="DIR", help="project folder holding model.pt (from 'accumulus train')")
    p.add_argument("--format", choices=("qonnx", "qcdq"), default="qonnx", help="graph format (default qonnx)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: DIR)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from accumulus.quant.data import load_dataset
    from accumulus.quant.export import export_model, verify_onnx
    from accumulus.paths import output_dir, project_dir
    from accumulus.quant.train import HISTORY, load_checkpoint, set_threads

    set_threads(args.threads)
    src = Path(args.dir)
    if src.is_file() and src.suffix == ".pt":
        src = src.parent     # DIR/model.pt named directly
    else:
        project_dir(src, "DIR", needs="model.pt", made_by=f"train first with 'accumulus train --out {src}'")
    out = output_dir(args.out or src, "--out" if args.out else "DIR")
    model, cfg, _ = load_checkpoint(src)
    accuracy, seed = None, 0
    hist = src / HISTORY
    if hist.is_file():
        try:
            h = json.loads(hist.read_text())
            accuracy, seed = h.get("test_accuracy"), int(h.get("options", {}).get("seed", 0))
        except (ValueError, TypeError):
            pass  # train.json is informative only; the export does not depend on it
    ds = load_dataset(cfg.dataset, seed=seed)
    path = export_model(model, cfg, out, torch.from_numpy(ds.x_test[:8]), accuracy, fmt=args.format)
    print(f"wrote {path}")
    if args.format == "qonnx" and getattr(cfg, "quant", None) != "mls":   # an MLS export has no Quant nodes
        for node, w in verify_onnx(path).items():
            if w["acc_bits"] is not None:
                print(f"  {node}: exact {w['exact_bits']} bits <= P={w['acc_bits']}")
    return 0
