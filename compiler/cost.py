"""Analytic resource model (numpy only) that the compiler's folding uses.

Per MAC layer with ``PE`` output lanes of ``SIMD`` products each:
  LUT = lanes·(w_bits·x_bits·lut_per_mac_bit + adder_bits·lut_per_adder_bit)
        + Σ_PE acc_bits·lut_per_acc_bit + Σ_PE threshold_bits·lut_per_threshold_bit + lut_per_layer
  FF  = Σ_PE acc_bits·ff_per_acc_bit + lanes·x_bits·ff_per_lane_bit + ff_per_layer
  (+ {lut,ff}_per_requant for a layer with a threshold requantizer)
  (+ N·out_bits·{lut,ff}_per_buffer_bit: the order-restore buffer, when calibrated)
  (+ N·K·w_bits·{lut,ff}_per_rom_bit when the weight ROMs are small enough to be LUTs)
  DSP = lanes whose product is at least ``dsp_min_product_bits`` wide (0 = never)
  BRAM bits = weights (N·K·w_bits) + thresholds (N·T·threshold_bits)
where ``adder_bits`` is the product width plus log2(SIMD) (a width-aware adder tree).
A conv layer adds its sliding-window generator (hw/swg.py; :func:`swg_cost`): control, the
padding and output selection per read-port bit, and its line buffer -- block RAM bits, or,
where Yosys builds it from logic (many read ports of a small buffer: a constant-weight conv
reads a whole window per cycle), flip-flops and read multiplexers.
A ``reorder`` layer (DepthToSpace, nearest Resize; hw/reorder.py) is a two-row buffer of
``2·W·C`` elements (BRAM bits) plus address counters and index tables whose logic grows with
the buffer's address width ``A = ceil(log2(2·W·C))``: LUT = A·lut_per_reorder_addr_bit,
FF = ff_per_reorder + A·ff_per_reorder_addr_bit.
A constant-weight engine (hw/constmv.py: one vector or pixel per cycle, an adder graph per
layer from ``compiler/addergraph.py``) costs
  LUT = adder_bits·lut_per_const_adder_bit + N·T·threshold_bits·lut_per_const_threshold_bit
        + lut_per_layer
  FF  = (pipeline_register_bits + accumulator_register_bits)·ff_per_const_reg_bit + ff_per_layer
  DSP = 0, BRAM bits = 0 (weights are wiring, the parallel thresholds constants)
where ``adder_bits`` sums every adder's own exact width: each adder bit is one LUT plus
its share of a carry chain on LUT4 (iCE40 SB_CARRY) and LUT6/ECP5 fabrics.
Sakr & Shanbhag's full-adder count (ICML 2017 / ICLR 2019), a technology-independent figure
reported beside Yosys: a ``D``-term dot product of ``B_A``-bit activations and ``B_W``-bit
weights costs ``D·B_A·B_W + (D-1)(B_A + B_W + ceil(log2 D) - 1)`` full adders (array
multipliers plus an adder tree); a layer costs that times its dot products per frame
(``channels`` for a matvec, ``channels·OH·OW`` for a conv). Here ``B_A`` and ``B_W`` are the
plan's code widths, the operands the hardware multiplies.
Coefficients are data (``cost_coefficients.json``), one table per FPGA family; the board
calibration in ``boards/`` rewrites that file from Yosys runs.
"""
from __future__ import annotations

import json
import math
from importlib import resources

__all__ = ["full_adders_per_dot", "layer_full_adders", "load_coefficients", "mac_layer_cost", "const_layer_cost", "const_graph_cost", "CONST_DEFAULTS", "weight_rom_in_logic", "threshold_rom_in_logic", "stream_layer_cost", "reorder_layer_cost", "swg_geometry", "swg_cost", "SWG_TERMS", "total", "RESOURCES"]

RESOURCES = ("lut", "ff", "dsp", "bram_bits")


