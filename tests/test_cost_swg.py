"""The sliding-window generator's cost (compiler/cost.py swg_*): geometry as hw/ builds it,
the block-RAM/logic rule, and its place in the folding's and the report's estimates."""
from __future__ import annotations

import math

import pytest

from accumulus.compiler import cost as cost_model

amaranth = pytest.importorskip("amaranth")


def _hw_geometry(conv, simd, bits=4):
    """The window generator hw/top.py builds for an engine reading ``simd`` elements per beat."""
    from accumulus.compiler.types import IntType
    from accumulus.hw.swg import SWGSpec

    def make(beat):
        return SWGSpec(conv["in_shape"], conv["kernel"], conv["stride"], conv["pads"], conv["dilation"],
                       elem=IntType(bits, False), simd=beat)
    try:
        s = make(simd)
    except ValueError:
        s = make(math.gcd(simd, conv["in_shape"][2]))
    return {"word_elems": s.word_elems, "lanes": s.lanes, "rows": s.rows, "buffer_words": s.buffer_words}


@pytest.mark.parametrize("h,w,c,k,stride,dil", [(8, 8, 16, 3, 1, 1), (4, 4, 16, 3, 1, 1), (8, 8, 1, 3, 1, 1),
                                                 (28, 28, 1, 5, 1, 1), (14, 14, 6, 3, 2, 1), (9, 9, 4, 3, 1, 2),
                                                 (8, 8, 12, 2, 2, 1)])
def test_swg_geometry_is_the_hardware_s(h, w, c, k, stride, dil):
    conv = {"in_shape": [h, w, c], "kernel": [k, k], "stride": [stride, stride], "dilation": [dil, dil],
            "pads": [0, 0, 0, 0]}
    window = k * k * c
    simds = sorted({1, 2, 3, 4, c, 2 * c, 3 * c, window} | {d for d in range(1, window + 1) if window % d == 0})
    for simd in simds:
        assert cost_model.swg_geometry(conv, simd) == _hw_geometry(conv, simd), simd


def test_swg_logic_rule_and_cost_terms():
    coeff = {"bram_width": 16, "bram_depth": 256, "swg_min_fill": 0.02, "lut_per_swg_mux_bit": 0.3,
             "lut_per_swg_port_bit": 0.5, "lut_per_swg": 100.0, "ff_per_swg_mem_bit": 1.0,
             "ff_per_swg_port_bit": 1.0, "ff_per_swg": 50.0}
    conv = {"in_shape": [8, 8, 16], "kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pads": [1] * 4}
    whole = cost_model.swg_geometry(conv, 144)        # 9 read ports of 64-bit words, 32 deep
    assert (whole["lanes"], whole["buffer_words"]) == (9, 32)
    assert cost_model.swg_in_logic(whole, 4, coeff)           # 9 copies of a 2 kbit buffer: logic
    one = cost_model.swg_geometry(conv, 16)
    assert one["lanes"] == 1 and not cost_model.swg_in_logic(one, 4, coeff)   # one copy: block RAM
    c_whole = cost_model.swg_cost(conv, 4, 144, coeff)
    assert c_whole["bram_bits"] == 0
    assert c_whole["lut"] == pytest.approx(0.3 * 9 * 64 * 32 + 0.5 * 9 * 64 + 100)   # no log term given
    assert c_whole["ff"] == pytest.approx(32 * 64 + 9 * 64 + 50)
    c_one = cost_model.swg_cost(conv, 4, 16, coeff)
    assert c_one["bram_bits"] == 32 * 64 and c_one["lut"] == pytest.approx(0.5 * 64 + 100)
    # uncalibrated families: the buffer in block RAM, no logic charged
    bare = cost_model.swg_cost(conv, 4, 144, {})
    assert bare["lut"] == 0 and bare["ff"] == 0 and bare["bram_bits"] == 9 * 32 * 64


def test_fold_charges_the_window_generator_of_conv_layers():
    """The folding's cost of a conv layer is its engine's plus its window generator's, with the
    calibrated coefficients of every family; a matvec gets none."""
    from accumulus.compiler.passes import fold

    for family in ("ice40", "ecp5", "xc7"):
        coeff = cost_model.load_coefficients(family)
        assert "swg_min_fill" in coeff and coeff["lut_per_swg"] >= 0, family
        conv = {"in_shape": [8, 8, 16], "kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pads": [1] * 4}
        from accumulus.compiler.types import IntType

        base = {"lut": 10.0, "ff": 5.0, "dsp": 0, "bram_bits": 0}
        p = {"conv": conv, "input_type": IntType(4, False)}
        got = fold._with_swg(dict(base), p, 144, coeff)
        w = cost_model.swg_cost(conv, 4, 144, coeff)
        assert got == {k: base[k] + w[k] for k in base}
        assert w["lut"] > 0
        assert fold._with_swg(dict(base), {"conv": None, "input_type": IntType(4, False)}, 144, coeff) == base
