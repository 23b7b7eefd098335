"""Calibrate ``compiler/cost.py``'s coefficients against Yosys.

Each configuration is one matrix-vector engine (``hw/`` ``layer_fc0``: systolic array,
input buffer, order restore, threshold requantizer) of a synthetic plan, with its own
``K x N``, PE, SIMD, input width and accumulator policy. Every engine is synthesised alone
(flat, LUT-only unless the family's DSP variant is asked for) and the cost model's linear
features are fitted to the measured LUT and FF counts by non-negative least squares on
*relative* error (a small engine matters as much as a big one). The fitted coefficients are
data: they replace the family's table in ``compiler/cost_coefficients.json`` together with
the calibration's provenance (Yosys version, configurations, errors).

Run: ``python -m accumulus.boards.calibrate --family ice40 --out build/calibration``; with
``--engine const`` the constant-weight engines (:data:`CONST_CONFIGS`) are calibrated instead and
their coefficients added to the family's table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from accumulus.compiler import cost as cost_model
from accumulus.compiler.accumulators import pe_widths
from accumulus.compiler.synthetic import mlp_plan
from accumulus.compiler.types import IntType

from .synth import SynthJob, run_many, yosys_version

__all__ = ["Config", "ConstConfig", "SWGConfig", "DEFAULT_CONFIGS", "CONST_CONFIGS", "SWG_CONFIGS", "features", "fit",
           "calibrate", "calibrate_const", "calibrate_swg", "coefficients_path"]

LUT_TERMS = ("lut_per_mac_bit", "lut_per_adder_bit", "lut_per_acc_bit", "lut_per_threshold_bit",
             "lut_per_buffer_bit", "lut_per_rom_bit", "lut_per_threshold_rom_bit", "lut_per_requant", "lut_per_layer")
FF_TERMS = ("ff_per_acc_bit", "ff_per_lane_bit", "ff_per_buffer_bit", "ff_per_rom_bit", "ff_per_requant",
            "ff_per_layer")
# Where Yosys stops using block RAM for a PE's weight ROM, measured per family: on iCE40's
# 4 kbit EBRs 512-bit and 32-deep ROMs became LUTs while 2 kbit ROMs of depth >= 128 stayed
# in EBR; on ECP5's 18 kbit DP16KD, 2 kbit ROMs became LUTs too and 4 kbit ones used EBR.
ROM_LIMITS_BY_FAMILY = {
    "ice40": {"rom_logic_max_bits": 1023, "rom_min_depth": 64},
    "ecp5": {"rom_logic_max_bits": 2048, "rom_min_depth": 64},
    # Xilinx 7: ROMs of up to 4 kbit per PE stayed in LUTs (the calibration engines), 16 kbit
    # ones (digits-mlp hidden layers at PE=1) went to RAMB18
    "xc7": {"rom_logic_max_bits": 4096, "rom_min_depth": 64},
}
ROM_LIMITS = ROM_LIMITS_BY_FAMILY["ice40"]


@dataclass(frozen=True)
class Config:
    """One calibration engine: ``fan_in x channels`` matvec with thresholds to 4-bit codes."""

    fan_in: int
    channels: int
    pe: int
    simd: int
    input_bits: int = 4
    weight_bits: int = 4
    policy: str = "exact"
    seed: int = 0
    natural_order: bool = False
    requant: bool = True         # False: the layer outputs accumulators (a network's last layer)

    @property
    def name(self) -> str:
        return (f"k{self.fan_in}_n{self.channels}_pe{self.pe}_simd{self.simd}_x{self.input_bits}"
                f"_w{self.weight_bits}_{self.policy.replace(':', '-')}{'_nat' if self.natural_order else ''}"
                f"{'' if self.requant else '_acc'}")


# Twelve engines spanning the folding, input width and policy space the presets use, each
# small enough to synthesise in seconds on iCE40.
DEFAULT_CONFIGS = (
    Config(64, 16, 1, 4), Config(64, 16, 2, 4), Config(64, 16, 2, 4, policy="fixed:32", natural_order=True),
    Config(64, 32, 4, 4, natural_order=True), Config(64, 32, 2, 8), Config(64, 32, 2, 8, policy="datatype",
                                                                               natural_order=True),
    Config(32, 16, 4, 2), Config(128, 16, 2, 8, input_bits=8, natural_order=True),
    Config(64, 16, 1, 8, input_bits=5, policy="fixed:24"),
    Config(32, 32, 8, 1, natural_order=True), Config(64, 16, 2, 16, natural_order=True),
    Config(128, 32, 4, 8, policy="fixed:32"),
    # last layers (accumulators out, no thresholds), so that the threshold comparators'
    # cost is not absorbed into the per-layer constant
    Config(32, 10, 1, 4, requant=False), Config(64, 16, 2, 8, requant=False),
    Config(16, 10, 2, 2, input_bits=2, requant=False, natural_order=True),
    # 64 channels per PE: the threshold ROM (64 x 15 thresholds) is deep enough for block RAM
    Config(64, 64, 1, 4), Config(32, 64, 1, 2, natural_order=True), Config(64, 128, 2, 8),
)


# The constant-weight engine's terms (compiler/cost.py const_layer_cost): the adder graph's
# bits, the comparator bits of its parallel threshold requantizer, and a per-layer constant;
# its registers (pipeline plus accumulators).
CONST_LUT_TERMS = ("lut_per_const_adder_bit", "lut_per_const_threshold_bit", "lut_per_const_layer")
CONST_FF_TERMS = ("ff_per_const_reg_bit", "ff_per_const_code_bit", "ff_per_const_layer")


@dataclass(frozen=True)
class ConstConfig:
    """One constant-weight calibration engine (hw/constmv.py): a ``fan_in x channels`` matvec
    with random weights (``sparsity`` of them zero) and thresholds to 4-bit codes."""

    fan_in: int
    channels: int
    input_bits: int = 4
    weight_bits: int = 4
    sparsity: float = 0.5
    seed: int = 0
    register_every: int = 2
    requant: bool = True         # False: accumulators out (a network's last layer)

    @property
    def name(self) -> str:
        return (f"const_k{self.fan_in}_n{self.channels}_x{self.input_bits}_w{self.weight_bits}"
                f"_s{int(round(self.sparsity * 100))}_L{self.register_every}{'' if self.requant else '_acc'}")


# Eight engines over the fan-in, channel count, operand widths, sparsity and pipelining the
# presets' layers span; each synthesises in seconds to a minute.
CONST_CONFIGS = (
    ConstConfig(16, 16), ConstConfig(32, 16), ConstConfig(64, 32, sparsity=0.6),
    ConstConfig(32, 32, weight_bits=2, sparsity=0.3), ConstConfig(32, 16, weight_bits=8),
    ConstConfig(32, 16, input_bits=8), ConstConfig(64, 16, sparsity=0.85, register_every=1),
    ConstConfig(16, 32, input_bits=2, weight_bits=3, sparsity=0.2, register_every=3),
    # hidden-layer sized graphs without thresholds, so that the adders' cost is not confounded
    # with the comparators' (benchmarks/constmv_vs_rom.py's 64x64 layer is of this kind)
    ConstConfig(64, 64, requant=False), ConstConfig(64, 32, sparsity=0.3, requant=False),
)


def coefficients_path() -> Path:
    return Path(str(resources.files("accumulus.compiler").joinpath("cost_coefficients.json")))


def _plan(cfg: Config):
    widths = (cfg.fan_in, cfg.channels, 2) if cfg.requant else (cfg.fan_in, cfg.channels)
    plan = mlp_plan(widths, input_type=IntType(cfg.input_bits, False), weight_bits=cfg.weight_bits, act_bits=4,
                    pe=[cfg.pe, 1][:len(widths) - 1], simd=[cfg.simd, 1][:len(widths) - 1], seed=cfg.seed)
    if cfg.natural_order:
        layer = plan.layer("fc0")
        order = np.arange(cfg.channels)
        layer["folding"]["channel_order"] = order.tolist()
        layer["folding"]["pe_acc_bits"] = pe_widths(np.asarray(layer["acc"]["bits"]["exact"]), cfg.pe, order).tolist()
    return plan


def order_needs_buffer(order, pe: int) -> bool:
    """True when hw/mvu.py's Reorder needs its double buffer (some fold's channels are not one block)."""
    order = [int(c) for c in order]
    return not all(sorted(order[f * pe:(f + 1) * pe]) == list(range(f * pe, (f + 1) * pe))
                   for f in range(len(order) // pe))


def layer_terms(w_bits, x_bits, channels, fan_in, pe, simd, pe_acc_bits, threshold_bits, out_bits,
                reorder: bool = True, limits: dict = ROM_LIMITS, threshold_levels: int | None = None) -> dict:
    """The cost model's features of one MAC layer (what each coefficient multiplies);
    ``threshold_levels`` None: ``2^out_bits - 1`` when there are thresholds."""
    lanes = pe * simd
    rom = channels * fan_in * w_bits * cost_model.weight_rom_in_logic(w_bits, channels, fan_in, pe, simd, limits)
    levels = ((1 << out_bits) - 1 if threshold_bits else 0) if threshold_levels is None else threshold_levels
    th = channels * levels * threshold_bits
    th_rom = th * bool(th and cost_model.threshold_rom_in_logic(channels, pe, levels, threshold_bits, limits))
    product = w_bits + x_bits
    adder_bits = product + math.ceil(math.log2(simd)) if simd > 1 else 0
    return {
        "lut_per_mac_bit": lanes * w_bits * x_bits, "lut_per_adder_bit": lanes * adder_bits,
        "lut_per_acc_bit": float(sum(pe_acc_bits)), "lut_per_threshold_bit": pe * threshold_bits,
        "lut_per_buffer_bit": channels * out_bits * reorder, "lut_per_rom_bit": rom,
        "lut_per_threshold_rom_bit": th_rom, "lut_per_requant": float(bool(levels)), "lut_per_layer": 1.0,
        "ff_per_acc_bit": float(sum(pe_acc_bits)), "ff_per_lane_bit": lanes * x_bits,
        "ff_per_buffer_bit": channels * out_bits * reorder, "ff_per_rom_bit": rom,
        "ff_per_requant": float(bool(levels)), "ff_per_layer": 1.0,
    }


def features(plan, layer: dict, built: dict) -> dict:
    rq = layer.get("requant")
    out_bits = int(rq["out_type"]["bits"]) if rq else int(max(built["acc_bits"]))
    tb = built.get("threshold_bits") or []
    return layer_terms(int(layer["weight_type"]["bits"]), int(layer["input_type"]["bits"]), int(layer["channels"]),
                       int(layer["fan_in"]), int(layer["folding"]["pe"]), int(layer["folding"]["simd"]),
                       built["acc_bits"], max(tb) if tb else 0, out_bits,
                       order_needs_buffer(layer["folding"]["channel_order"], int(layer["folding"]["pe"])))


def _nnls(a: np.ndarray, b: np.ndarray, iters: int = 5000) -> np.ndarray:
    """Non-negative least squares (projected coordinate descent; numpy only)."""
    x = np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 0, None)
    ata, atb = a.T @ a, a.T @ b
    for _ in range(iters):
        prev = x.copy()
        for j in range(len(x)):
            if ata[j, j] <= 0:
                continue
            x[j] = max(0.0, x[j] + (atb[j] - ata[j] @ x) / ata[j, j])
        if np.max(np.abs(x - prev)) < 1e-9:
            break
    return x


def fit(rows: list[dict], targets: list[float], terms) -> dict:
    """Coefficients minimising the squared *relative* error, all >= 0."""
    a = np.array([[r[t] for t in terms] for r in rows], dtype=float)
    y = np.array(targets, dtype=float)
    w = 1.0 / np.maximum(y, 1.0)
    x = _nnls(a * w[:, None], y * w)
    return {t: float(round(v, 5)) for t, v in zip(terms, x)}


def predict(row: dict, coeff: dict, terms) -> float:
    return float(sum(row[t] * coeff.get(t, 0.0) for t in terms))


def _synthesise(entries: list[dict], jobs: list[SynthJob], workers, progress: bool, desc: str,
                allow_fail: bool = False) -> list[dict]:
    """Run the calibration engines' Yosys jobs; each entry gets its ``yosys`` totals and time.
    With ``allow_fail``, entries whose synthesis failed are returned (with the error) instead
    of raising, and are left out of ``entries``."""
    results = run_many(jobs, workers=workers, progress=progress, desc=desc)
    failed = [r.name for r in results if not r.ok]
    if failed and not allow_fail:
        raise RuntimeError(f"Yosys failed on calibration configurations {failed}: see their yosys.log")
    dropped = []
    for e, r in zip(list(entries), results):
        if not r.ok:
            entries.remove(e)
            dropped.append({"name": e["name"], "config": e["config"], "error": (r.error or "")[-600:]})
            continue
        e["yosys"] = r.total
        e["seconds"] = round(r.seconds, 1)
    return dropped


def _max_errors(entries: list[dict]) -> dict:
    return {"max_abs_lut_error": max(abs(e["lut_error"]) for e in entries),
            "max_abs_ff_error": max(abs(e["ff_error"]) for e in entries)}


def calibrate(family: str, out_dir: Path, configs=DEFAULT_CONFIGS, *, dsp: bool = False, workers: int | None = None,
              write: bool = True, progress: bool = True) -> dict:
    """Build and synthesise every configuration, fit, check, and (``write``) store the coefficients."""
    from accumulus.hw.build import build as hw_build

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    entries, jobs = [], []
    for cfg in configs:
        plan = _plan(cfg)
        d = out_dir / cfg.name
        doc = hw_build(plan, d, cfg.policy)
        built = {l["layer"]: l for l in doc["layers"]}["fc0"]
        layer = plan.layer("fc0")
        entries.append({"config": asdict(cfg), "name": cfg.name, "features": features(plan, layer, built),
                        "reorder": order_needs_buffer(layer["folding"]["channel_order"], cfg.pe),
                        "acc_bits": built["acc_bits"], "threshold_bits": built.get("threshold_bits")})
        jobs.append(SynthJob(cfg.name, [d / "rtl" / built["file"]], built["module"], family,
                             d / f"synth-{family}-{'dsp' if dsp else 'lut'}", dsp=dsp, flatten=True))
    _synthesise(entries, jobs, workers, progress, f"calibration ({family})")
    coeff, old = fit_entries(entries, family, dsp)
    doc = {
        "family": family, "dsp": dsp, "yosys": yosys_version(), "configs": entries,
        "coefficients": coeff, "previous": old,
        **_max_errors(entries),
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out_dir / f"calibration-{family}.json").write_text(json.dumps(doc, indent=1) + "\n")
    if write:
        store(family, coeff, doc)
    return doc


def entry_terms(e: dict, family: str = "ice40") -> dict:
    c = e["config"]
    tb = e.get("threshold_bits") or []
    requant = c.get("requant", True)
    out_bits = 4 if requant else max(e["acc_bits"])
    return layer_terms(c["weight_bits"], c["input_bits"], c["channels"], c["fan_in"], c["pe"], c["simd"],
                       e["acc_bits"], max(tb) if tb and requant else 0, out_bits, e["reorder"],
                       ROM_LIMITS_BY_FAMILY[family])


def fit_entries(entries: list[dict], family: str, dsp: bool = False) -> tuple[dict, dict]:
    """Fit the coefficients to measured entries; fills each entry's estimate and errors."""
    rows = [entry_terms(e, family) for e in entries]
    for e, r in zip(entries, rows):
        e["features"] = r
    lut_coeff = fit(rows, [e["yosys"]["lut"] for e in entries], LUT_TERMS)
    ff_coeff = fit(rows, [e["yosys"]["ff"] for e in entries], FF_TERMS)
    old = cost_model.load_coefficients(family)
    coeff = dict(old)
    coeff.update(lut_coeff)
    coeff.update(ff_coeff)
    coeff.update(ROM_LIMITS_BY_FAMILY[family])
    if dsp:
        coeff["dsp_min_product_bits"] = 2
    for e in entries:
        c = e["config"]
        levels = 15 if c.get("requant", True) else 0
        est = cost_model.mac_layer_cost(c["weight_bits"], c["input_bits"], c["channels"], c["fan_in"], c["pe"],
                                        c["simd"], e["acc_bits"], levels, max(e["threshold_bits"] or [0]) if levels else 0,
                                        coeff, reorder=e["reorder"])
        e["estimate"] = {"lut": round(est["lut"], 1), "ff": round(est["ff"], 1)}
        e["lut_error"] = round(est["lut"] / e["yosys"]["lut"] - 1, 4)
        e["ff_error"] = round(est["ff"] / e["yosys"]["ff"] - 1, 4)
    return coeff, old


