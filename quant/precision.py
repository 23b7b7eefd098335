"""Per-tensor fixed-point precision assignment of Sakr & Shanbhag.

References: C. Sakr, Y. Kim, N. Shanbhag, "Analytical Guarantees on Numerical Precision
of Deep Neural Networks" (ICML 2017), and C. Sakr, N. Shanbhag, "Per-Tensor Fixed-Point
Quantization of the Back-Propagation Algorithm" (ICLR 2019), feed-forward part.

Convention (one for every tensor, weights and activations alike)
----------------------------------------------------------------
A tensor ``h`` with range ``r_h`` stored in ``B_h`` bits is a **signed** fixed-point
number with step ``Delta_h = r_h * 2^(1 - B_h)``: codes ``-2^(B-1) .. 2^(B-1) - 1``,
round-to-nearest (half to even), values ``[-r_h, r_h - Delta_h]``. Its quantization
noise is modelled as uniform and independent, variance
``Delta_h^2 / 12 = r_h^2 * 4^(1 - B_h) / 12``. A nonnegative tensor (the input pixels,
ReLU outputs) never uses the negative codes: it is the same quantizer as an *unsigned*
number of ``B_h - 1`` bits with the same step (``unsigned_bits`` in precision.json).

The range is the smallest power of two strictly above the largest magnitude seen on
the calibration data (the training split; for weights, the weights themselves):
``r_h = 2^(floor(log2 max|h|) + 1)``, so the binary point is fixed and the largest
value is inside the representable interval. (A range equal to the maximum would clip
the most frequent value of every ReLU layer and of the digits pixels, 16/16 = 1.0.)

Noise gain and bound
--------------------
With logits ``z``, the float prediction ``y`` and ``d_i = z_y - z_i > 0``, a first-order
perturbation ``q`` of the tensors changes ``d_i`` by ``sum_j g_ij q_j`` with
``g_ij = d(z_y - z_i)/dh_j``; its variance is ``Delta_h^2 / 12 * ||g_i||^2``. The
prediction flips to ``i`` only if that change is below ``-d_i``; for zero-mean
symmetric noise Chebyshev's inequality gives ``P <= var / (2 d_i^2)``, and a union
bound over ``i`` and over tensors gives Sakr's bound::

    p_m <= sum_h E_h 4^(1 - B_h),
    E_h = r_h^2 * mean_samples sum_{i != y} ||d(z_y - z_i)/dh||^2 / (24 (z_y - z_i)^2)

(24 = 12 from the noise variance times 2 from the one-sided tail). The gains are
computed exactly by autograd (per-sample Jacobians, ``torch.func``), in float64.

Capped bound (``--bound capped``): the same noise model and the same Chebyshev and union
steps, applied per sample, with the one further fact that a probability is at most 1::

    p_m <= mean_samples min(1, sum_h e_hs 4^(1 - B_h)),   E_h = mean_samples e_hs.

It is never above Sakr's bound and is as rigorous. It matters because the mean of
``1 / (z_y - z_i)^2`` is dominated by the few held-out samples that the float model itself
barely decides: on digits-mlp (359 test images, 5 seeds) the five smallest-margin samples
hold 64-99.9% of every ``E_h``, and Sakr's bound is 100-10,000x above the measured
mismatch, while such a sample can add at most ``1/N`` to ``p_m``. The assignment rule
(the offsets) is unchanged; only the choice of ``B_min`` uses the tighter bound.

Assignment (ICLR 2019, criterion EQ: equalise every tensor's contribution)::

    B_h = B_min + round(log2 sqrt(E_h / E_min)),

the smallest ``B_min`` whose bound meets the mismatch target. A tensor whose gain is
exactly zero cannot change the prediction to first order and gets ``B_min``.

Cost: Sakr's full-adder count of a ``D``-term dot product with ``B_A``-bit activations
and ``B_W``-bit weights, ``D B_A B_W + (D - 1)(B_A + B_W + ceil(log2 D) - 1)`` (array
multipliers plus an adder tree), summed over every dot product of one inference.

Which tensors: the tensors the quantized twin of the architecture quantizes. In a
float-trained accumulus model (:mod:`accumulus.quant.models`, ``quant=float``) those are
the outputs of its ``nn.Identity`` modules (the graph input, the residual sum) and
``nn.ReLU`` modules (hidden activations), and the weight of every Linear/Conv layer.
Biases do not exist (models have none); BatchNorm goes into requantization thresholds
in hardware and is not a tensor here. The logits are the output, not quantized.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from accumulus.errors import UserError

__all__ = [
    "TensorInfo", "tensor_infos", "noise_gains", "assign_bits", "mismatch_bound", "quantize",
    "fixed_point_predictions", "measure_mismatch", "full_adder_cost", "precision_assignment",
    "capped_bound", "per_sample_matrix", "bound_of", "BOUNDS",
    "load_float_project", "write_json", "load_precision", "qat_widths", "FORMAT", "MAX_BITS",
]

FORMAT = "accumulus-precision"
VERSION = 1
MAX_BITS = 32


@dataclass
class TensorInfo:
    """One quantizable tensor of the network."""

    name: str          # weight: "<module>.weight"; activation: the producing module's name
    kind: str          # "weight" | "activation"
    module: str        # module whose weight / output this is
    layer: str         # weight: its own layer; activation: the first weight layer after it
    shape: tuple[int, ...]          # per sample for activations
    max_abs: float = 0.0
    signed: bool = False            # any negative value seen
    E: float = 0.0                  # noise gain, already scaled by range^2
    extra: dict = field(default_factory=dict)
    # per held-out sample: its term of E (scaled by range^2; E is their mean)
    per_sample: np.ndarray | None = field(default=None, repr=False)

    @property
    def range(self) -> float:
        return pow2_range(self.max_abs)


def pow2_range(max_abs: float) -> float:
    """Smallest power of two strictly above ``max_abs`` (1.0 for an all-zero tensor)."""
    if not max_abs > 0:
        return 1.0
    return float(2.0 ** (math.floor(math.log2(max_abs)) + 1))


def _activation_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Identity, nn.ReLU))]


def _weight_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def check_float_model(model: nn.Module) -> None:
    quantized = [n for n, m in model.named_modules() if type(m).__module__.startswith("brevitas")]
    if quantized:
        raise UserError(f"model has quantized modules ({', '.join(quantized[:3])}); "
                        f"the precision assignment needs a float-trained model ('accumulus train --quant float')")


def tensor_infos(model: nn.Module, x_calib: np.ndarray, batch: int = 500) -> list[TensorInfo]:
    """Every quantizable tensor in forward order, with its largest magnitude on ``x_calib``.

    Also records, per weight layer, its fan-in ``D``, the dot products per inference and
    the activation tensor it reads (``extra``), for the cost model.
    """
    check_float_model(model)
    model.eval()
    order: list[tuple[str, str]] = []     # (kind, module name) in execution order
    shapes: dict[str, tuple] = {}
    stats: dict[str, list[float]] = {}
    hooks = []

    def act_hook(name):
        def hook(mod, inp, out):
            if name not in shapes:
                order.append(("activation", name))
                shapes[name] = tuple(out.shape[1:])
            s = stats.setdefault(name, [0.0, 0.0])
            s[0] = max(s[0], float(out.detach().abs().max()))
            s[1] = min(s[1], float(out.detach().min()))
        return hook

    def weight_hook(name):
        def hook(mod, inp, out):
            if name not in shapes:
                order.append(("weight", name))
                shapes[name] = tuple(out.shape[1:])
        return hook

    for n, m in _activation_modules(model):
        hooks.append(m.register_forward_hook(act_hook(n)))
    for n, m in _weight_modules(model):
        hooks.append(m.register_forward_hook(weight_hook(n)))
    try:
        with torch.no_grad():
            for i in range(0, len(x_calib), batch):
                model(torch.from_numpy(np.asarray(x_calib[i:i + batch], dtype=np.float32)))
    finally:
        for h in hooks:
            h.remove()

    mods = dict(model.named_modules())
    infos: list[TensorInfo] = []
    last_act = None
    pending: list[TensorInfo] = []
    for kind, name in order:
        if kind == "activation":
            mx, mn = stats[name]
            t = TensorInfo(name, "activation", name, "", shapes[name], max_abs=mx, signed=mn < 0)
            infos.append(t)
            pending.append(t)
            last_act = name
            continue
        m = mods[name]
        w = m.weight.detach()
        if isinstance(m, nn.Linear):
            fan_in, dots = m.in_features, m.out_features
        else:
            fan_in = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            dots = int(math.prod(shapes[name]))
        for t in pending:
            t.layer = name
        pending = []
        infos.append(TensorInfo(f"{name}.weight", "weight", name, name, tuple(w.shape),
                                max_abs=float(w.abs().max()), signed=bool((w < 0).any()),
                                extra={"fan_in": fan_in, "dot_products": dots, "input": last_act}))
    for t in pending:
        t.layer = "output"
    return infos


def noise_gains(model: nn.Module, infos: list[TensorInfo], x: np.ndarray,
                progress: bool = False, batch: int | None = None) -> dict:
    """Fill ``info.E`` (scaled by range^2) from the held-out samples ``x``; returns statistics.

    Gradients are exact per-sample Jacobians of the logits with respect to every weight
    and (through a zero perturbation added to its output) every activation, in float64.
    """
    from torch.func import functional_call, jacrev, vmap

    check_float_model(model)
    m64 = _float64_copy(model)
    params = {f"{t.module}.weight": dict(m64.named_parameters())[f"{t.module}.weight"].detach()
              for t in infos if t.kind == "weight"}
    acts = [t for t in infos if t.kind == "activation"]
    eps0 = {t.name: torch.zeros((1,) + tuple(t.shape), dtype=torch.float64) for t in acts}
    state: dict = {}
    mods = dict(m64.named_modules())
    hooks = [mods[t.module].register_forward_hook(_add_eps(t.name, state)) for t in acts]

    def logits(p, eps, xi):
        state["eps"] = eps
        try:
            return functional_call(m64, p, (xi.unsqueeze(0),))[0]
        finally:
            state.pop("eps", None)

    jac = vmap(jacrev(logits, argnums=(0, 1)), in_dims=(None, None, 0))
    n_params = sum(int(v.numel()) for v in params.values()) + sum(int(v.numel()) for v in eps0.values())
    k = None
    sums = {t.name: 0.0 for t in infos}
    per_sample: dict[str, list] = {t.name: [] for t in infos}
    n_done, ties = 0, 0
    xs = torch.from_numpy(np.asarray(x, dtype=np.float64))
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            z_all = m64(xs)
        k = z_all.shape[1]
        # Jacobians of a batch take batch * classes * tensor elements float64s: keep ~ 200 MB.
        batch = batch or max(1, min(256, int(2.5e7 // (k * n_params))))
        for i in range(0, len(xs), batch):
            xb, zb = xs[i:i + batch], z_all[i:i + batch]
            jp, je = jac(params, eps0, xb)
            y = zb.argmax(1)
            idx = torch.arange(len(xb))
            dz = zb[idx, y][:, None] - zb                          # (n, K), >= 0
            valid = torch.ones_like(dz, dtype=torch.bool)
            valid[idx, y] = False
            ties += int(((dz == 0) & valid).sum())
            valid &= dz > 0
            denom = torch.where(valid, 24.0 * dz ** 2, torch.ones_like(dz))
            for name, g in list(jp.items()) + list(je.items()):
                g = g.reshape(len(xb), k, -1)
                diff = g[idx, y][:, None, :] - g                   # d(z_y - z_i)/dh, (n, K, P)
                term = torch.where(valid, (diff ** 2).sum(-1) / denom, torch.zeros_like(dz))
                sums[name] += float(term.sum())
                per_sample[name].append(term.sum(1).numpy())
            n_done += len(xb)
            if progress:
                print(f"  noise gains: {n_done}/{len(xs)} samples ({time.perf_counter() - t0:.1f} s)", flush=True)
    finally:
        for h in hooks:
            h.remove()
    for t in infos:
        t.E = t.range ** 2 * sums[t.name] / max(1, n_done)
        t.per_sample = t.range ** 2 * (np.concatenate(per_sample[t.name]) if per_sample[t.name] else np.zeros(0))
    return {"samples": n_done, "classes": k, "exact_ties_skipped": ties,
            "seconds": round(time.perf_counter() - t0, 3)}


def _add_eps(name, state):
    def hook(mod, inp, out):
        eps = state.get("eps")
        return out if eps is None else out + eps[name]
    return hook


def _float64_copy(model: nn.Module) -> nn.Module:
    import copy

    m = copy.deepcopy(model).double()
    m.eval()
    m.requires_grad_(False)   # torch.func differentiates the tensors it is given, nothing else
    return m


def offsets(gains: list[float]) -> list[int | None]:
    """``round(log2 sqrt(E_h / E_min))`` (half up) per gain; None for a zero gain."""
    pos = [e for e in gains if e > 0]
    if not pos:
        raise UserError("every noise gain is zero: the network's prediction does not depend on any tensor")
    e_min = min(pos)
    return [int(math.floor(0.5 * math.log2(e / e_min) + 0.5)) if e > 0 else None for e in gains]


def assign_bits(gains: list[float], b_min: int) -> list[int]:
    return [b_min + (o if o is not None else 0) for o in offsets(gains)]


BOUNDS = ("sakr", "capped")


def mismatch_bound(gains: list[float], bits: list[int]) -> float:
    """Sakr's bound ``sum_h E_h 4^(1 - B_h)`` on the float-vs-fixed-point mismatch probability."""
    return float(sum(e * 4.0 ** (1 - b) for e, b in zip(gains, bits)))


