"""QDQ graphs from onnxruntime.quantization.quantize_static: golden == onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_golden_equals_onnxruntime(tmp_path, arch, per_channel):
    rng = np.random.default_rng(0)
    fm, shape = (cg.float_mlp(), (64,)) if arch == "mlp" else (cg.float_cnn(), (1, 8, 8))
    calib = rng.uniform(0, 1, (32,) + shape).astype(np.float32)
    qm = cg.quantize_qdq(fm, tmp_path / "q.onnx", calib, per_channel=per_channel)
    assert {n.op_type for n in qm.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    plan = compile_model(tmp_path / "q.onnx")
    x = rng.uniform(0, 1, (1000,) + shape).astype(np.float32)
    ctx = cg.ort_run(qm, x)
    y, env = predict(plan, x)
    ref = ctx[qm.graph.output[0].name]
    cg.assert_codes_agree(qm, plan, env, ctx, y, ref, min_tensors=3)
    # the output is a dequantized uint8 code: equal except where an upstream tie flipped a code
    scale = float(np.max(np.abs(ref))) / 100
    assert np.mean(np.isclose(y, ref, atol=1e-6 + 1e-3 * scale)) >= 0.999


def test_qdq_16bit_activations(tmp_path):
    """uint16 activations: multiplier/shift requantization. onnxruntime computes in float32,
    whose rounding near 2^15 codes is ~1e-3 of a code, so near-ties flip more often than at
    8 bits: every difference must still be a tie of the reference (within 0.02 codes)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    import onnx

    rng = np.random.default_rng(0)
    onnx.save(cg.float_mlp(), str(tmp_path / "f.onnx"))
    calib = rng.uniform(0, 1, (32, 64)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": c[None]} for c in calib])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt16, weight_type=QuantType.QInt8)
    qm = onnx.load(str(tmp_path / "q.onnx"))
    plan = compile_model(tmp_path / "q.onnx")
    assert {l["requant"]["kind"] for l in plan.layers if l.get("requant")} == {"multshift"}
    x = rng.uniform(0, 1, (1000, 64)).astype(np.float32)
    ctx = cg.ort_run(qm, x)
    y, env = predict(plan, x)
    stats, lines, all_ties = cg.compare_codes(qm, plan, env, ctx, tie_tol=0.02)
    for line in lines:
        print(line)
    for name, (n, bad) in stats.items():
        assert (n - bad) / n >= 0.99, (name, bad, n)
    assert all_ties, "\n".join(lines)
    assert (y.argmax(1) == ctx[qm.graph.output[0].name].argmax(1)).mean() >= 0.999