def refit(calibration_json: Path, write: bool = True) -> dict:
    """Fit again from a stored calibration (no synthesis), e.g. after the model gained a term."""
    doc = json.loads(Path(calibration_json).read_text())
    coeff, _ = fit_entries(doc["configs"], doc["family"], doc["dsp"])
    doc["coefficients"] = coeff
    doc.update(_max_errors(doc["configs"]))
    Path(calibration_json).write_text(json.dumps(doc, indent=1) + "\n")
    if write:
        store(doc["family"], coeff, doc)
    return doc


def const_terms(e: dict) -> dict:
    """The const engine's features of one built layer (``e["const"]``: hw/constmv.py's report)."""
    g = e["const"]
    linear = g.get("requant_form") == "linear"
    return {"lut_per_const_adder_bit": float(g["adder_bits"] + (g.get("requant_adder_bits", 0) if linear else 0)),
            "lut_per_const_threshold_bit": 0.0 if linear else float(
                e["channels"] * e["threshold_levels"] * e["threshold_bits"]),
            "lut_per_const_layer": 1.0,
            "ff_per_const_reg_bit": float(g["pipeline_register_bits"] + g["acc_register_bits"]
                                          + (g.get("requant_q_bits", 0) if linear else 0)),
            "ff_per_const_code_bit": float(e["channels"] * int(e["threshold_levels"]).bit_length()),
            "ff_per_const_layer": 1.0}


