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
    stats, lines, all_ties = cg.compare_codes(qm, plan, env, ctx)
    for line in lines:
        print(line)
    assert len(stats) >= 3
    for name, (n, bad) in stats.items():
        assert (n - bad) / n >= 0.999, f"{name}: {bad} of {n} codes differ"
    assert all_ties, "\n".join(lines)
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.999
    # the output is a dequantized uint8 code: equal except where an upstream tie flipped a code
    scale = float(np.max(np.abs(ref))) / 100
    assert np.mean(np.isclose(y, ref, atol=1e-6 + 1e-3 * scale)) >= 0.999