def full_adders_per_dot(fan_in: int, a_bits: int, w_bits: int) -> int:
    """Sakr & Shanbhag: full adders of one ``fan_in``-term dot product."""
    d = int(fan_in)
    if d < 1 or a_bits < 1 or w_bits < 1:
        raise ValueError(f"full_adders_per_dot needs fan_in, a_bits, w_bits >= 1, got {fan_in}, {a_bits}, {w_bits}")
    log_d = math.ceil(math.log2(d)) if d > 1 else 0
    return d * a_bits * w_bits + (d - 1) * (a_bits + w_bits + log_d - 1)


def layer_full_adders(layer: dict) -> dict:
    """Full-adder figure of a plan MAC layer (``matvec``/``conv``): per dot product and per frame."""
    d = int(layer["fan_in"])
    a_bits, w_bits = int(layer["input_type"]["bits"]), int(layer["weight_type"]["bits"])
    dots = int(layer["channels"])
    conv = layer.get("conv")
    if conv:
        dots *= int(conv["out_shape"][0]) * int(conv["out_shape"][1])
    per_dot = full_adders_per_dot(d, a_bits, w_bits)
    return {"D": d, "B_A": a_bits, "B_W": w_bits, "dot_products": dots, "per_dot": per_dot,
            "full_adders": per_dot * dots}


def load_coefficients(family: str | None = None, path=None) -> dict:
    """The coefficient table of ``family`` (falls back to ``default``)."""
    if path is None:
        text = resources.files("accumulus.compiler").joinpath("cost_coefficients.json").read_text()
    else:
        text = open(path).read()
    fams = json.loads(text)["families"]
    return dict(fams.get(family or "default", fams["default"]))


def mac_layer_cost(w_bits: int, x_bits: int, channels: int, fan_in: int, pe: int, simd: int,
                   pe_acc_bits, threshold_levels: int, threshold_bits: int, coeff: dict,
                   reorder: bool = True) -> dict:
    lanes = pe * simd
    product = w_bits + x_bits
    adder_bits = product + math.ceil(math.log2(simd)) if simd > 1 else 0
    acc = float(sum(pe_acc_bits))
    lut = (lanes * (w_bits * x_bits * coeff["lut_per_mac_bit"] + adder_bits * coeff["lut_per_adder_bit"])
           + acc * coeff["lut_per_acc_bit"] + pe * threshold_bits * coeff["lut_per_threshold_bit"]
           + coeff["lut_per_layer"])
    ff = acc * coeff["ff_per_acc_bit"] + lanes * x_bits * coeff["ff_per_lane_bit"] + coeff["ff_per_layer"]
    # a threshold requantizer's control (its search and output registers), whatever its size
    if threshold_levels:
        lut += coeff.get("lut_per_requant", 0.0)
        ff += coeff.get("ff_per_requant", 0.0)
    # hw/mvu.py restores the natural channel order through a double buffer of N output codes
    # (accumulators when there is no requantizer) unless every fold's channels are one
    # contiguous block (``reorder=False``); absent coefficients mean "not modelled".
    if reorder:
        out_bits = int(threshold_levels).bit_length() if threshold_levels else int(max(pe_acc_bits, default=0))
        lut += channels * out_bits * coeff.get("lut_per_buffer_bit", 0.0)
        ff += channels * out_bits * coeff.get("ff_per_buffer_bit", 0.0)
    dsp_min = coeff.get("dsp_min_product_bits", 0)
    dsp = lanes if dsp_min and product >= dsp_min else 0
    weight_bits = channels * fan_in * w_bits
    bram = weight_bits + channels * threshold_levels * threshold_bits
    # ... and so a small per-PE threshold ROM (hw/requant.py: channels/pe x levels words of
    # the stored width)
    th_bits = channels * threshold_levels * threshold_bits
    if th_bits and threshold_rom_in_logic(channels, pe, threshold_levels, threshold_bits, coeff):
        lut += th_bits * coeff.get("lut_per_threshold_rom_bit", 0.0)
        bram -= th_bits
    # Yosys maps a small or shallow per-PE weight ROM to LUTs instead of block RAM.
    if weight_rom_in_logic(w_bits, channels, fan_in, pe, simd, coeff):
        lut += weight_bits * coeff.get("lut_per_rom_bit", 0.0)
        ff += weight_bits * coeff.get("ff_per_rom_bit", 0.0)
        bram -= weight_bits
    return {"lut": lut, "ff": ff, "dsp": dsp, "bram_bits": bram}


