"""The MLS hardware stage of hw/mls_top.py (frame buffer, frame and group maxima, encoder,
hw/mls_mac.py's dot engine, integer requantization, output FIFO) in the Amaranth simulator,
bit-exact against compiler.golden's MLS integer semantics, under random input gaps and
output stalls. The plans are lowered by compiler/frontend/mls_load.py from MLS ONNX graphs
built here (tests/mls_graphs.py) and checked by onnx.reference first (verify_mls)."""
from __future__ import annotations

import numpy as np
import pytest

from accumulus.compiler import golden, mls
from accumulus.compiler.frontend.mls_load import lower_mls, verify_mls
from accumulus.compiler.mls import MLSFormat
from accumulus.hw.mls_top import MLSLayerSpec
from accumulus.hw.simstream import Sink, Source, run
from accumulus.sim.mls_cosim import layer_golden, worst_frames

from mls_graphs import conv_graph, mlp_graph


def run_stage(spec, frames, seed=0, gap=0.3, stall=0.3):
    """The stage on integer frames under back-pressure; returns the outputs (B, out_elems)."""
    dut = spec.create()
    mask = (1 << spec.in_bits) - 1
    src = Source(dut.i, [int(v) & mask for v in np.asarray(frames).reshape(-1)], gap=gap)
    snk = Sink(dut.o, len(frames) * spec.out_elems, stall=stall)
    run(dut, [src], [snk], seed=seed, settle=16)
    return np.array(snk.beats, np.int64).reshape(len(frames), -1)


def check_plan(plan, path, x, lanes=None, seed=0):
    assert verify_mls(plan, path, n=8)["ok"]
    env = golden.run_mls(plan, x)
    ran = 0
    for layer in plan.layers:
        if not layer["kind"].startswith("mls_"):
            continue
        spec = MLSLayerSpec(plan, layer, lanes=lanes)
        a = env[layer["input"] + ".int"]
        frames = np.concatenate([a, worst_frames(plan, layer)])
        want = np.concatenate([env[layer["output"] + ".int"].reshape(len(a), -1), layer_golden(plan, layer, frames[len(a):])])
        assert np.array_equal(layer_golden(plan, layer, a), want[:len(a)])       # the helper is run_mls's layer
        got = run_stage(spec, frames, seed=seed)
        bad = np.argwhere(got != want)
        assert not len(bad), (f"layer {layer['name']}: {len(bad)} outputs differ, first frame {bad[0][0]} output "
                              f"{bad[0][1]}: got {got[tuple(bad[0])]}, golden {want[tuple(bad[0])]}")
        ran += 1
    return ran


@pytest.mark.parametrize("fmt,sizes,lanes", [
    (MLSFormat(1, 2, 4, 2), [10, 7, 5], None),          # short last group, lanes = G
    (MLSFormat(4, 2, 4, 2), [9, 6, 3], 2),              # 4M2E, two lane chunks per group
    (MLSFormat(2, 3, 3, 1), [8, 5, 4], 1),              # G = 3, one lane, Eg = 1
])
def test_matvec_stage_matches_golden(tmp_path, fmt, sizes, lanes):
    path = mlp_graph(tmp_path / "m.onnx", sizes, fmt, seed=sizes[0])
    plan = lower_mls(path)
    x = (np.random.default_rng(1).integers(0, 32, (4, sizes[0])) / 16).astype(np.float32)
    assert check_plan(plan, path, x, lanes=lanes) == len(sizes) - 1


@pytest.mark.parametrize("c,hw,n,stride,pad,lanes", [(3, 5, 4, 1, 1, None), (6, 6, 3, 2, 1, 2)])
def test_conv_stage_matches_golden(tmp_path, c, hw, n, stride, pad, lanes):
    fmt = MLSFormat(1, 2, 4, 2)
    path = conv_graph(tmp_path / "c.onnx", c, hw, n, 3, fmt, stride=stride, pad=pad, seed=c)
    plan = lower_mls(path)
    x = (np.random.default_rng(2).integers(0, 32, (2, c, hw, hw)) / 16).astype(np.float32)
    assert check_plan(plan, path, x, lanes=lanes) == 2