def fit_const_entries(entries: list[dict], family: str) -> dict:
    """Fit the constant-weight coefficients; fills each entry's estimate and errors."""
    rows = [const_terms(e) for e in entries]
    coeff = fit(rows, [e["yosys"]["lut"] for e in entries], CONST_LUT_TERMS)
    coeff.update(fit(rows, [e["yosys"]["ff"] for e in entries], CONST_FF_TERMS))
    full = dict(cost_model.load_coefficients(family))
    full.update(coeff)
    for e in entries:
        g = e["const"]
        est = cost_model.const_graph_cost(g, e["channels"], e["threshold_levels"], e["threshold_bits"], full)
        e["estimate"] = {"lut": round(est["lut"], 1), "ff": round(est["ff"], 1)}
        e["lut_error"] = round(est["lut"] / e["yosys"]["lut"] - 1, 4)
        e["ff_error"] = round(est["ff"] / e["yosys"]["ff"] - 1, 4)
    return coeff


def calibrate_const(family: str, out_dir: Path, configs=CONST_CONFIGS, *, workers: int | None = None,
                    write: bool = True, progress: bool = True) -> dict:
    """Build and synthesise the constant-weight engines, fit their coefficients, and
    (``write``) add them to the family's table (the ROM engine's coefficients stay)."""
    from accumulus.hw.build import build as hw_build

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    entries, jobs = [], []
    for cfg in configs:
        widths = (cfg.fan_in, cfg.channels, 2) if cfg.requant else (cfg.fan_in, cfg.channels)
        plan = mlp_plan(widths, input_type=IntType(cfg.input_bits, False),
                        weight_bits=cfg.weight_bits, act_bits=4, seed=cfg.seed, sparsity=cfg.sparsity)
        plan.layer("fc0")["const"] = {"register_every": cfg.register_every, "cse": True}
        d = out_dir / cfg.name
        doc = hw_build(plan, d, "exact", engine="const")
        built = {l["layer"]: l for l in doc["layers"]}["fc0"]
        rq = plan.layer("fc0")["requant"]
        entries.append({"config": asdict(cfg), "name": cfg.name, "channels": cfg.channels,
                        "threshold_levels": int(np.asarray(plan.array(rq["thresholds"])).shape[1]) if rq else 0,
                        "threshold_bits": int(rq["threshold_bits"]) if rq else 0, "const": built["const"]})
        jobs.append(SynthJob(cfg.name, [d / "rtl" / built["file"]], built["module"], family,
                             d / f"synth-{family}-lut", dsp=False, flatten=True))
    _synthesise(entries, jobs, workers, progress, f"const calibration ({family})")
    coeff = fit_const_entries(entries, family)
    doc = {"family": family, "engine": "const", "yosys": yosys_version(), "configs": entries,
           "coefficients": coeff,
           **_max_errors(entries),
           "seconds": round(time.monotonic() - t0, 1)}
    (out_dir / f"calibration-{family}-const.json").write_text(json.dumps(doc, indent=1) + "\n")
    if write:
        store(family, coeff, doc, engine="const")
    return doc