def capped_bound(per_sample: np.ndarray, bits: list[int]) -> float:
    """``mean_s min(1, sum_h e_hs 4^(1 - B_h))`` (module docstring): ``per_sample`` is the
    (samples x tensors) array of every tensor's per-sample gain terms."""
    per_sample = np.asarray(per_sample, dtype=np.float64)
    if per_sample.ndim != 2 or per_sample.shape[1] != len(bits) or per_sample.shape[0] == 0:
        raise ValueError(f"per_sample must be (samples, {len(bits)}), got {per_sample.shape}")
    w = np.array([4.0 ** (1 - b) for b in bits])
    return float(np.mean(np.minimum(1.0, per_sample @ w)))


def per_sample_matrix(infos: list[TensorInfo]) -> np.ndarray:
    """(samples x tensors) gain terms of :func:`noise_gains` (which must have run)."""
    if any(t.per_sample is None for t in infos):
        raise ValueError("noise_gains() has not filled the per-sample terms")
    return np.stack([t.per_sample for t in infos], 1)


def bound_of(kind: str, gains: list[float], bits: list[int], per_sample: np.ndarray | None = None) -> float:
    if kind == "sakr":
        return mismatch_bound(gains, bits)
    if kind == "capped":
        if per_sample is None:
            raise ValueError("the capped bound needs the per-sample gain terms")
        return capped_bound(per_sample, bits)
    raise UserError(f"--bound {kind!r}: choose one of {', '.join(BOUNDS)}")


