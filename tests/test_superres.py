"""Super-resolution graphs: DepthToSpace (sub-pixel) and nearest Resize as ``reorder`` layers.

Fast: the compiler's index maps against onnx.reference, qonnx's bundled ESPCN models and a
Brevitas ESPCN-style net compiled with golden == qonnx, the reorder engine in Amaranth's
simulator against the golden model. Slow: the Brevitas net built and co-simulated.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import CompileOptions, compile_model
from conftest import require_module

ESPCN = "bsd300x3-espcn"


def _espcn_path(kind):
    import qonnx

    from pathlib import Path
    return Path(qonnx.__file__).parent / "data" / "onnx" / ESPCN / kind / "quant_model.onnx"


def _check_against_qonnx(model, plan, x, min_tensors=1):
    ctx = cg.qonnx_run(model, x)
    y, env = predict(plan, x)
    ref = ctx[model.graph.output[0].name]
    assert y.shape == ref.shape
    cg.assert_codes_agree(model, plan, env, ctx, y.reshape(len(x), -1), ref.reshape(len(x), -1),
                          min_tensors=min_tensors)
    # a float tie in the reference moves an output by one step: allowed, as the codes check says
    close = np.isclose(y, ref, rtol=1e-4, atol=1e-4).mean()
    assert close >= 0.999, f"only {close:.5f} of the outputs agree"
    return plan, env


def test_espcn_subpixel_golden_equals_qonnx():
    import onnx

    path = _espcn_path("subpixel")
    model = onnx.load(path)
    # the graph's first Conv reads the float image: declare it as 8-bit pixels in [0, 1]
    plan = compile_model(path, CompileOptions(input_type="uint8", input_scale=1 / 255))
    assert [l["kind"] for l in plan.layers].count("reorder") == 1
    x = (np.random.default_rng(0).integers(0, 256, (2, 3, 128, 128)) / 255).astype(np.float32)
    _check_against_qonnx(model, plan, x)


def test_espcn_nn_resize_golden_equals_qonnx():
    import onnx

    path = _espcn_path("nn_resize")
    model = onnx.load(path)
    plan = compile_model(path)   # Relu -> unsigned 8-bit Quant on the input: the ReLU is redundant
    (layer,) = [l for l in plan.layers if l["kind"] == "reorder"]
    assert layer["op"] == "resize_nearest" and layer["out_shape"][:2] == [256, 256]
    x = np.random.default_rng(1).uniform(-0.1, 1.1, (2, 3, 128, 128)).astype(np.float32)
    _check_against_qonnx(model, plan, x)


# -- index maps against onnx.reference ---------------------------------------------------------
def _reorder_graph(op, attrs, shape=(1, 8, 3, 4), scales=None, sizes=None, opset=13):
    """Quant -> op -> Quant, so that both sides are integer tensors of the plan."""
    b = cg.Builder(0)
    x = b.node("Quant", ["x", b.const(np.float32(1 / 16)), b.const(np.float32(0)), b.const(np.float32(5))],
               domain=cg.QDOM, signed=0, narrow=0, rounding_mode="ROUND")
    if op == "Resize":
        ins = [x, b.const(np.zeros(0, np.float32)),
               b.const(np.asarray(scales, np.float32)) if scales is not None else "",
               b.const(np.asarray(sizes, np.int64)) if sizes is not None else ""]
        y = b.node("Resize", ins, **attrs)
    else:
        y = b.node("DepthToSpace", [x], **attrs)
    y = b.node("Quant", [y, b.const(np.float32(1 / 16)), b.const(np.float32(0)), b.const(np.float32(5))],
               domain=cg.QDOM, signed=0, narrow=0, rounding_mode="ROUND")
    if op == "Resize":
        out = list(sizes) if sizes is not None else [int(np.floor(d * s)) for d, s in zip(shape, scales)]
    else:
        k = attrs["blocksize"]
        out = [shape[0], shape[1] // (k * k), shape[2] * k, shape[3] * k]
    m = helper.make_model(helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                           [helper.make_tensor_value_info(y, TensorProto.FLOAT, out)], b.inits),
                          opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(cg.QDOM, 1)])
    m.ir_version = 8
    return m


def _onnx_reference(op, attrs, x, scales=None, sizes=None):
    from onnx.reference import ReferenceEvaluator

    ins = ["x"] + (["roi", "scales" if scales is not None else "", "sizes" if sizes is not None else ""]
                   if op == "Resize" else [])
    node = helper.make_node(op, ins, ["y"], **attrs)
    inits = []
    if op == "Resize":
        from onnx import numpy_helper
        inits = [numpy_helper.from_array(np.zeros(0, np.float32), "roi")]
        if scales is not None:
            inits.append(numpy_helper.from_array(np.asarray(scales, np.float32), "scales"))
        if sizes is not None:
            inits.append(numpy_helper.from_array(np.asarray(sizes, np.int64), "sizes"))
    g = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return ReferenceEvaluator(m).run(None, {"x": x})[0]


D2S = [dict(blocksize=2, mode="DCR"), dict(blocksize=2, mode="CRD"), dict(blocksize=1, mode="CRD")]
RESIZE = [(dict(mode="nearest", coordinate_transformation_mode=ctm, nearest_mode=nm), sc, sz)
          for ctm in ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners")
          for nm in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
          for sc, sz in (([1, 1, 2, 3], None), (None, [1, 8, 9, 8]))]


@pytest.mark.parametrize("case", range(len(D2S) + len(RESIZE)))
def test_reorder_matches_onnx_reference(tmp_path, case):
    if case < len(D2S):
        op, attrs, sc, sz = "DepthToSpace", D2S[case], None, None
    else:
        op = "Resize"
        attrs, sc, sz = RESIZE[case - len(D2S)]
    model = _reorder_graph(op, attrs, scales=sc, sizes=sz)
    plan = compile_model(cg.save(model, tmp_path / "m.onnx"))
    codes = np.random.default_rng(case).integers(0, 32, (3, 8, 3, 4))
    x = (codes / 16).astype(np.float32)
    y, env = predict(plan, x)
    ref = np.stack([_onnx_reference(op, attrs, x[i:i + 1], sc, sz)[0] for i in range(3)])
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("attrs, sc, why", [
    (dict(mode="linear"), [1, 1, 2, 2], "mode='linear'"),
    (dict(mode="nearest", coordinate_transformation_mode="tf_crop_and_resize"), [1, 1, 2, 2],
     "coordinate_transformation_mode='tf_crop_and_resize'"),
    (dict(mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn"), [1, 1, 2, 2],
     "coordinate_transformation_mode='tf_half_pixel_for_nn'"),
    (dict(mode="nearest"), [1, 1, 1.5, 2], "not integers"),
    (dict(mode="nearest"), [1, 2, 2, 2], "channel axis"),
])
def test_resize_refusals_name_node_and_attribute(tmp_path, attrs, sc, why):
    from accumulus.errors import UserError

    model = _reorder_graph("Resize", attrs, shape=(1, 8, 4, 4), scales=sc)
    with pytest.raises(UserError, match=why) as exc:
        compile_model(cg.save(model, tmp_path / "m.onnx"))
    assert "Resize" in str(exc.value)


# -- Brevitas nets exported at test time ---------------------------------------------------------
# Folding target for the Brevitas nets: the compiler's default (fold.DEFAULT_TARGET_CYCLES); the
# folding offers a conv only SIMD widths its window generator delivers, so the hardware meets it.
BREVITAS_TARGET = dict()
# Amaranth's Python simulator compiles each wide adder tree into one nested expression and
# exceeds Python's recursion limit on the default folding's SIMD-24 trees: its test folds the
# same nets further (2400 cycles per frame); Verilator co-simulates the default folding.
PYSIM_TARGET = dict(target_fps=1000, clock_mhz=2.4)


def brevitas_superres(kind, path, upscale=2):
    """An ESPCN-style quantized net, exported to QONNX by Brevitas (``dynamo=False``).

    ``kind="subpixel"``: QuantIdentity(8) -> QuantConv2d 1->8->8->upscale² (3x3, pad 1, W4,
    QuantReLU(4) between) -> QuantIdentity(8) -> PixelShuffle(upscale) (DepthToSpace).
    ``kind="resize"``: QuantIdentity(8) -> Upsample(upscale, nearest) (Resize) -> QuantConv2d
    1->4->1 -> QuantIdentity(8). Input (1, 1, 8, 8). Returns (torch module, onnx model).
    """
    import onnx
    torch = require_module("torch")
    require_module("brevitas")
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx

    torch.set_num_threads(1)
    torch.manual_seed(0 if kind == "subpixel" else 1)

    def conv(i, o):
        return qnn.QuantConv2d(i, o, 3, padding=1, weight_bit_width=4, bias=True)

    if kind == "subpixel":
        net = torch.nn.Sequential(
            qnn.QuantIdentity(bit_width=8, return_quant_tensor=True),
            conv(1, 8), qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
            conv(8, 8), qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
            conv(8, upscale * upscale), qnn.QuantIdentity(bit_width=8, return_quant_tensor=False),
            torch.nn.PixelShuffle(upscale))
    else:
        net = torch.nn.Sequential(
            qnn.QuantIdentity(bit_width=8, return_quant_tensor=False),
            torch.nn.Upsample(scale_factor=upscale, mode="nearest"),
            conv(1, 4), qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
            conv(4, 1), qnn.QuantIdentity(bit_width=8, return_quant_tensor=False))
    net.train()
    with torch.no_grad():      # calibrate the activation scales
        for _ in range(4):
            net(torch.rand(16, 1, 8, 8) * 2 - 1)
    net.eval()
    export_qonnx(net, input_t=torch.rand(1, 1, 8, 8), export_path=str(path), dynamo=False)
    return net, onnx.load(str(path))


def _torch_out(net, x):
    import torch
    with torch.no_grad():
        y = net(torch.from_numpy(x))
    return (y.value if hasattr(y, "value") else y).numpy()


@pytest.mark.parametrize("kind", ["subpixel", "resize"])
def test_brevitas_superres_golden_equals_qonnx_torch_and_hardware(tmp_path, kind):
    """Golden == qonnx 1.0.0 on every tensor (beyond float ties) and == PyTorch on the output;
    the whole accelerator in Amaranth's simulator == golden under gaps and stalls."""
    from accumulus.compiler import golden
    from accumulus.hw.reorder import ReorderSpec
    from accumulus.hw.simstream import simulate_top
    from accumulus.hw.top import GraphSpec

    net, model = brevitas_superres(kind, tmp_path / "m.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ("DepthToSpace" if kind == "subpixel" else "Resize") in ops, ops
    plan = compile_model(tmp_path / "m.onnx", CompileOptions(**PYSIM_TARGET))
    kinds = [l["kind"] for l in plan.layers]
    (layer,) = [l for l in plan.layers if l["kind"] == "reorder"]
    if kind == "subpixel":
        assert kinds == ["conv"] * 3 + ["reorder"]
        assert layer["op"] == "depth_to_space" and layer["phase"] == [2, 2] and layer["out_shape"] == [16, 16, 1]
    else:
        assert kinds == ["reorder", "conv", "conv"]
        assert layer["op"] == "resize_nearest" and layer["rows"] == [r // 2 for r in range(16)]
    x = np.random.default_rng(2).uniform(-1, 1, (300, 1, 8, 8)).astype(np.float32)
    _check_against_qonnx(model, plan, x, min_tensors=3 if kind == "subpixel" else 2)
    y, _ = predict(plan, x)
    close = np.isclose(y, _torch_out(net, x), rtol=1e-4, atol=1e-4).mean()
    assert close >= 0.999, f"only {close:.5f} of the outputs agree with PyTorch"

    # the reorder's two-row buffer is in the folding's cost estimate
    spec = ReorderSpec.from_layer(layer, plan.tensor_type(layer["inputs"][0]))
    assert plan.doc["estimate"]["cost"]["bram_bits"] >= spec.buffer_bits > 0

    graph = GraphSpec(plan)
    assert graph.cycles_per_frame == plan.doc["estimate"]["cycles_per_frame"]
    codes = golden.quantize_input(plan, x[:3])
    want = golden.run(plan, codes)[plan.output_name].reshape(3, -1)
    got, lasts, _ = simulate_top(graph, codes, gap=0.3, stall=0.3, seed=4)
    np.testing.assert_array_equal(got, want)
    assert sum(lasts) == 3 and lasts[-1] == 1
