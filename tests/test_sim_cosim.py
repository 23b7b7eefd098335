"""Co-simulation of generated Verilog (hw/build.py) against the golden model: fast tier.

Small synthetic plans keep each simulation to seconds; tests/test_sim_presets.py runs the
canonical models (slow tier)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from accumulus.cli import main
from accumulus.compiler import golden
from accumulus.compiler.synthetic import conv_plan, mlp_plan
from accumulus.compiler.types import IntType
from accumulus.errors import UserError
from accumulus.sim import stimulus as stim
from accumulus.sim.scoreboard import expected_layer

from conftest import require_module, require_tool


def _project(path, plan, policy="exact"):
    require_module("amaranth")
    from accumulus.hw.build import build

    plan.save(path)
    build(plan, path, acc_policy=policy)
    return path


def _small_mlp(seed=4):
    return mlp_plan(widths=(16, 8, 4), input_type=IntType(4, False), pe=[2, 2], simd=[4, 4], seed=seed)


# -- stimulus (pure golden) ----------------------------------------------------------------------
def test_worst_case_vectors_reach_both_ends_of_every_channel():
    plan = mlp_plan(widths=(64, 32, 10), input_type=IntType(5, False), pe=[4, 2], simd=[8, 4], seed=2)
    for layer in plan.layers:
        x = stim.worst_case_codes(plan, layer)
        env = {layer["inputs"][0]: x}
        golden.run_layer(plan, layer, env)
        acc, rng = env[layer["name"] + ".acc"], np.asarray(layer["acc"]["range"])
        n = len(rng)
        assert x.shape == (2 * n,) + plan.tensor_shape(layer["inputs"][0])
        np.testing.assert_array_equal(np.diag(acc[:n]), rng[:, 1])
        np.testing.assert_array_equal(np.diag(acc[n:]), rng[:, 0])


@pytest.mark.parametrize("in_shape,stride", [((8, 8, 1), 1), ((4, 4, 3), 1), ((7, 7, 2), 2)])
def test_worst_case_conv_tiling_hits_bounds(in_shape, stride):
    plan = conv_plan(in_shape=in_shape, channels=(6, 4), stride=stride, seed=3)
    for layer in plan.layers:
        x = stim.worst_case_codes(plan, layer)
        env = {layer["inputs"][0]: x}
        golden.run_layer(plan, layer, env)
        acc, rng = env[layer["name"] + ".acc"], np.asarray(layer["acc"]["range"])
        n = len(rng)
        flat = acc.reshape(len(acc), -1, n)
        for c in range(n):
            assert flat[c, :, c].max() == rng[c, 1], f"{layer['name']} channel {c} misses its top"
            assert flat[n + c, :, c].min() == rng[c, 0], f"{layer['name']} channel {c} misses its bottom"


def test_npy_stimulus_float_and_int(tmp_path):
    plan = mlp_plan(widths=(64, 10), input_type=IntType(5, False))
    codes = np.random.default_rng(0).integers(0, 32, size=(5, 64))
    np.save(tmp_path / "c.npy", codes)
    np.testing.assert_array_equal(stim.npy_codes(plan, tmp_path / "c.npy"), codes)
    np.save(tmp_path / "f.npy", codes.astype(np.float32) + 0.25)   # scale 1.0: rounds back to the codes
    np.testing.assert_array_equal(stim.npy_codes(plan, tmp_path / "f.npy"), codes)
    np.save(tmp_path / "bad.npy", np.zeros((3, 7)))
    with pytest.raises(UserError, match="shape"):
        stim.npy_codes(plan, tmp_path / "bad.npy")
    np.save(tmp_path / "big.npy", codes + 40)
    with pytest.raises(UserError, match="outside the plan's input type"):
        stim.npy_codes(plan, tmp_path / "big.npy")


def test_test_codes_use_the_dataset_of_the_input_size():
    plan = mlp_plan(widths=(64, 10), input_type=IntType(5, False))
    x = stim.test_codes(plan, 20, seed=1)
    assert x.shape == (20, 64) and x.min() >= 0 and x.max() <= 16 and x.max() > 8   # digits pixels


# -- command line -------------------------------------------------------------------------------
def test_sim_without_rtl_names_the_build_stage(tmp_path, capsys):
    _small_mlp().save(tmp_path)
    assert main(["sim", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "rtl/build.json not found" in err and f"accumulus build {tmp_path}" in err


def test_sim_rejects_bad_backpressure(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sim", str(tmp_path), "--backpressure", "1.5"])
    assert "back-pressure must be a probability" in capsys.readouterr().err


# -- co-simulation ------------------------------------------------------------------------------
def test_cosim_small_mlp_bit_exact_under_backpressure(tmp_path, capsys):
    require_tool("iverilog")
    d = _project(tmp_path / "p", _small_mlp())
    rc = main(["sim", str(d), "--frames", "40", "--backpressure", "0.4", "--seed", "3"])
    out = capsys.readouterr().out
    r = json.loads((d / "sim" / "results.json").read_text())
    assert rc == 0, out
    assert r["passed"] and r["mismatches"] == 0 and r["frames"] == 48   # 8 throughput + 40 back-pressure
    assert r["frames_missing"] == 0 and r["extra_frames"] == 0
    run = r["runs"][0]
    assert run["frames_received"] == run["frames_sent"] == 48
    assert r["cycles_per_frame"] is not None and r["cycles_per_frame_error"] <= 0.10
    assert r["latency_cycles"] > 0 and "Icarus" in r["simulator_version"]
    assert "PASS" in out and "results.json" in out


def test_cosim_worst_case_exact_passes_and_exact_minus_1_fails(tmp_path):
    """The accumulators built at exact width hold every reachable sum; one bit less wraps."""
    require_tool("iverilog")
    from accumulus.sim.cosim import simulate

    plan = _small_mlp(seed=7)
    ok = simulate(_project(tmp_path / "exact", plan), stimulus="worst", backpressure=0.3, log=lambda s: None)
    assert ok["passed"] and ok["mismatches"] == 0
    assert {r["design"] for r in ok["runs"]} >= {"top", "layer-fc1"}   # deeper engine run alone
    bad_dir = _project(tmp_path / "minus1", _small_mlp(seed=7), policy="exact-minus:1")
    bad = simulate(bad_dir, stimulus="worst", backpressure=0.3, log=lambda s: None)
    assert not bad["passed"] and bad["mismatches"] > 0
    assert bad["acc_policy"] == "exact-minus:1"
    m = bad["first_mismatch"]
    assert m["expected"] != m["got"]
    # the CLI says so with its exit code
    assert main(["sim", str(bad_dir), "--stimulus", "worst", "--frames", "4"]) == 1


def test_cosim_conv_engine_alone_on_worst_case(tmp_path):
    require_tool("iverilog")
    from accumulus.sim.cosim import layer_designs, load_build, _layer_stimulus
    from accumulus.sim.runner import run
    from accumulus.compiler.plan import Plan

    plan = conv_plan(in_shape=(5, 5, 2), channels=(4, 4), pe=[2, 2], simd=[3, 4], seed=5)
    d = _project(tmp_path / "c", plan)
    plan = Plan.load(d)
    designs = layer_designs(d, load_build(d), plan)
    layer, design = next((l, x) for l, x in designs if l["name"] == "conv1")
    x, y = _layer_stimulus(plan, layer, design)
    np.testing.assert_array_equal(y, expected_layer(plan, layer, x.reshape((-1,) + plan.tensor_shape("t0"))))
    r = run(design, x, y, build_root=tmp_path / "b", work_dir=tmp_path / "w", seed=1, backpressure=0.3,
            measure_frames=0)
    assert r["passed"] and r["frames_checked"] == 8
