"""accumulus train: quantization-aware training (Brevitas), then QONNX export."""
from __future__ import annotations

NAME = "train"
HELP = "Train a quantized (optionally accumulator-aware) network and export DIR/model.onnx."
EXAMPLES = """
  accumulus train --preset digits-mlp --out build/digits          # DESIGN.md's canonical model
  accumulus train --model mlp --dataset digits --quant a2q+ --weight-bits 4 --act-bits 4 \\
                  --acc-bits 12 --epochs 5 --out build/d12        # A2Q+ for 12-bit accumulators
  accumulus train --preset mnist-tfc --acc-bits 16 --epochs 15 --out build/tfc16
  accumulus train --model cnn --dataset my_data.npz --quant int --out build/mine   # .npz with x, y
  accumulus train --preset digits-mlp --epochs 20 --resume --out build/digits    # continue training
  accumulus train --preset digits-mlp --quant int --precision build/dmf/precision.json --out build/dsakr
                  # per-layer widths from 'accumulus precision' (Sakr & Shanbhag)
  accumulus train --preset digits-rescnn3 --weight-bits 2 --act-bits 2 --highway 16 --out build/hw16
  accumulus train --preset digits-mlp --quant wrpn --weight-bits 4 --act-bits 4 --width-mult 2 \
                  --out build/wrpn2x4                           # WRPN: 2x wider, 4-bit, edges at 8 bits
"""


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def add_arguments(p):
    g = p.add_argument_group("model")
    g.add_argument("--preset", help="digits-mlp | mnist-tfc | digits-cnn | digits-rescnn | digits-rescnn3 (other options override it)")
    g.add_argument("--model", help="mlp | cnn | resnet (default mlp)")
    g.add_argument("--dataset", help="digits | mnist5k | PATH.npz with arrays x (N,[C,]H,W) and y (default digits)")
    g.add_argument("--quant", help="float | int | a2q | a2q+ | wrpn | mls (default a2q+); wrpn: fixed-range WRPN "
                   "quantizers (weights [-1,1], activations [0,1])")
    g.add_argument("--mls", metavar="M,E,G,Eg", help="--quant mls: mantissa bits, exponent bits, group size along "
                   "input channels, group-exponent bits (default 1,2,4,2: the MLS paper's 1M2E); docs/mls.md")
    g.add_argument("--weight-bits", type=int, metavar="M", help="weight bits (default 4)")
    g.add_argument("--act-bits", type=int, metavar="N", help="hidden activation bits; the input width comes from the dataset (default 4)")
    g.add_argument("--acc-bits", type=int, metavar="P", help="target accumulator bits for a2q/a2q+ (default 12)")
    g.add_argument("--hidden", type=_int_list, metavar="W1,W2,..", help="hidden widths (mlp) or conv channels c1,c2,c3 (cnn/resnet)")
    g.add_argument("--width-mult", type=float, metavar="F", help="scale every hidden width (WRPN), default 1")
    g.add_argument("--constrain-first", action="store_true", default=None,
                   help="apply A2Q/A2Q+ to the first layer too (default: plain integer QAT, sized exactly)")
    g.add_argument("--highway", "--highway-bits", dest="highway_bits", type=int, metavar="H",
                   help="resnet: Precision Highway width: the block inputs and residual sums stay H-bit fixed point, "
                        "only each conv's input copy is quantized to --act-bits; 0 keeps the stream at --act-bits "
                        "(default 16; the digits-rescnn preset pins 0)")
    g.add_argument("--precision", metavar="FILE",
                   help="per-layer weight and activation widths from 'accumulus precision' (precision.json; "
                        "weights B signed bits, activations B-1 unsigned); replaces --weight-bits/--act-bits")
    g.add_argument("--edge-bits", type=int, metavar="B",
                   help="wrpn: bits of the first layer's weights and of the last layer's weights and input (default 8)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default 10)")
    t.add_argument("--seed", type=int, default=0, help="seed for init, batches and the data split (default 0)")
    t.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    t.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: anneal the learning rate to 0 over --epochs (default); constant")
    t.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a shared 2-core machine)")
    t.add_argument("--resume", action="store_true", help="continue from DIR/model.pt (same options, more --epochs)")
    t.add_argument("--no-float-baseline", action="store_true", help="skip training the float twin used as the float reference")
    t.add_argument("--limit", type=int, metavar="ROWS", help="use only the first ROWS of each split (quick checks)")
    t.add_argument("--no-export", action="store_true", help="do not write DIR/model.onnx")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, metavar="DIR", help="project folder: model.pt, train.json, model.onnx")


_MODEL_KEYS = {"model": "model", "dataset": "dataset", "quant": "quant", "weight_bits": "weight_bits",
               "act_bits": "act_bits", "acc_bits": "acc_bits", "hidden": "hidden", "width_mult": "width_mult",
               "constrain_first": "constrain_first", "highway_bits": "highway_bits", "mls": "mls",
               "edge_bits": "edge_bits"}