def _refit_stored(calibration_json: Path, fitter, engine: str, write: bool, extra=None) -> dict:
    """Fit an engine's coefficients again from its stored calibration (no synthesis):
    ``fitter(entries, family)`` refills each entry's estimate; ``extra(entries)`` adds fields."""
    doc = json.loads(Path(calibration_json).read_text())
    doc["coefficients"] = fitter(doc["configs"], doc["family"])
    doc.update(_max_errors(doc["configs"]))
    if extra is not None:
        doc.update(extra(doc["configs"]))
    Path(calibration_json).write_text(json.dumps(doc, indent=1) + "\n")
    if write:
        store(doc["family"], doc["coefficients"], doc, engine=engine)
    return doc


def refit_const(calibration_json: Path, write: bool = True) -> dict:
    """Fit the constant-weight coefficients again from a stored calibration (no synthesis)."""
    return _refit_stored(calibration_json, fit_const_entries, "const", write)


@dataclass(frozen=True)
class SWGConfig:
    """One sliding-window generator (hw/swg.py) alone: an ``H x W x C`` image of
    ``elem_bits`` codes, a ``kernel`` square window, ``simd`` window elements per beat."""

    in_shape: tuple
    kernel: int = 3
    elem_bits: int = 4
    simd: int = 16
    pads: int = 1

    @property
    def name(self) -> str:
        h, w, c = self.in_shape
        return f"swg_{h}x{w}x{c}_k{self.kernel}_b{self.elem_bits}_s{self.simd}"

    def conv(self) -> dict:
        """The plan's ``layer["conv"]`` of this geometry (what compiler/cost.py reads)."""
        return {"in_shape": list(self.in_shape), "kernel": [self.kernel] * 2, "stride": [1, 1],
                "dilation": [1, 1], "pads": [self.pads] * 4}