@pytest.mark.parametrize("sizes,lanes", [([16, 8], None), ([40, 2], None), ([16, 8], 1)])
def test_stage_throughput_without_back_pressure(tmp_path, sizes, lanes):
    """With no gaps or stalls, the double-buffered frame makes a frame take exactly
    ``cycles_per_frame`` in steady state: the longer of the fill (40 elements for 2 dot
    products of 10 steps: fill-bound) and the dot steps plus the drain (compute-bound); the
    FIFO credit never throttles a stage whose output is always taken."""
    fmt = MLSFormat(1, 2, 4, 2)
    path = mlp_graph(tmp_path / "m.onnx", sizes, fmt)
    plan = lower_mls(path)
    spec = MLSLayerSpec(plan, plan.layers[0], lanes=lanes)
    frames = np.random.default_rng(0).integers(0, 32, (8, sizes[0]))
    dut = spec.create()
    src = Source(dut.i, [int(v) for v in frames.reshape(-1)])
    snk = Sink(dut.o, 8 * spec.out_elems)
    run(dut, [src], [snk], settle=16)
    assert np.array_equal(np.array(snk.beats).reshape(8, -1), layer_golden(plan, plan.layers[0], frames))
    per_frame = np.diff(np.array(snk.times)[spec.out_elems - 1::spec.out_elems])
    assert list(per_frame[2:]) == [spec.cycles_per_frame] * (len(per_frame) - 2), (per_frame, spec.cycles_per_frame)


def test_stage_rejects_other_layers(tmp_path):
    path = conv_graph(tmp_path / "c.onnx", 2, 4, 2, 2, MLSFormat())
    plan = lower_mls(path)
    with pytest.raises(ValueError, match="not mls_matvec or mls_conv"):
        MLSLayerSpec(plan, {"name": "p", "kind": "maxpool"})
    with pytest.raises(ValueError, match="lanes must divide"):
        MLSLayerSpec(plan, plan.layers[0], lanes=3)


def test_plan_weight_codes_decode_to_the_quantized_weights(tmp_path):
    """The plan stores codes as int8; decoding them must not wrap (a 4M2E element is up to
    31 << 3): the static output bound of the requantization depends on it."""
    import onnx
    from onnx import numpy_helper

    fmt = MLSFormat(4, 3, 4, 2)
    path = mlp_graph(tmp_path / "m.onnx", [12, 6], fmt)
    plan = lower_mls(path)
    w = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    assert np.array_equal(mls.dequantize(plan.weight_codes(plan.layers[0])).astype(np.float32), mls.fake_quantize(w, fmt))


def run_top(spec, codes, seed=0, gap=0.3, stall=0.3):
    """The MLSTop through its AXI-Stream ports; returns (outputs (B, out_elems), tlast flags)."""
    from accumulus.hw.simstream import _Port

    top = spec.create()
    codes = np.asarray(codes).reshape(len(codes), -1)
    src = Source(_Port(top.s_axis_tdata, top.s_axis_tvalid, top.s_axis_tready),
                 [int(v) & ((1 << spec.in_bits) - 1) for v in codes.reshape(-1)], gap=gap)
    snk = Sink(_Port(top.m_axis_tdata, top.m_axis_tvalid, top.m_axis_tready), len(codes) * spec.out_elems,
               stall=stall, extra=(top.m_axis_tlast,))
    run(top, [src], [snk], seed=seed, settle=16)
    w = len(top.m_axis_tdata)
    out = np.array([v - (1 << w) if v >> (w - 1) else v for v in snk.beats], np.int64).reshape(len(codes), -1)
    return out, np.array([e[0] for e in snk.extras]).reshape(len(codes), -1)


@pytest.mark.parametrize("kind", ["mlp", "cnn-pool"])
def test_top_runs_the_whole_plan_as_golden(tmp_path, kind):
    """MLSTop (every stage chained, max-pool between them) against compiler.golden.run_mls's
    final integers, with input gaps and output stalls; tlast on each frame's last beat."""
    from accumulus.hw.mls_top import MLSTopSpec

    fmt = MLSFormat(1, 2, 4, 2)
    if kind == "mlp":
        path, shape = mlp_graph(tmp_path / "t.onnx", [12, 9, 6, 4], fmt), (12,)
    else:
        path, shape = conv_graph(tmp_path / "t.onnx", 2, 7, 3, 3, fmt, pool=2), (2, 7, 7)   # 7x7 -> 3x3: a row dropped
    plan = lower_mls(path)
    assert "maxpool" in [l["kind"] for l in plan.layers] or kind == "mlp"
    assert verify_mls(plan, path, n=8)["ok"]
    rng = np.random.default_rng(4)
    x = (rng.integers(0, 32, (4,) + shape) / 16).astype(np.float32)
    x[0] = 31 / 16                                          # every pixel at the top code
    x[1] = 0                                                # all zero: S = 1 in the first layer
    env = golden.run_mls(plan, x)
    spec = MLSTopSpec(plan)
    got, last = run_top(spec, golden.mls_input_codes(plan, x), seed=5)
    assert np.array_equal(got, env[plan.doc["output"] + ".int"])
    assert np.array_equal(last, np.eye(1, spec.out_elems, spec.out_elems - 1, dtype=int).repeat(len(x), 0))
