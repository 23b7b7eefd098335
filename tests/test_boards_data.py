"""Fast tests of boards/: board data, cell mapping, netlist split, policies, estimator, calibration fit."""
from __future__ import annotations

import json

import numpy as np
import pytest

from accumulus.boards.boards import BOARD_IDS, board_ids, load_board
from accumulus.boards.calibrate import FF_TERMS, LUT_TERMS, ROM_LIMITS, fit, layer_terms, predict
from accumulus.boards.report import check_policy, policy_dir, policy_widths, threshold_storage_bits
from accumulus.boards.split import classify_name, split_netlist
from accumulus.boards.synth import SynthJob, module_instances, resources_from_cells, synth_script
from accumulus.compiler import cost as cost_model
from accumulus.compiler.synthetic import mlp_plan
from accumulus.compiler.types import IntType
from accumulus.errors import UserError

# Datasheet facts the budgets must match (iCE40 UltraPlus, ECP5, 7-series families data sheets).
DATASHEET = {
    "icebreaker": {"part": "iCE40UP5K", "package": "SG48", "family": "ice40",
                   "budget": {"lut": 5280, "ff": 5280, "dsp": 8, "bram_bits": 30 * 4096}},
    "ulx3s-85f": {"part": "LFE5U-85F", "family": "ecp5",
                  "budget": {"lut": 83640, "ff": 83640, "dsp": 156, "bram_bits": 208 * 18432}},
    "arty-a7-35t": {"family": "xc7", "budget": {"lut": 20800, "ff": 41600, "dsp": 90, "bram_bits": 50 * 36864}},
}


def test_every_board_file_has_the_contract_keys():
    assert set(board_ids()) == {"icebreaker", "ulx3s-85f", "arty-a7-35t"} == set(BOARD_IDS)
    for bid in board_ids():
        from accumulus.boards.boards import board_path

        doc = json.loads(board_path(bid).read_text())
        for key in ("id", "part", "package", "family", "clock_mhz", "budget", "toolchain"):
            assert key in doc, (bid, key)
        assert set(doc["budget"]) >= {"lut", "ff", "dsp", "bram_bits"}
        assert doc["id"] == bid


@pytest.mark.parametrize("bid", sorted(DATASHEET))
def test_board_budgets_match_datasheets(bid):
    board = load_board(bid)
    want = DATASHEET[bid]
    assert board.budget == want["budget"]
    assert board.family == want["family"]
    if "part" in want:
        assert board.part == want["part"]
    if "package" in want:
        assert board.package == want["package"]


def test_board_platform_classes_exist_and_agree():
    pytest.importorskip("amaranth_boards")
    for bid in ("icebreaker", "ulx3s-85f"):
        board = load_board(bid)
        plat = board.platform()
        assert plat.device.upper() == board.part.upper()
        assert plat.default_clk_frequency == pytest.approx(board.clock_mhz * 1e6)


def test_unknown_board_names_the_choices(tmp_path):
    with pytest.raises(UserError, match="icebreaker"):
        load_board("de10-nano")
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"id": "x", "part": "p", "package": "q", "family": "ice40", "clock_mhz": 12,
                               "budget": {"lut": 1, "ff": 1, "dsp": 0}, "toolchain": {}}))
    with pytest.raises(UserError, match="bram_bits"):
        load_board(bad)


def test_fits_compares_against_budget():
    board = load_board("icebreaker")
    f = board.fits({"lut": 5281, "ff": 10, "dsp": 0, "bram_bits": 4096})
    assert not f["lut"]["fits"] and f["ff"]["fits"] and f["bram_bits"]["used"] == 4096


def test_resources_from_cells_per_family():
    ice = resources_from_cells({"SB_LUT4": 10, "SB_DFFER": 3, "SB_DFF": 2, "SB_CARRY": 4, "SB_RAM40_4K": 2,
                                "SB_MAC16": 1}, "ice40")
    assert ice == {"lut": 10, "ff": 5, "carry": 4, "dsp": 1, "bram": 2, "bram_bits": 8192, "lutram": 0}
    ecp = resources_from_cells({"LUT4": 10, "CCU2C": 3, "TRELLIS_FF": 7, "MULT18X18D": 2, "DP16KD": 1}, "ecp5")
    assert ecp["lut"] == 16 and ecp["carry"] == 3 and ecp["dsp"] == 2 and ecp["bram_bits"] == 18432
    xc = resources_from_cells({"LUT6": 3, "LUT2": 4, "FDRE": 9, "FDSE": 1, "CARRY4": 2, "DSP48E1": 1,
                               "RAMB36E1": 1, "RAM32M": 2}, "xc7")
    assert xc == {"lut": 7, "ff": 10, "carry": 2, "dsp": 1, "bram": 1, "bram_bits": 36864, "lutram": 2}


def test_module_instances_multiplies_down_the_hierarchy():
    stat = {"modules": {"\\top": {"num_cells_by_type": {"mid": 2, "SB_LUT4": 1}},
                        "\\mid": {"num_cells_by_type": {"leaf": 3}},
                        "\\leaf": {"num_cells_by_type": {"SB_LUT4": 5}}}}
    assert module_instances(stat, "top") == {"top": 1, "mid": 2, "leaf": 6}