# Window generators over the image sizes, channel counts and beat widths of the presets'
# conv layers: one window per beat (the constant-weight engine: a read port per window
# pixel), a few pixels per beat, and one channel group per beat (the folded engine).
SWG_CONFIGS = (
    SWGConfig((8, 8, 16), simd=144), SWGConfig((4, 4, 16), simd=144), SWGConfig((8, 8, 1), elem_bits=5, simd=9),
    SWGConfig((8, 8, 16), simd=16), SWGConfig((8, 8, 16), simd=48), SWGConfig((16, 16, 8), simd=72),
    SWGConfig((8, 8, 32), simd=288), SWGConfig((8, 8, 16), elem_bits=8, simd=144),
    SWGConfig((8, 4, 16), simd=144), SWGConfig((8, 16, 16), simd=144), SWGConfig((8, 32, 4), simd=36),
    SWGConfig((8, 8, 8), simd=72), SWGConfig((8, 8, 16), kernel=5, simd=400, pads=2),
    SWGConfig((28, 28, 1), elem_bits=8, simd=1), SWGConfig((14, 14, 16), simd=4),
)
SWG_LUT_TERMS, SWG_FF_TERMS = cost_model.SWG_TERMS["lut"], cost_model.SWG_TERMS["ff"]
# The cells a line buffer would take, per family, and the form of Yosys' choice between them
# (compiler/cost.py swg_in_logic): iCE40 SB_RAM40_4K as 256x16 and no LUT RAM (rule
# ``fill``); ECP5 DP16KD as 512x36 against TRELLIS_DPR16X4 (16x4), Xilinx 7 RAMB18E1 as 512x36
# against RAM64M (64x3) (rule ``lutram``). Only the rule's threshold is fitted; on the
# calibration buffers both rules separate Yosys' choices exactly.
BRAM_SHAPE = {"ice40": {"swg_rule": "fill", "bram_width": 16, "bram_depth": 256},
              "ecp5": {"swg_rule": "lutram", "bram_width": 36, "bram_depth": 512, "lutram_width": 4, "lutram_depth": 16},
              "xc7": {"swg_rule": "lutram", "bram_width": 36, "bram_depth": 512, "lutram_width": 3, "lutram_depth": 64}}