def _check_dataset_file(name: str) -> None:
    """A user's dataset must be an .npz archive (numpy.savez); say so before torch starts."""
    from pathlib import Path

    from accumulus.errors import UserError
    from accumulus.paths import ZIP_MAGIC, NPY_MAGIC

    path = Path(name)
    if path.is_dir():
        raise UserError(f"--dataset {path} is a folder; pass digits, mnist5k or the path of an .npz with arrays "
                        "x and y")
    if not path.is_file():
        return  # load_dataset names the choices for an unknown name or a missing file
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head.startswith(ZIP_MAGIC):
        return
    kind = "a single .npy array" if head == NPY_MAGIC else "not an .npz archive"
    raise UserError(f"--dataset {path} is {kind}; save the data with numpy.savez(path, x=..., y=...)")


def _precision_widths(args, cfg, chosen: dict) -> tuple[dict, dict]:
    """``chosen`` with the per-layer widths of ``--precision`` (Sakr & Shanbhag) filled in."""
    from accumulus.errors import UserError
    from accumulus.quant.precision import load_precision, qat_widths

    for opt, key in (("--weight-bits", "weight_bits"), ("--act-bits", "act_bits"), ("--highway-bits", "highway_bits")):
        if getattr(args, key) is not None:
            raise UserError(f"{opt} conflicts with --precision {args.precision}, which sets every layer's width; "
                            f"drop one of them")
    if cfg.quant == "float":
        raise UserError(f"--precision {args.precision} needs a quantized model; add --quant int, a2q or a2q+")
    doc = load_precision(args.precision)
    wbits, abits, record = qat_widths(doc, cfg, args.precision)
    # The scalar widths summarise the per-layer ones (the widest), for readers of the config.
    chosen = dict(chosen, layer_weight_bits=wbits, layer_act_bits=abits, weight_bits=max(wbits),
                  act_bits=max(abits) if abits else cfg.act_bits)
    return chosen, record


def run(args) -> int:
    import math

    from accumulus.errors import UserError
    from accumulus.paths import output_dir
    from accumulus.quant.data import DATASETS, load_dataset
    from accumulus.quant.models import make_config, preset
    from accumulus.quant.train import TrainOptions, set_threads, train

    set_threads(args.threads)
    chosen = {k: getattr(args, a) for a, k in _MODEL_KEYS.items() if getattr(args, a) is not None}
    if "hidden" in chosen:
        chosen["hidden"] = tuple(chosen["hidden"])
    opts = TrainOptions(epochs=args.epochs if args.epochs is not None else 10, seed=args.seed,
                        batch_size=args.batch_size, lr=args.lr, schedule=args.lr_schedule, threads=args.threads, resume=args.resume,
                        float_baseline=not args.no_float_baseline, limit=args.limit, progress=not args.quiet)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1 (rows of each split), got {args.limit}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive number, got {args.lr}")
    if "dataset" in chosen and chosen["dataset"] not in DATASETS:
        _check_dataset_file(chosen["dataset"])
    out = output_dir(args.out, "--out", create=False)  # train() creates it once the options are valid
    dataset = None
    if not args.preset:
        chosen.setdefault("model", "mlp")
        chosen.setdefault("dataset", "digits")
    if chosen.get("dataset", "digits") not in DATASETS:
        # A user's file: its shape, classes and input quantizer come from the data.
        dataset = load_dataset(chosen["dataset"], seed=opts.seed, limit=opts.limit)
        chosen.update(dataset_shape=dataset.image_shape, num_classes=dataset.num_classes,
                      dataset_iq=dataset.input_quant)
    precision_record = None
    if args.precision:
        cfg0 = preset(args.preset, **chosen) if args.preset else make_config(**chosen)
        chosen, precision_record = _precision_widths(args, cfg0, chosen)
    cfg = preset(args.preset, **chosen) if args.preset else make_config(**chosen)
    model, result = train(cfg, out, opts, dataset=dataset)
    if precision_record is not None:
        import json

        from accumulus.quant.train import HISTORY

        result["precision"] = precision_record
        (out / HISTORY).write_text(json.dumps(result, indent=2))
    line = f"test accuracy {result['test_accuracy']:.4f}"
    if "float_test_accuracy" in result:
        line += f" (float reference {result['float_test_accuracy']:.4f})"
    if not args.no_export:
        from accumulus.quant.export import export_model, verify_onnx
        import torch

        ds = dataset or load_dataset(cfg.dataset, seed=opts.seed, limit=opts.limit)
        path = export_model(model, cfg, out, torch.from_numpy(ds.x_test[:8]), result["test_accuracy"])
        widths = {} if cfg.quant == "mls" else verify_onnx(path)  # MLS: no accumulator bound to check
        line += f"; wrote {path}"
        for node, w in widths.items():
            if w["acc_bits"] is not None:
                line += f"\n  {node}: exact {w['exact_bits']} bits <= P={w['acc_bits']} (data-type bound {w['datatype_bits']})"
    print(line)
    return 0