def choose_b_min(gains: list[float], target: float, bound: str = "sakr",
                 per_sample: np.ndarray | None = None) -> int:
    for b_min in range(1, MAX_BITS + 1):
        if bound_of(bound, gains, assign_bits(gains, b_min), per_sample) <= target:
            return b_min
    raise UserError(f"no B_min <= {MAX_BITS} meets --mismatch {target} under the {bound} bound; "
                    f"ask for a larger mismatch")


# --- fixed-point execution (used to measure, not to compute the gains) -------------------

def quantize(x: torch.Tensor, r: float, bits: int) -> torch.Tensor:
    """Signed fixed point: step ``r 2^(1-bits)``, round half to even, clip to the codes."""
    step = r * 2.0 ** (1 - bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / step), lo, hi) * step


@torch.no_grad()
def fixed_point_predictions(model: nn.Module, infos: list[TensorInfo], bits: list[int],
                            x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Top-1 of ``model`` with every tensor of ``infos`` quantized to its bits and range."""
    import copy

    m = copy.deepcopy(model).eval()
    mods = dict(m.named_modules())
    hooks = []
    for t, b in zip(infos, bits):
        if t.kind == "weight":
            w = mods[t.module].weight
            w.copy_(quantize(w, t.range, b))
        else:
            hooks.append(mods[t.module].register_forward_hook(
                lambda mod, inp, out, r=t.range, b=b: quantize(out, r, b)))
    out = []
    for i in range(0, len(x), batch):
        out.append(m(torch.from_numpy(np.asarray(x[i:i + batch], dtype=np.float32))).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def float_predictions(model: nn.Module, x: np.ndarray, batch: int = 500) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(np.asarray(x[i:i + batch], dtype=np.float32))).argmax(1).numpy()
                           for i in range(0, len(x), batch)])


def measure_mismatch(model, infos, bits, x, ref=None) -> float:
    ref = float_predictions(model, x) if ref is None else ref
    return float(np.mean(fixed_point_predictions(model, infos, bits, x) != ref))


def full_adder_cost(infos: list[TensorInfo], bits: list[int]) -> tuple[int, list[dict]]:
    """Sakr's full-adder count summed over every dot product of one inference."""
    by_name = {t.name: b for t, b in zip(infos, bits)}
    layers, total = [], 0
    for t, b_w in zip(infos, bits):
        if t.kind != "weight":
            continue
        d, n = t.extra["fan_in"], t.extra["dot_products"]
        if t.extra["input"] is None:
            raise UserError(f"layer {t.layer} has no quantized input tensor; cannot cost it")
        b_a = by_name[t.extra["input"]]
        exact = next((u.extra.get("exact_bits") for u in infos if u.name == t.extra["input"]), None)
        if exact is not None:
            b_a = min(b_a, exact)
        per_dot = d * b_a * b_w + (d - 1) * (b_a + b_w + math.ceil(math.log2(d)) - 1)
        layers.append({"layer": t.layer, "D": d, "dot_products": n, "B_A": b_a, "B_W": b_w,
                       "full_adders_per_dot": per_dot, "full_adders": per_dot * n})
        total += per_dot * n
    return total, layers


# --- the project-level entry point ----------------------------------------------------

def load_float_project(project: str | Path):
    """(model, config, dataset, train.json dict) of a float-trained project folder."""
    import json

    from .data import load_dataset
    from .train import CHECKPOINT, HISTORY, load_checkpoint

    project = Path(project)
    if not project.is_dir():
        raise UserError(f"project folder {project} does not exist; train one with "
                        f"'accumulus train --quant float --out {project}'")
    if not (project / CHECKPOINT).is_file():
        raise UserError(f"{project} has no {CHECKPOINT}; train it with 'accumulus train --quant float --out {project}'")
    model, cfg, _ = load_checkpoint(project)
    if cfg.quant != "float":
        raise UserError(f"{project / CHECKPOINT} was trained with --quant {cfg.quant}; the precision assignment "
                        f"needs a float-trained project: 'accumulus train --quant float --out DIR'")
    hist = {}
    if (project / HISTORY).is_file():
        try:
            hist = json.loads((project / HISTORY).read_text())
        except ValueError:
            raise UserError(f"{project / HISTORY} is not valid JSON; retrain or remove it") from None
    dsi = hist.get("dataset", {})
    seed = int(dsi.get("split_seed", hist.get("options", {}).get("seed", 0)))
    frac = float(dsi.get("test_fraction", 0.2))
    ds = load_dataset(cfg.dataset, seed=seed, test_fraction=frac)
    # Training with --limit kept the first rows of each split: use the same rows.
    for split in ("train", "test"):
        n = dsi.get(split)
        if isinstance(n, int) and 0 < n < len(getattr(ds, f"x_{split}")):
            setattr(ds, f"x_{split}", getattr(ds, f"x_{split}")[:n])
            setattr(ds, f"y_{split}", getattr(ds, f"y_{split}")[:n])
    return model, cfg, ds, {"split_seed": seed, "test_fraction": frac}


def set_input_exact_bits(infos: list[TensorInfo], input_scale: float) -> None:
    """Record the width at which the graph input is already exact.

    The dataset delivers the input as codes of step ``input_scale`` (digits: 1/16), so
    in this module's convention it is exact at ``1 + log2(range / input_scale)`` bits;
    more bits change nothing, and the cost model counts no more than that.
    """
    first = next((t for t in infos if t.kind == "activation"), None)
    if first is None or not input_scale > 0:
        return
    b = 1 + math.log2(first.range / input_scale)
    if abs(b - round(b)) < 1e-9:
        first.extra["exact_bits"] = int(round(b))


def precision_assignment(model: nn.Module, x_calib: np.ndarray, x_gain: np.ndarray, x_test: np.ndarray,
                         mismatch: float, y_test: np.ndarray | None = None, progress: bool = False,
                         uniform_max_bits: int = 16, input_scale: float | None = None,
                         bound: str = "sakr") -> dict:
    """The whole assignment as a JSON-ready dict (see the module docstring).

    ``x_calib`` fixes the ranges, ``x_gain`` (held out) the noise gains, ``x_test`` is
    where float and fixed-point predictions are compared. ``bound``: ``sakr`` or
    ``capped``, the bound ``B_min`` is chosen by (both are recorded).
    """
    if not 0.0 < mismatch < 1.0:
        raise UserError(f"--mismatch must be in (0, 1), got {mismatch}")
    if bound not in BOUNDS:
        raise UserError(f"--bound {bound!r}: choose one of {', '.join(BOUNDS)}")
    infos = tensor_infos(model, x_calib)
    if input_scale is not None:
        set_input_exact_bits(infos, input_scale)
    gstats = noise_gains(model, infos, x_gain, progress=progress)
    gains = [t.E for t in infos]
    per_sample = per_sample_matrix(infos)
    b_min = choose_b_min(gains, mismatch, bound, per_sample)
    bits = assign_bits(gains, b_min)
    offs = offsets(gains)
    sakr = mismatch_bound(gains, bits)
    capped = capped_bound(per_sample, bits)
    e_min = min(e for e in gains if e > 0)

    ref = float_predictions(model, x_test)
    fx = fixed_point_predictions(model, infos, bits, x_test)
    measured = float(np.mean(fx != ref))
    cost, cost_layers = full_adder_cost(infos, bits)
    result = {
        "format": FORMAT, "version": VERSION,
        "method": "Sakr & Shanbhag, ICML 2017 / ICLR 2019: B_h = B_min + round(log2 sqrt(E_h/E_min))",
        "convention": "signed fixed point, step = range * 2^(1-B), noise variance range^2 4^(1-B) / 12; "
                      "range = smallest power of two above max|h| on the calibration split; "
                      "bound p_m <= sum_h E_h 4^(1-B_h); nonnegative tensors fit unsigned in B-1 bits",
        "mismatch_target": mismatch,
        "bound": bound,
        "B_min": b_min,
        "E_min": e_min,
        "mismatch_bound": sakr if bound == "sakr" else capped,
        "bounds": {"sakr": sakr, "capped": capped},
        "tensors": [
            {"name": t.name, "kind": t.kind, "layer": t.layer, "shape": list(t.shape),
             "E": t.E, "offset": o, "B": b, "range": t.range, "max_abs": t.max_abs, "signed": t.signed,
             "unsigned_bits": None if t.signed else b - 1, **t.extra}
            for t, o, b in zip(infos, offs, bits)
        ],
        "gains": gstats,
        "measured": {"mismatch": measured, "test_samples": int(len(x_test))},
        "cost_full_adders": cost,
        "cost_layers": cost_layers,
    }
    if y_test is not None:
        result["measured"]["float_accuracy"] = float(np.mean(ref == y_test))
        result["measured"]["fixed_accuracy"] = float(np.mean(fx == y_test))
    # Sakr's comparison: the smallest uniform width at least as good, measured.
    searched = []
    uniform = None
    for b in range(1, uniform_max_bits + 1):
        ub = [b] * len(infos)
        mm = measure_mismatch(model, infos, ub, x_test, ref)
        searched.append({"bits": b, "measured_mismatch": mm, "mismatch_bound": mismatch_bound(gains, ub),
                         "capped_bound": capped_bound(per_sample, ub),
                         "cost_full_adders": full_adder_cost(infos, ub)[0]})
        if mm <= measured:
            uniform = searched[-1]
            break
    result["uniform"] = {"smallest_bits_with_mismatch_at_most_assignment": uniform, "searched": searched}
    # The same assignment at every smaller B_min: bound, measured mismatch and cost side by side.
    sweep = []
    for b in range(1, b_min + 1):
        bb = assign_bits(gains, b)
        sweep.append({"B_min": b, "mismatch_bound": mismatch_bound(gains, bb),
                      "capped_bound": capped_bound(per_sample, bb),
                      "measured_mismatch": measure_mismatch(model, infos, bb, x_test, ref),
                      "cost_full_adders": full_adder_cost(infos, bb)[0]})
    result["b_min_sweep"] = sweep
    return result


def write_json(result: dict, path: str | Path) -> Path:
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


# --- precision.json -> per-layer QAT widths (accumulus train --precision) -------------

def load_precision(path: str | Path) -> dict:
    """Read and check a precision.json written by :func:`precision_assignment`."""
    import json

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--precision {path} does not exist; write it with 'accumulus precision DIR --mismatch P'")
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"--precision {path} is not valid JSON; rewrite it with 'accumulus precision DIR'") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("tensors"), list):
        raise UserError(f"--precision {path} is not an {FORMAT} file (no 'format': '{FORMAT}' and 'tensors'); "
                        f"write it with 'accumulus precision DIR --mismatch P'")
    if doc.get("version") != VERSION:
        raise UserError(f"--precision {path} has version {doc.get('version')}; this accumulus reads version {VERSION}")
    for t in doc["tensors"]:
        if not isinstance(t, dict) or not {"name", "kind", "B"} <= set(t) or not isinstance(t["B"], int):
            raise UserError(f"--precision {path}: tensor entry {t!r:.80} lacks name, kind or an integer B")
    return doc