SWG_THRESHOLD = {"fill": "swg_min_fill", "lutram": "swg_max_lutram_ratio"}


def _swg_measure(e: dict, shape: dict) -> float:
    """The quantity the family's rule compares with its threshold (logic below it)."""
    g = e["geometry"]
    word_bits = g["word_elems"] * e["config"]["elem_bits"]
    depth = g["buffer_words"]
    brams = math.ceil(word_bits / shape["bram_width"]) * math.ceil(depth / shape["bram_depth"])
    if shape["swg_rule"] == "lutram":
        return math.ceil(depth / shape["lutram_depth"]) * math.ceil(word_bits / shape["lutram_width"]) / brams
    return depth * word_bits / (g["lanes"] * brams * shape["bram_width"] * shape["bram_depth"])


def fit_swg_entries(entries: list[dict], family: str) -> dict:
    """Fit the window generator's coefficients: the block-RAM/logic threshold from the
    buffers Yosys put in logic (no block RAM bits), then the LUT and FF terms."""
    shape = BRAM_SHAPE[family]
    logic = [_swg_measure(e, shape) for e in entries if e["yosys"]["bram_bits"] == 0]
    bram = [_swg_measure(e, shape) for e in entries if e["yosys"]["bram_bits"] > 0]
    if logic and bram and max(logic) >= min(bram):
        # not separable: keep the split that misclassifies fewest buffers
        cands = sorted(set(logic + bram))
        threshold = min(cands, key=lambda t: sum(f >= t for f in logic) + sum(f < t for f in bram))
    elif logic and bram:
        threshold = math.sqrt(max(logic) * min(bram))
    else:
        threshold = 2 * max(logic) if logic else 0.0
    coeff = dict(shape, **{SWG_THRESHOLD[shape["swg_rule"]]: round(threshold, 6)})
    rows = [cost_model.swg_terms(e["geometry"], e["config"]["elem_bits"], coeff) for e in entries]
    coeff.update(fit(rows, [e["yosys"]["lut"] for e in entries], SWG_LUT_TERMS))
    coeff.update(fit(rows, [e["yosys"]["ff"] for e in entries], SWG_FF_TERMS))
    for e, cfg in zip(entries, [SWGConfig(**{**e["config"], "in_shape": tuple(e["config"]["in_shape"])})
                                for e in entries]):
        est = cost_model.swg_cost(cfg.conv(), cfg.elem_bits, cfg.simd, coeff)
        e["in_logic"] = e["yosys"]["bram_bits"] == 0
        e["in_logic_predicted"] = cost_model.swg_in_logic(e["geometry"], cfg.elem_bits, coeff)
        e["estimate"] = {"lut": round(est["lut"], 1), "ff": round(est["ff"], 1), "bram_bits": est["bram_bits"]}
        e["lut_error"] = round(est["lut"] / e["yosys"]["lut"] - 1, 4)
        e["ff_error"] = round(est["ff"] / e["yosys"]["ff"] - 1, 4)
    return coeff


