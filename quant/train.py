"""CPU quantization-aware training with Adam (cosine-annealed learning rate by default),
checkpoints, resume and a JSON history.

Threads are set deliberately (default 1): on a 2-core machine shared with other work,
one torch thread ran 20-40x faster than two (TOOLCHAIN.md).

Outputs in ``out_dir``:

* ``model.pt``: ``{"state_dict", "config", "optimizer", "epoch", "history", "rng"}``, all
  tensors and plain values, so ``torch.load(path, weights_only=True)`` reads it;
* ``train.json``: the config, seed, per-epoch loss / train and test accuracy, and
  ``float_test_accuracy``: the accuracy of **the same architecture trained with
  quant=float** (same seed, data split and epochs), the honest float reference.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from accumulus.errors import UserError

from . import brevitas_config as bc
from .data import Dataset, load_dataset
from .models import ModelConfig, build_model

__all__ = ["TrainOptions", "train", "load_checkpoint", "evaluate", "weight_stats", "set_threads"]

CHECKPOINT = "model.pt"
HISTORY = "train.json"


@dataclass
class TrainOptions:
    epochs: int = 5
    seed: int = 0
    batch_size: int = 32
    lr: float = 3e-3
    schedule: str = "cosine"      # "cosine" (anneal to 0 over the epochs) or "constant"
    threads: int = 1
    resume: bool = False
    float_baseline: bool = True
    limit: int | None = None      # rows per split (fast tests)
    progress: bool = True
    test_fraction: float = 0.2


def set_threads(n: int) -> None:
    if n < 1:
        raise UserError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        out = model(torch.from_numpy(x[i:i + batch]))
        correct += int((out.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / max(1, len(x))


def weight_stats(model: nn.Module, cfg: ModelConfig, sample: torch.Tensor) -> dict:
    """Fraction of zero integer weights, overall and in the accumulator-constrained layers."""
    from .export import quant_weights

    layers = quant_weights(model, cfg, sample)
    per, total, zeros, c_total, c_zeros = {}, 0, 0, 0, 0
    for le, (name, mod) in zip(layers, _named_weights(model)):
        w = le.weight_int if le.weight_int is not None else mod.weight.detach().numpy()
        z = int(np.sum(w == 0))
        per[name] = z / w.size
        total, zeros = total + w.size, zeros + z
        if le.acc_bits is not None:
            c_total, c_zeros = c_total + w.size, c_zeros + z
    return {"sparsity": zeros / total, "constrained_sparsity": (c_zeros / c_total) if c_total else None,
            "layer_sparsity": per}


def _named_weights(model):
    from .models import quant_layers

    return quant_layers(model)


def _checkpoint(model, cfg, optimizer, epoch, history) -> dict:
    return {
        "state_dict": model.state_dict(),
        "config": cfg.to_json(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": json.dumps(history),
        "rng": torch.get_rng_state(),
    }


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelConfig, dict]:
    """Rebuild the model of ``path`` (a model.pt or its folder); returns (model, config, checkpoint)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train first with 'accumulus train --out {path.parent}'")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ModelConfig.from_json(ck["config"])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        f"retrain with 'accumulus train --out {path.parent}'") from None
    model = build_model(cfg)
    _load_state(model, ck["state_dict"], path)
    return model, cfg, ck


def _load_state(model, state_dict, path):
    try:
        model.load_state_dict(state_dict)
    except Exception as exc:
        raise UserError(f"checkpoint {path} does not match its model config ({str(exc).splitlines()[0]}); retrain") from None