# Constant-weight engine defaults, for families whose calibration has no const entries.
# Yosys 0.70 synth_ecp5 -nodsp of a 64x64 layer (4-bit weights, 54% zero, 4-bit unsigned
# inputs; benchmarks/constmv_vs_rom.py): 13,934 adder bits -> 15,499 LUT (1.11 per bit)
# with a register every 2 adder levels, 17,823 (1.28) fully combinational, 19,982 bits
# without sharing -> 21,443 (1.07); 7,775 pipeline + 744 accumulator register bits ->
# 8,225 FF (0.97 per bit). The threshold comparators are not yet measured (1 LUT per bit
# compared: a carry-chain comparison against a constant).
CONST_DEFAULTS = {"lut_per_const_adder_bit": 1.1, "ff_per_const_reg_bit": 1.0, "lut_per_const_threshold_bit": 1.0}


def const_layer_cost(adder_bits: int, register_bits: int, channels: int, threshold_levels: int,
                     threshold_bits: int, coeff: dict, linear_adder_bits: int | None = None,
                     linear_reg_bits: int = 0) -> dict:
    """A constant-weight engine: ``adder_bits`` (sum of the adders' widths), ``register_bits``
    (pipeline plus accumulator registers), and a threshold requant of ``threshold_levels``
    levels per channel: parallel comparators, or with ``linear_adder_bits`` the linear form
    (hw/requant.py), costed as that many more adder bits and ``linear_reg_bits`` more
    register bits (its registered quotients)."""
    k = {key: coeff.get(key, v) for key, v in CONST_DEFAULTS.items()}
    # the per-layer constants of the const calibration (boards/calibrate.py --engine const),
    # else the ROM engine's
    if linear_adder_bits is None:
        rq_lut = channels * threshold_levels * threshold_bits * k["lut_per_const_threshold_bit"]
    else:
        rq_lut = linear_adder_bits * k["lut_per_const_adder_bit"]
        register_bits += linear_reg_bits
    lut = (adder_bits * k["lut_per_const_adder_bit"] + rq_lut
           + coeff.get("lut_per_const_layer", coeff["lut_per_layer"]))
    # the threshold requantizer registers its output codes (channels x code bits)
    out_bits = int(threshold_levels).bit_length() if threshold_levels else 0
    ff = (register_bits * k["ff_per_const_reg_bit"] + channels * out_bits * coeff.get("ff_per_const_code_bit", 0.0)
          + coeff.get("ff_per_const_layer", coeff["ff_per_layer"]))
    return {"lut": float(lut), "ff": float(ff), "dsp": 0, "bram_bits": 0}


def const_graph_cost(g: dict, channels: int, threshold_levels: int, threshold_bits: int, coeff: dict) -> dict:
    """:func:`const_layer_cost` of an adder-graph summary ``g`` (the plan's ``layer["const"]``
    or hw/constmv.py's report), with its requant form (``requant_form``: ``linear`` adds
    ``requant_adder_bits`` and ``requant_q_bits`` instead of comparators)."""
    linear = g.get("requant_form") == "linear"
    return const_layer_cost(g["adder_bits"], g["pipeline_register_bits"] + g["acc_register_bits"], channels,
                            threshold_levels, threshold_bits, coeff,
                            linear_adder_bits=int(g.get("requant_adder_bits", 0)) if linear else None,
                            linear_reg_bits=int(g.get("requant_q_bits", 0)) if linear else 0)