def calibrate_swg(family: str, out_dir: Path, configs=SWG_CONFIGS, *, workers: int | None = None,
                  write: bool = True, progress: bool = True) -> dict:
    """Build and synthesise the window generators alone, fit their coefficients, and
    (``write``) add them to the family's table."""
    from amaranth.back import verilog

    from accumulus.hw.swg import SWGSpec

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    entries, jobs = [], []
    for cfg in configs:
        spec = SWGSpec(cfg.in_shape, cfg.kernel, 1, cfg.pads, elem=IntType(cfg.elem_bits, False), simd=cfg.simd)
        geom = cost_model.swg_geometry(cfg.conv(), cfg.simd)
        assert (geom["lanes"], geom["word_elems"], geom["buffer_words"]) == (spec.lanes, spec.word_elems,
                                                                              spec.buffer_words), cfg
        d = out_dir / cfg.name
        (d / "rtl").mkdir(parents=True, exist_ok=True)
        (d / "rtl" / "swg.v").write_text(verilog.convert(spec.create(), name="swg"))
        entries.append({"config": asdict(cfg), "name": cfg.name, "geometry": geom})
        jobs.append(SynthJob(cfg.name, [d / "rtl" / "swg.v"], "swg", family, d / f"synth-{family}-lut", flatten=True))
    # Yosys 0.70 (YoWASP) throws in memory_libmap on a 25-read-port buffer (5x5 window) for
    # ECP5 and Xilinx 7; such configurations are recorded as failed and left out of the fit.
    failed = _synthesise(entries, jobs, workers, progress, f"window generator calibration ({family})",
                         allow_fail=True)
    coeff = fit_swg_entries(entries, family)
    doc = {"family": family, "engine": "swg", "yosys": yosys_version(), "configs": entries, "failed": failed,
           "coefficients": coeff,
           **_max_errors(entries), **_mode_misses(entries),
           "seconds": round(time.monotonic() - t0, 1)}
    (out_dir / f"calibration-{family}-swg.json").write_text(json.dumps(doc, indent=1) + "\n")
    if write:
        store(family, coeff, doc, engine="swg")
    return doc