def qat_widths(doc: dict, cfg, path: str | Path = "precision.json") -> tuple[tuple[int, ...], tuple[int, ...], dict]:
    """Map a precision.json onto ``cfg``'s layers: (weight bits per layer, activation bits per
    quantizer, record for train.json).

    In Sakr's convention every tensor is signed fixed point of ``B`` bits. A weight becomes a
    ``B``-bit signed (narrow-range) Brevitas weight quantizer. A nonnegative activation uses
    only the nonnegative codes, i.e. it is an unsigned quantizer of ``B - 1`` bits
    (``unsigned_bits``): the hidden ReLU quantizers get that width. The graph input keeps the
    dataset's width (its codes are the raw pixels, DESIGN.md); the requested width is recorded.
    The learned quantizer scales replace the fixed power-of-two ranges of the analysis.
    """
    from .models import build_model

    path = Path(path)
    from dataclasses import replace

    fcfg = replace(cfg, quant="float", acc_bits=None, layer_weight_bits=None, layer_act_bits=None)
    twin = build_model(fcfg)
    mods = dict(twin.named_modules())
    w_names = cfg.weight_layer_names()
    a_names = cfg.act_names()
    expected = ["input_quant"] + [f"{n}.weight" for n in w_names] + a_names
    by_name = {}
    for t in doc["tensors"]:
        if t["name"] in by_name:
            raise UserError(f"--precision {path}: tensor '{t['name']}' appears twice")
        by_name[t["name"]] = t
    for name in by_name:
        if name not in expected:
            raise UserError(f"--precision {path}: tensor '{name}' is not a tensor of this model ({cfg.model}, hidden "
                            f"{list(cfg.hidden)}; it has {', '.join(expected)}); use the options of the project "
                            f"the assignment was made for")
    for name in expected:
        if name not in by_name:
            raise UserError(f"--precision {path} has no width for tensor '{name}' of this model ({cfg.model}, hidden "
                            f"{list(cfg.hidden)}); use the options of the project the assignment was made for")
    wbits = []
    for n in w_names:
        t = by_name[f"{n}.weight"]
        shape = tuple(mods[n].weight.shape)
        if "shape" in t and tuple(t["shape"]) != shape:
            raise UserError(f"--precision {path}: tensor '{n}.weight' has shape {list(t['shape'])} but this model's "
                            f"is {list(shape)}; use the options of the project the assignment was made for")
        if t["kind"] != "weight":
            raise UserError(f"--precision {path}: tensor '{n}.weight' has kind '{t['kind']}', expected 'weight'")
        if not 2 <= t["B"] <= 16:
            raise UserError(f"--precision {path}: weight '{n}.weight' gets B={t['B']} bits; QAT weights need "
                            f"2..16 (signed); choose another --mismatch")
        wbits.append(int(t["B"]))
    abits = []
    for n in a_names:
        t = by_name[n]
        if t["kind"] != "activation":
            raise UserError(f"--precision {path}: tensor '{n}' has kind '{t['kind']}', expected 'activation'")
        if t.get("signed"):
            raise UserError(f"--precision {path}: activation '{n}' is signed; this model's activation quantizers "
                            f"are unsigned")
        b = int(t["B"]) - 1
        if not 1 <= b <= 16:
            raise UserError(f"--precision {path}: activation '{n}' gets B={t['B']} (unsigned {b}) bits; "
                            f"unsigned activations need 1..16; choose another --mismatch")
        abits.append(b)
    inp = by_name["input_quant"]
    record = {
        "file": str(path),
        "B_min": doc.get("B_min"), "mismatch_target": doc.get("mismatch_target"),
        "mismatch_bound": doc.get("mismatch_bound"),
        "weights": {f"{n}.weight": b for n, b in zip(w_names, wbits)},
        "activations_unsigned": dict(zip(a_names, abits)),
        "input": {"requested_unsigned_bits": int(inp["B"]) - 1, "used_bits": cfg.input_bits,
                  "note": "the graph input keeps the dataset's codes (raw pixels)"},
        "rule": "weight: B signed bits; nonnegative activation: B - 1 unsigned bits (same step)",
    }
    return tuple(wbits), tuple(abits), record