def test_synth_script_options(tmp_path):
    job = SynthJob("x", [tmp_path / "a.v"], "top", "ecp5", tmp_path, dsp=False, flatten=True, netlist=True)
    s = synth_script(job)
    assert "synth_ecp5 -top top -nodsp" in s and "write_json netlist.json" in s and "splitnets" in s
    assert "-noflatten" not in s
    job = SynthJob("x", [tmp_path / "a.v"], "top", "ice40", tmp_path, dsp=True)
    assert "synth_ice40 -top top -dsp -noflatten" in synth_script(job)
    with pytest.raises(ValueError, match="family"):
        SynthJob("x", [tmp_path / "a.v"], "top", "gowin", tmp_path)


@pytest.mark.parametrize("name, cat", [
    ("graph.layer_fc1.mvu.array.c3_p7 [2]", "multipliers"),
    ("graph.layer_fc1.mvu.array.c0_l2_1", "reduction"),
    ("graph.layer_fc1.mvu.array.acc3[11]", "reduction"),
    ("graph.layer_fc1.mvu.array.result0", "reduction"),
    ("graph.layer_fc1.mvu.requant.acc1", "thresholds"),
    ("graph.layer_fc1.mvu.reorder.b0_3", None),
    ("graph.layer_fc1.mvu.inbuf.0.0_WADDR", None),
])
def test_classify_names(name, cat):
    assert classify_name(name) == cat


def _netlist():
    """x -> LUT a -> FF p (product reg); p -> LUT b -> FF acc; acc -> LUT c -> FF requant.q; LUT d -> FF ctl."""
    def lut(i, o):
        return {"type": "SB_LUT4", "port_directions": {"I0": "input", "O": "output"},
                "connections": {"I0": [i], "O": [o]}}

    def ff(d, q):
        return {"type": "SB_DFF", "port_directions": {"D": "input", "C": "input", "Q": "output"},
                "connections": {"D": [d], "C": [99], "Q": [q]}}

    cells = {"$abc$1": lut(2, 3), "$abc$2": lut(4, 5), "$abc$3": lut(6, 7), "$abc$4": lut(8, 9),
             "$auto$ff1": ff(3, 4), "$auto$ff2": ff(5, 6), "$auto$ff3": ff(7, 10), "$auto$ff4": ff(9, 8)}
    nets = {"x": {"bits": [2]}, "layer_fc0.array.c0_p0": {"bits": [4]}, "layer_fc0.array.acc0": {"bits": [6]},
            "layer_fc0.requant.count0": {"bits": [10]}, "layer_fc0.ctl": {"bits": [8]},
            "$hidden": {"bits": [3], "hide_name": 1}}
    return {"modules": {"top": {"attributes": {"top": 1}, "cells": cells, "netnames": nets}}}


def test_split_netlist_charges_luts_to_the_register_they_feed():
    out = split_netlist(_netlist(), "ice40", group=lambda n: "fc0" if "layer_fc0" in n else None)
    fc0 = out["fc0"]
    assert (fc0["multipliers"]["lut"], fc0["multipliers"]["ff"]) == (1, 1)
    assert (fc0["reduction"]["lut"], fc0["reduction"]["ff"]) == (1, 1)
    assert (fc0["thresholds"]["lut"], fc0["thresholds"]["ff"]) == (1, 1)
    assert (fc0["rest"]["lut"], fc0["rest"]["ff"]) == (1, 1)


def test_policies():
    plan = mlp_plan((16, 8, 4), pe=[2, 1], simd=[4, 1])
    layer = plan.layer("fc0")
    exact = layer["folding"]["pe_acc_bits"]
    assert policy_widths(layer, "exact") == exact
    assert policy_widths(layer, "datatype") == [layer["acc"]["bits"]["datatype"]] * 2
    assert policy_widths(layer, "fixed:32") == [32, 32]
    assert policy_widths(layer, "exact-minus:2") == [b - 2 for b in exact]
    assert policy_dir("fixed:32") == "fixed-32"
    with pytest.raises(UserError, match="fixed:K"):
        check_policy("fixed:")
    # 8 channels x 15 levels at 12 bits, over 2 PEs
    assert threshold_storage_bits(plan, layer, [12, 12]) == 8 * 15 * 12
    assert threshold_storage_bits(plan, plan.layer("fc1"), [12]) == 0