def _mode_misses(entries: list[dict]) -> dict:
    return {"mode_misses": sum(e["in_logic"] != e["in_logic_predicted"] for e in entries)}


def refit_swg(calibration_json: Path, write: bool = True) -> dict:
    """Fit the window generator's coefficients again from a stored calibration."""
    return _refit_stored(calibration_json, fit_swg_entries, "swg", write, _mode_misses)


def store(family: str, coeff: dict, doc: dict, path: Path | None = None, engine: str = "rom") -> Path:
    """Write ``family``'s coefficients and record where they came from: ``rom`` replaces the
    family's table, ``const`` adds the constant-weight coefficients to it."""
    path = Path(path or coefficients_path())
    data = json.loads(path.read_text())
    record = {"yosys": doc["yosys"], "configs": len(doc["configs"]),
              "max_abs_lut_error": doc["max_abs_lut_error"], "max_abs_ff_error": doc["max_abs_ff_error"]}
    if engine in ("const", "swg"):
        data["families"][family].update(coeff)
        data.setdefault("calibration", {})[f"{family}-{engine}"] = dict(record, by=f"boards/calibrate.py --engine {engine}")
    else:
        # the ROM engine's table replaces the family's; the other engines' entries stay
        keep = {k: v for k, v in data["families"].get(family, {}).items()
                if k.startswith(("lut_per_const", "ff_per_const", "lut_per_swg", "ff_per_swg"))
                or k in ("swg_rule", "swg_min_fill", "swg_max_lutram_ratio", "bram_width", "bram_depth",
                         "lutram_width", "lutram_depth")}
        data["families"][family] = {**coeff, **keep}
        data.setdefault("calibration", {})[family] = dict(record, by="boards/calibrate.py", dsp=doc["dsp"])
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accumulus.boards.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="ice40", choices=["ice40", "ecp5", "xc7"])
    ap.add_argument("--out", default="build/calibration")
    ap.add_argument("--engine", choices=["rom", "const", "swg"], default="rom",
                    help="rom: the folded MVU (hw/mvu.py); const: the constant-weight engine (hw/constmv.py); "
                         "swg: the sliding-window generator of conv layers (hw/swg.py)")
    ap.add_argument("--dsp", action="store_true", help="calibrate the hard-multiplier variant")
    ap.add_argument("--jobs", "-j", type=int, default=None)
    ap.add_argument("--no-write", action="store_true", help="do not update compiler/cost_coefficients.json")
    ap.add_argument("--refit", action="store_true",
                    help="fit again from OUT/calibration-FAMILY.json without synthesising")
    args = ap.parse_args(argv)
    if args.engine == "swg":
        doc = (refit_swg(Path(args.out) / f"calibration-{args.family}-swg.json", write=not args.no_write) if args.refit
               else calibrate_swg(args.family, Path(args.out), workers=args.jobs or os.cpu_count(),
                                  write=not args.no_write))
    elif args.engine == "const" and args.refit:
        doc = refit_const(Path(args.out) / f"calibration-{args.family}-const.json", write=not args.no_write)
    elif args.engine == "const":
        doc = calibrate_const(args.family, Path(args.out), workers=args.jobs or os.cpu_count(),
                              write=not args.no_write)
    elif args.refit:
        doc = refit(Path(args.out) / f"calibration-{args.family}.json", write=not args.no_write)
    else:
        doc = calibrate(args.family, Path(args.out), dsp=args.dsp, workers=args.jobs or os.cpu_count(),
                        write=not args.no_write)
    print(f"{'configuration':<44} {'Yosys LUT':>9} {'est':>7} {'err':>7} {'Yosys FF':>8} {'est':>7} {'err':>7}")
    for e in doc["configs"]:
        print(f"{e['name']:<44} {e['yosys']['lut']:>9} {e['estimate']['lut']:>7.0f} {e['lut_error']:>+7.1%} "
              f"{e['yosys']['ff']:>8} {e['estimate']['ff']:>7.0f} {e['ff_error']:>+7.1%}")
    print(f"max |LUT error| {doc['max_abs_lut_error']:.1%}, max |FF error| {doc['max_abs_ff_error']:.1%} "
          f"({doc['seconds']} s, {doc['yosys']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
