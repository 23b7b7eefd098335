"""FINN-style graphs with MultiThreshold nodes: golden == qonnx execution."""
from __future__ import annotations

import json

import numpy as np

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model


def test_multithreshold_mlp_equals_qonnx(tmp_path):
    model = cg.finn_mlp(seed=3)
    plan = compile_model(cg.save(model, tmp_path / "finn.onnx"))
    rng = np.random.default_rng(4)
    x = rng.integers(0, 17, size=(1000, 64)).astype(np.float32)
    ctx = cg.qonnx_run(model, x)
    y, env = predict(plan, x)
    ref = ctx[model.graph.output[0].name]
    stats, lines, _ = cg.compare_codes(model, plan, env, ctx)
    assert len(stats) == 2
    for name, (n, bad) in stats.items():
        assert bad == 0, f"{name}: {bad} of {n} codes differ"    # thresholds compare exactly: no ties
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.999
    # the thresholds of the first layer are the graph's own (already in the accumulator domain)
    t = plan.array(plan.layers[0]["requant"]["thresholds"])
    th = next(i for i in model.graph.initializer if i.name == model.graph.node[1].input[1])
    from onnx import numpy_helper
    ref_t = numpy_helper.to_array(th)
    rng_ = np.asarray(plan.layers[0]["acc"]["range"])
    np.testing.assert_array_equal(t, np.clip(np.ceil(ref_t), rng_[:, :1], rng_[:, 1:] + 1))
    assert plan.layers[1]["requant"]["out_bias"] == 0   # codes 0..15; the -8 lives in the next layer's math


def test_finn_domain_is_the_same_op(tmp_path):
    a = compile_model(cg.save(cg.finn_mlp(seed=5), tmp_path / "a.onnx"))
    b = compile_model(cg.save(cg.finn_mlp(seed=5, domain="finn.custom_op.general"), tmp_path / "b.onnx"))
    assert json.dumps(a.layers, sort_keys=True) == json.dumps(b.layers, sort_keys=True)
    for k, v in a.arrays.items():
        np.testing.assert_array_equal(v, b.arrays[k])