def test_cost_model_features_match_compiler_cost():
    """boards' fit features and compiler/cost.py compute the same thing for any coefficients."""
    rng = np.random.default_rng(1)
    coeff = {t: float(rng.uniform(0.1, 3)) for t in LUT_TERMS + FF_TERMS}
    coeff["dsp_min_product_bits"] = 0
    coeff.update(ROM_LIMITS)
    for pe, simd, levels in ((1, 1, 15), (2, 8, 15), (4, 4, 0), (2, 32, 15), (8, 1, 15)):
        acc = [12] * pe
        tb = 13 if levels else 0
        out_bits = 4 if levels else 12
        row = layer_terms(4, 4, 32, 64, pe, simd, acc, tb, out_bits)
        est = cost_model.mac_layer_cost(4, 4, 32, 64, pe, simd, acc, levels, tb, coeff)
        assert est["lut"] == pytest.approx(predict(row, coeff, LUT_TERMS))
        assert est["ff"] == pytest.approx(predict(row, coeff, FF_TERMS))


def test_fit_recovers_nonnegative_coefficients():
    rng = np.random.default_rng(0)
    true = {"lut_per_mac_bit": 2.5, "lut_per_adder_bit": 1.1, "lut_per_acc_bit": 0.0, "lut_per_threshold_bit": 3.0,
            "lut_per_buffer_bit": 0.7, "lut_per_rom_bit": 0.0, "lut_per_requant": 60.0, "lut_per_layer": 40.0}
    # a third of the layers without thresholds (a network's last layer), so that the
    # requantizer's constant and the layer's are told apart
    rows = [layer_terms(4, int(x), int(n), 64, int(pe), int(s), [int(a)] * int(pe), (int(a) + 1) * bool(r), 4)
            for x, n, pe, s, a, r in zip(rng.integers(2, 9, 14), rng.choice([16, 32, 64], 14), rng.choice([1, 2, 4], 14),
                                         rng.choice([1, 2, 4, 8], 14), rng.integers(8, 33, 14), np.arange(14) % 3)]
    y = [predict(r, true, LUT_TERMS) for r in rows]
    got = fit(rows, y, LUT_TERMS)
    for k, v in true.items():
        assert got[k] == pytest.approx(v, abs=1e-3), k


def test_const_fit_features_match_compiler_cost_and_recover_coefficients():
    """The const calibration's features are what compiler/cost.py's const_layer_cost
    multiplies, and the fit recovers known coefficients from entries built with them."""
    from accumulus.boards.calibrate import CONST_FF_TERMS, CONST_LUT_TERMS, const_terms

    rng = np.random.default_rng(3)
    true = {"lut_per_const_adder_bit": 1.3, "lut_per_const_threshold_bit": 0.4, "lut_per_const_layer": 25.0,
            "ff_per_const_reg_bit": 0.9, "ff_per_const_code_bit": 2.0, "ff_per_const_layer": 12.0,
            "lut_per_layer": 999.0, "ff_per_layer": 999.0}
    entries = []
    for _ in range(10):
        e = {"channels": int(rng.choice([16, 32, 64])), "threshold_levels": int(rng.choice([0, 3, 15])),
             "threshold_bits": int(rng.integers(8, 16)),
             "const": {"adder_bits": int(rng.integers(500, 20000)), "pipeline_register_bits": int(rng.integers(0, 4000)),
                       "acc_register_bits": int(rng.integers(100, 800))}}
        g = e["const"]
        est = cost_model.const_layer_cost(g["adder_bits"], g["pipeline_register_bits"] + g["acc_register_bits"],
                                          e["channels"], e["threshold_levels"], e["threshold_bits"], true)
        row = const_terms(e)
        assert est["lut"] == pytest.approx(predict(row, true, CONST_LUT_TERMS))
        assert est["ff"] == pytest.approx(predict(row, true, CONST_FF_TERMS))
        entries.append((row, est))
    for terms, key in ((CONST_LUT_TERMS, "lut"), (CONST_FF_TERMS, "ff")):
        got = fit([r for r, _ in entries], [est[key] for _, est in entries], terms)
        for k in terms:
            assert got[k] == pytest.approx(true[k], rel=1e-3), k


def test_estimate_only_report_writes_json_markdown_and_plots(tmp_path):
    from accumulus.boards.report import run_report

    plan = mlp_plan((16, 8, 4), pe=[2, 1], simd=[4, 1], argmax=True)
    plan.save(tmp_path)
    doc = run_report(tmp_path, load_board("icebreaker"), ["exact", "fixed:32"], estimate_only=True, progress=False)
    rep = tmp_path / "reports"
    saved = json.loads((rep / "report.json").read_text())
    assert saved["policies"] == ["exact", "fixed:32"] and saved["options"]["estimate_only"]
    assert "synth" not in saved["policy"]["exact"]
    est_e, est_f = doc["policy"]["exact"]["estimate"]["fc0"], doc["policy"]["fixed:32"]["estimate"]["fc0"]
    # 8 channels x 15 levels; exact stores (PE width + 1) bits per threshold, fixed:32 stores 33
    assert est_f["threshold_storage_bits"] == 8 * 15 * 33
    assert est_e["threshold_storage_bits"] < est_f["threshold_storage_bits"]
    assert est_e["ff"] < est_f["ff"]
    md = (rep / "report.md").read_text()
    assert "| fc0 | 16 | 8 | 2 | 4 |" in md and "Estimate (compiler/cost.py" in md
    assert (rep / "widths.png").stat().st_size > 1000