def _fit(model, cfg, ds: Dataset, opts: TrainOptions, out_dir: Path | None, start_epoch=0,
         optimizer=None, history=None, label="train") -> list[dict]:
    x_train = torch.from_numpy(ds.x_train)
    y_train = torch.from_numpy(ds.y_train)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=opts.lr)
    loss_fn = nn.CrossEntropyLoss()
    history = history if history is not None else []
    n = len(x_train)
    steps = math.ceil(n / opts.batch_size)
    if opts.schedule not in ("cosine", "constant"):
        raise UserError(f"learning-rate schedule must be cosine or constant, got '{opts.schedule}'")
    total = opts.epochs * steps
    for epoch in range(start_epoch, opts.epochs):
        # Per-epoch generator: a resumed run draws the same batches as an uninterrupted one.
        gen = torch.Generator().manual_seed(opts.seed * 100003 + epoch)
        perm = torch.randperm(n, generator=gen)
        model.train()
        t0 = time.perf_counter()
        tot_loss, correct, seen = 0.0, 0, 0
        bar = _progress(range(steps), f"{label} epoch {epoch + 1}/{opts.epochs}", opts.progress)
        for s in bar:
            idx = perm[s * opts.batch_size:(s + 1) * opts.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if opts.schedule == "cosine":
                # Annealing removes most of the last epochs' seed-to-seed noise, which at
                # 1000 test images is as large as the float-vs-quantized gaps being measured.
                # A function of the step: a run resumed with the same --epochs continues the same curve.
                for group in optimizer.param_groups:
                    group["lr"] = opts.lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps + s) / total))
            out = model(xb)
            loss = loss_fn(out, yb)
            if not torch.isfinite(loss):
                raise UserError(f"{label}: loss became {loss.item()} in epoch {epoch + 1}; lower --lr or raise --acc-bits")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tot_loss += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        test_acc = evaluate(model, ds.x_test, ds.y_test)
        rec = {"epoch": epoch + 1, "loss": tot_loss / seen, "train_accuracy": correct / seen,
               "test_accuracy": test_acc, "seconds": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        if opts.progress:
            print(f"{label} epoch {epoch + 1}: loss {rec['loss']:.4f} train {rec['train_accuracy']:.4f} "
                  f"test {test_acc:.4f} ({rec['seconds']:.1f} s)", flush=True)
        if out_dir is not None:
            torch.save(_checkpoint(model, cfg, optimizer, epoch + 1, history), out_dir / CHECKPOINT)
    return history


def _progress(it, desc, enabled):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


def train(cfg: ModelConfig, out_dir: str | Path | None, opts: TrainOptions,
          dataset: Dataset | None = None) -> tuple[nn.Module, dict]:
    """Train ``cfg`` (writing ``model.pt`` and ``train.json`` into ``out_dir`` if given).

    Returns the trained model and the history dict written to ``train.json``.
    """
    set_threads(opts.threads)
    if opts.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {opts.epochs}")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    ds = dataset or load_dataset(cfg.dataset, seed=opts.seed, test_fraction=opts.test_fraction, limit=opts.limit)
    if tuple(ds.image_shape) != tuple(cfg.in_shape):
        raise UserError(f"dataset '{cfg.dataset}' has images {ds.image_shape} but the model expects {cfg.in_shape}")
    t_start = time.perf_counter()
    torch.manual_seed(opts.seed)
    model = build_model(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    start, history = 0, []
    ck_path = out_dir / CHECKPOINT if out_dir is not None else None
    if opts.resume and ck_path is not None and ck_path.is_file():
        _, ck_cfg, ck = load_checkpoint(ck_path)
        if ck_cfg != cfg:
            raise UserError(f"--resume: {ck_path} was trained with a different configuration; "
                            f"use the same options or a new --out")
        _load_state(model, ck["state_dict"], ck_path)
        optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        start, history = int(ck["epoch"]), json.loads(ck["history"])
        if start >= opts.epochs and opts.progress:
            print(f"resume: {ck_path} already has {start} epochs", flush=True)
    elif cfg.quant in ("a2q", "a2q+"):
        # EP-init (TOOLCHAIN.md): start inside every constrained layer's L1 ball.
        bc.apply_ep_init(model, torch.from_numpy(ds.x_train[:256]))
    history = _fit(model, cfg, ds, opts, out_dir, start, optimizer, history)
    train_seconds = time.perf_counter() - t_start

    result = {
        "config": cfg.to_json(),
        "dataset": {"name": ds.name, "train": len(ds.x_train), "test": len(ds.x_test),
                    "input": ds.input_quant.to_json(), "split_seed": opts.seed,
                    "test_fraction": opts.test_fraction},
        "options": {"epochs": opts.epochs, "seed": opts.seed, "batch_size": opts.batch_size,
                    "lr": opts.lr, "schedule": opts.schedule, "threads": opts.threads, "optimizer": "Adam"},
        "history": history,
        "test_accuracy": history[-1]["test_accuracy"],
        "train_seconds": round(train_seconds, 2),
        "versions": _versions(),
    }
    sample = torch.from_numpy(ds.x_test[:8])
    if cfg.quant not in ("float", "mls"):
        result.update(weight_stats(model, cfg, sample))
    if opts.float_baseline and cfg.quant != "float":
        fcfg = ModelConfig(**{**cfg.to_json(), "hidden": cfg.hidden, "in_shape": cfg.in_shape,
                              "quant": "float", "acc_bits": None, "mls": None})
        torch.manual_seed(opts.seed)
        fmodel = build_model(fcfg)
        fopts = TrainOptions(**{**opts.__dict__, "resume": False})
        fhist = _fit(fmodel, fcfg, ds, fopts, None, label="float")
        result["float_test_accuracy"] = fhist[-1]["test_accuracy"]
        result["float_reference"] = "same architecture trained with quant=float, same seed, split and epochs"
        result["float_history"] = fhist
    elif cfg.quant == "float":
        result["float_test_accuracy"] = result["test_accuracy"]
        result["float_reference"] = "this model is float"
    if out_dir is not None:
        (out_dir / HISTORY).write_text(json.dumps(result, indent=2))
    return model, result


def _versions() -> dict:
    import brevitas

    return {"torch": torch.__version__, "brevitas": brevitas.__version__, "numpy": np.__version__}