def weight_rom_in_logic(w_bits: int, channels: int, fan_in: int, pe: int, simd: int, coeff: dict) -> bool:
    """True when each PE's weight ROM (``fan_in*channels/(pe*simd)`` words of ``simd*w_bits``)
    is below ``rom_logic_max_bits`` or shallower than ``rom_min_depth`` (calibrated per family;
    absent keys: always block RAM)."""
    depth = (fan_in // max(1, simd)) * (channels // max(1, pe))
    bits = depth * simd * w_bits
    return bits <= coeff.get("rom_logic_max_bits", -1) or depth < coeff.get("rom_min_depth", 0)


def threshold_rom_in_logic(channels: int, pe: int, levels: int, threshold_bits: int, coeff: dict) -> bool:
    """True when each PE's threshold ROM (``channels/pe`` channels of ``levels`` thresholds of
    ``threshold_bits``; binary search reads one per word) is below ``rom_logic_max_bits`` or
    shallower than ``rom_min_depth`` words."""
    per_pe = max(1, channels // max(1, pe))
    depth = per_pe * levels
    return per_pe * levels * threshold_bits <= coeff.get("rom_logic_max_bits", -1) or depth < coeff.get("rom_min_depth", 0)


def stream_layer_cost(elem_bits: int, coeff: dict) -> dict:
    """An elementwise/pooling layer processing one element per cycle."""
    return {"lut": elem_bits * coeff["lut_per_stream_bit"] + coeff["lut_per_layer"],
            "ff": elem_bits * 2 + coeff["ff_per_layer"], "dsp": 0, "bram_bits": 0}


# Yosys 0.70 synth_ice40 of hw/reorder.py, 8-bit elements (A: address bits; LUT4 / FF):
# DepthToSpace b=2 8x8x4 (A=6) 49/44, 32x32x16 (A=10) 69/58, b=3 16x16x36 (A=11) 148/64;
# nearest x2 8x8x1 (A=4) 37/35, x3 32x32x8 (A=9) 94/57; one to three SB_RAM40_4K each.
# Defaults for families whose calibration has no reorder entries.
REORDER_DEFAULTS = {"lut_per_reorder_addr_bit": 10.0, "ff_per_reorder": 24.0, "ff_per_reorder_addr_bit": 4.0}


def reorder_layer_cost(elem_bits: int, in_shape, coeff: dict) -> dict:
    """A ``reorder`` layer of input ``(H, W, C)`` (hw/reorder.py): its two-input-row buffer
    in memory bits, its counters and index tables in logic."""
    _, w, c = (int(v) for v in in_shape)
    depth = 2 * w * c
    addr = max(1, math.ceil(math.log2(depth)))
    k = {key: coeff.get(key, v) for key, v in REORDER_DEFAULTS.items()}
    return {"lut": addr * k["lut_per_reorder_addr_bit"],
            "ff": k["ff_per_reorder"] + addr * k["ff_per_reorder_addr_bit"],
            "dsp": 0, "bram_bits": depth * int(elem_bits)}


def swg_geometry(conv: dict, simd: int) -> dict:
    """The sliding-window generator a conv layer of the plan gets (``conv``: the plan's
    ``layer["conv"]``) in front of an engine reading ``simd`` window elements per beat:
    ``lanes`` read ports of ``word_elems`` elements each, a line buffer of ``buffer_words``
    words. The same rule as hw/swg.py's SWGSpec and hw/top.py (which cannot be imported
    here: the compiler does not depend on the hardware layer); tests/test_cost_swg.py checks
    the two agree."""
    h, w, c = (int(v) for v in conv["in_shape"])
    kh, kw = (int(v) for v in conv["kernel"])
    sh = int(conv["stride"][0])
    dh = int(conv.get("dilation", [1, 1])[0])

    def words(beat):
        if c % beat == 0:
            return beat, 1
        if beat % c == 0 and (kh * kw) % (beat // c) == 0:
            return c, beat // c
        return None

    got = words(simd) or words(math.gcd(simd, c))
    word_elems, lanes = got
    ekh = (kh - 1) * dh + 1
    rows = 1 << (ekh + sh - 1).bit_length()
    return {"word_elems": word_elems, "lanes": lanes, "rows": rows,
            "buffer_words": rows * w * (c // word_elems)}


# Terms of the window generator's cost (boards/calibrate.py --engine swg fits them per family):
# while the line buffer is in logic, every read port is a buffer-words-to-one multiplexer of a
# word: ``lut_per_swg_mux_bit`` x lanes x word bits x buffer words plus
# ``lut_per_swg_mux_log_bit`` x lanes x word bits x log2(buffer words) (Yosys shares the lower
# levels of the ports' multiplexer trees, so the growth is between the two; iCE40: 45% worst
# error with the linear term alone, 12% with both); ``lut_per_swg_port_bit`` x lanes x word bits
# (padding and output selection); ``lut_per_swg`` (counters and control); flip-flops likewise,
# with the buffer's own bits when it is in logic.
# In logic the read ports also cost per bit what block RAM's output registers and read logic
# absorb otherwise (``*_per_swg_logic_port_bit``).
SWG_TERMS = {"lut": ("lut_per_swg_mux_bit", "lut_per_swg_mux_log_bit", "lut_per_swg_logic_port_bit",
                     "lut_per_swg_port_bit", "lut_per_swg"),
             "ff": ("ff_per_swg_mem_bit", "ff_per_swg_logic_port_bit", "ff_per_swg_port_bit", "ff_per_swg")}


def swg_in_logic(geom: dict, elem_bits: int, coeff: dict) -> bool:
    """Whether Yosys builds the line buffer from logic rather than block RAM, by the family's
    rule (``swg_rule``; its thresholds are fitted to Yosys' choices by boards/calibrate.py,
    the block shapes are the family's cells):

    * ``fill`` (iCE40: no LUT RAM, a buffer in logic is flip-flops and multiplexers): logic
      when a buffer copy per read port fills less than ``swg_min_fill`` of the block RAMs
      (``bram_width`` x ``bram_depth``) the copies would take;
    * ``lutram`` (ECP5, Xilinx 7): logic (LUT RAM) when the LUT RAM cells of one copy
      (``lutram_depth`` x ``lutram_width`` each) number fewer than ``swg_max_lutram_ratio``
      times its block RAMs.

    Absent coefficients: always block RAM."""
    word_bits = geom["word_elems"] * elem_bits
    depth = geom["buffer_words"]
    bw, bd = coeff.get("bram_width", 16), coeff.get("bram_depth", 256)
    brams = math.ceil(word_bits / bw) * math.ceil(depth / bd)
    if coeff.get("swg_rule", "fill") == "lutram":
        cells = math.ceil(depth / coeff["lutram_depth"]) * math.ceil(word_bits / coeff["lutram_width"])
        return cells < coeff.get("swg_max_lutram_ratio", 0.0) * brams
    fill = depth * word_bits / (geom["lanes"] * brams * bw * bd)
    return fill < coeff.get("swg_min_fill", 0.0)


def swg_terms(geom: dict, elem_bits: int, coeff: dict) -> dict:
    word_bits = geom["word_elems"] * elem_bits
    port_bits = geom["lanes"] * word_bits
    logic = swg_in_logic(geom, elem_bits, coeff)
    return {"lut_per_swg_mux_bit": float(port_bits * geom["buffer_words"]) if logic else 0.0,
            "lut_per_swg_mux_log_bit": float(port_bits * math.log2(max(2, geom["buffer_words"]))) if logic else 0.0,
            "lut_per_swg_logic_port_bit": float(port_bits) if logic else 0.0,
            "lut_per_swg_port_bit": float(port_bits), "lut_per_swg": 1.0,
            "ff_per_swg_mem_bit": float(geom["buffer_words"] * word_bits) if logic else 0.0,
            "ff_per_swg_logic_port_bit": float(port_bits) if logic else 0.0,
            "ff_per_swg_port_bit": float(port_bits), "ff_per_swg": 1.0,
            "bram_bits": 0.0 if logic else float(geom["lanes"] * geom["buffer_words"] * word_bits)}


def swg_cost(conv: dict, elem_bits: int, simd: int, coeff: dict) -> dict:
    """The window generator of a conv layer (hw/swg.py), from its geometry; zero where the
    family has no window-generator coefficients (not calibrated)."""
    t = swg_terms(swg_geometry(conv, simd), elem_bits, coeff)
    return {"lut": sum(t[k] * coeff.get(k, 0.0) for k in SWG_TERMS["lut"]),
            "ff": sum(t[k] * coeff.get(k, 0.0) for k in SWG_TERMS["ff"]),
            "dsp": 0, "bram_bits": t["bram_bits"]}


def total(costs) -> dict:
    out = {k: 0.0 for k in RESOURCES}
    for c in costs:
        for k in RESOURCES:
            out[k] += c[k]
    return out
