"""Small MLS ONNX graphs (``accumulus.MLSQuant`` nodes, docs/mls.md) built with onnx.helper,
for the MLS hardware tests: the graph ``quant/export.py`` writes for ``--quant mls``
(MLSQuant on every Gemm/Conv weight and input, BatchNormalization and Relu after them),
with random weights, so no training is needed."""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from accumulus.compiler.mls import MLSFormat


def _q(name, src, dst, fmt, per_sample):
    return helper.make_node("MLSQuant", [src], [dst], name=name, domain="accumulus",
                            mantissa_bits=fmt.mantissa_bits, exponent_bits=fmt.exponent_bits,
                            group_size=fmt.group_size, group_bits=fmt.group_bits, per_sample=per_sample)


def mlp_graph(path, sizes, fmt: MLSFormat, seed: int = 0, bn: bool = True, in_bits: int = 5,
              in_scale: float = 1 / 16):
    """An MLS MLP ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``: Gemm (+ BatchNormalization +
    Relu on every hidden layer; the last one plain). Returns ``path``."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i, (c, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((n, c)) / np.sqrt(c)).astype(np.float32)
        w[rng.random(w.shape) < 0.1] = 0.0
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [_q(f"qw{i}", f"w{i}", f"w{i}q", fmt, 0), _q(f"qx{i}", x, f"x{i}q", fmt, 1),
                  helper.make_node("Gemm", [f"x{i}q", f"w{i}q"], [f"g{i}"], name=f"fc{i}", transB=1)]
        y = f"g{i}"
        last = i == len(sizes) - 2
        if bn and not last:
            for k, v in (("s", rng.uniform(0.5, 2.0, n) * rng.choice([-1, 1], n, p=[0.1, 0.9])),
                         ("b", rng.normal(0, 0.5, n)), ("m", rng.normal(0, 0.2, n)), ("v", rng.uniform(0.5, 2, n))):
                inits.append(numpy_helper.from_array(v.astype(np.float32), f"bn{i}{k}"))
            nodes.append(helper.make_node("BatchNormalization", [y] + [f"bn{i}{k}" for k in "sbmv"], [f"n{i}"],
                                          name=f"bn{i}", epsilon=1e-5))
            y = f"n{i}"
        if not last:
            nodes.append(helper.make_node("Relu", [y], [f"r{i}"], name=f"relu{i}"))
            y = f"r{i}"
        x = y
    graph = helper.make_graph(nodes, "mls_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, sizes[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("accumulus", 1)])
    helper.set_model_props(model, {"accumulus": json.dumps({"quant": "mls", "input": {
        "bits": in_bits, "scale": in_scale, "signed": False}})})
    onnx.save(model, str(path))
    return path


def conv_graph(path, c: int, hw: int, n: int, classes: int, fmt: MLSFormat, stride: int = 1, pad: int = 1,
               k: int = 3, seed: int = 0, in_bits: int = 5, in_scale: float = 1 / 16, pool: int = 0):
    """An MLS CNN: Conv(k, stride, pad) + BatchNormalization + Relu (+ MaxPool(pool) when
    ``pool``), then a Gemm over the unflattened feature map (its weight a Reshape of an
    ``(classes, n, OH, OW)`` weight, as quant/export.py writes the classifier). Returns ``path``."""
    rng = np.random.default_rng(seed)
    oh = (hw + 2 * pad - k) // stride + 1
    if pool:
        oh = (oh - pool) // pool + 1
    w0 = (rng.standard_normal((n, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    w1 = (rng.standard_normal((classes, n, oh, oh)) / np.sqrt(n * oh * oh)).astype(np.float32)
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array(np.array([classes, -1], np.int64), "shape1")]
    for key, v in (("s", rng.uniform(0.5, 2.0, n)), ("b", rng.normal(0, 0.5, n)), ("m", rng.normal(0, 0.2, n)),
                   ("v", rng.uniform(0.5, 2, n))):
        inits.append(numpy_helper.from_array(v.astype(np.float32), f"bn{key}"))
    nodes = [_q("qw0", "w0", "w0q", fmt, 0), _q("qx0", "x", "x0q", fmt, 1),
             helper.make_node("Conv", ["x0q", "w0q"], ["c0"], name="conv0", kernel_shape=[k, k],
                              pads=[pad] * 4, strides=[stride] * 2),
             helper.make_node("BatchNormalization", ["c0"] + [f"bn{key}" for key in "sbmv"], ["n0"], name="bn0"),
             helper.make_node("Relu", ["n0"], ["r0"], name="relu0")]
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r0"], ["p0"], name="pool0", kernel_shape=[pool, pool],
                                      strides=[pool, pool]))
    nodes += [_q("qx1", "p0" if pool else "r0", "x1q", fmt, 1),
             helper.make_node("Flatten", ["x1q"], ["f1"], name="flat1"),
             _q("qw1", "w1", "w1q", fmt, 0),
             helper.make_node("Reshape", ["w1q", "shape1"], ["w1r"], name="reshape1"),
             helper.make_node("Gemm", ["f1", "w1r"], ["y"], name="fc1", transB=1)]
    graph = helper.make_graph(nodes, "mls_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("accumulus", 1)])
    helper.set_model_props(model, {"accumulus": json.dumps({"quant": "mls", "input": {
        "bits": in_bits, "scale": in_scale, "signed": False}})})
    onnx.save(model, str(path))
    return path
