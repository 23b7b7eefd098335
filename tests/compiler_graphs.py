"""Hand-built quantized ONNX graphs for the compiler tests (onnx.helper only).

Shaped like Brevitas' export_qonnx output: a Quant on the input (scale 1/16, 5-bit
unsigned: digits codes 0..16), per-channel 4-bit signed narrow weight Quants, MatMul/Conv
with float bias, ReLU then an unsigned 4-bit activation Quant.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QDOM = "qonnx.custom_op.general"


class Builder:
    def __init__(self, seed=0, domain=QDOM):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0
        self.domain = domain

    def name(self, base):
        self.k += 1
        return f"{base}{self.k}"

    def const(self, value, base="c"):
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def node(self, op, inputs, domain="", name=None, **attrs):
        out = self.name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or self.name(op), domain=domain, **attrs))
        return out

    def quant(self, x, scale, zp, bits, signed, narrow, rounding="ROUND", name=None):
        ins = [x, self.const(np.asarray(scale, np.float32), "scale"), self.const(np.asarray(zp, np.float32), "zp"),
               self.const(np.float32(bits), "bits")]
        return self.node("Quant", ins, domain=self.domain, name=name, signed=int(signed), narrow=int(narrow),
                         rounding_mode=rounding)

    def weight(self, shape, bits=4, axis_shape=None, sparsity=0.3):
        """Float weights whose Quant gives per-channel 4-bit narrow codes."""
        w = self.rng.normal(0, 1, size=shape).astype(np.float32)
        w[self.rng.random(shape) < sparsity] = 0
        scale = (np.abs(w).max(axis=tuple(i for i in range(len(shape)) if axis_shape[i] == 1), keepdims=True)
                 / (2 ** (bits - 1) - 1)).astype(np.float32)
        scale[scale == 0] = 1
        scale = scale.reshape(axis_shape)
        return self.quant(self.const(w, "w"), scale, 0, bits, True, True)

    def model(self, x_name, x_shape, out, out_shape=None, metadata=None, opset=13):
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(self.domain, 1)])
        if metadata is not None:
            import json
            helper.set_model_props(m, {"accumulus": json.dumps(metadata)})
        return m


def mlp(widths=(64, 64, 64, 10), seed=0, in_scale=1 / 16, in_bits=5, act_bits=4, w_bits=4, in_shape=(1, 1, 8, 8),
        act_scale=None, domain=QDOM, final_argmax=False):
    """Brevitas-like QONNX MLP: input Quant -> Flatten -> [MatMul+bias -> Relu -> Quant]* -> MatMul+bias."""
    b = Builder(seed, domain)
    x = b.quant("x", np.float32(in_scale), 0, in_bits, False, False, name="input_quant")
    x = b.node("Flatten", [x], axis=1)
    names = []
    for i in range(len(widths) - 1):
        k, n = widths[i], widths[i + 1]
        w = b.weight((k, n), w_bits, axis_shape=(1, n))
        name = f"fc{i}"
        names.append(name)
        y = b.node("MatMul", [x, w], name=name)
        bias = (b.rng.normal(0, 0.5, size=(n,))).astype(np.float32)
        y = b.node("Add", [y, b.const(bias, "bias")])
        if i < len(widths) - 2:
            y = b.node("Relu", [y])
            s = np.float32(act_scale if act_scale is not None else b.rng.uniform(0.2, 0.6))
            y = b.quant(y, s, 0, act_bits, False, False)
        x = y
    out_shape = [1, widths[-1]]
    if final_argmax:
        x = b.node("ArgMax", [x], axis=1, keepdims=1)
        m = b.model("x", list(in_shape), x, None)
        m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
        return m, names
    return b.model("x", list(in_shape), x, out_shape), names


def save(model, path):
    onnx.save(model, str(path))
    return path


def with_batch(model, batch):
    """A copy of ``model`` whose data input and outputs have batch size ``batch`` (qonnx checks shapes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    del m.graph.value_info[:]
    return m


def qonnx_run(model, x, all_tensors=True):
    """Execute with qonnx 1.0.0 (the reference executor); every tensor by name."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    m = with_batch(model, x.shape[0])
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    mw = ModelWrapper(m).transform(InferShapes())
    return execute_onnx(mw, {m.graph.input[0].name: x}, return_full_exec_context=all_tensors)
