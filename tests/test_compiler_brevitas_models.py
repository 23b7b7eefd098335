"""Plain Brevitas QONNX exports (no accumulus metadata): golden == qonnx == PyTorch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import compiler_graphs as cg
from accumulus.commands.predict import predict
from accumulus.compiler.compile import compile_model
from conftest import require_module


def _export(model, shape, path):
    import torch
    from brevitas.export import export_qonnx

    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand((16,) + shape[1:]))
    model.eval()
    export_qonnx(model, input_t=torch.rand(shape), export_path=str(path), dynamo=False)
    return onnx.load(str(path))


def _torch_out(model, x):
    import torch
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    return (y.value if hasattr(y, "value") else y).numpy()


def _check(model, onnx_model, path, x):
    plan = compile_model(path)
    ctx = cg.qonnx_run(onnx_model, x)
    y, env = predict(plan, x)
    ref = ctx[onnx_model.graph.output[0].name]
    stats, lines, all_ties = cg.compare_codes(onnx_model, plan, env, ctx)
    for line in lines:
        print(line)
    assert stats
    for name, (n, bad) in stats.items():
        assert (n - bad) / n >= 0.999, f"{name}: {bad} of {n} differ"
    assert all_ties
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.999
    assert (y.argmax(1) == _torch_out(model, x).argmax(1)).mean() >= 0.999
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    return plan


def test_brevitas_mlp(tmp_path):
    torch = require_module("torch")
    require_module("brevitas")
    import brevitas.nn as qnn
    torch.set_num_threads(1)
    torch.manual_seed(0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
            self.fc1 = qnn.QuantLinear(64, 32, bias=True, weight_bit_width=4)
            self.r1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.fc2 = qnn.QuantLinear(32, 32, bias=True, weight_bit_width=4)
            self.r2 = qnn.QuantReLU(bit_width=2, return_quant_tensor=True)
            self.fc3 = qnn.QuantLinear(32, 10, bias=True, weight_bit_width=4)

        def forward(self, x):
            return self.fc3(self.r2(self.fc2(self.r1(self.fc1(self.inp(x.flatten(1)))))))

    m = MLP()
    path = tmp_path / "mlp.onnx"
    om = _export(m, (1, 1, 8, 8), path)
    x = np.random.default_rng(0).uniform(-1, 1, (1000, 1, 8, 8)).astype(np.float32)
    plan = _check(m, om, path, x)
    assert [l["kind"] for l in plan.layers] == ["matvec"] * 3


def test_brevitas_residual_cnn(tmp_path):
    torch = require_module("torch")
    require_module("brevitas")
    import brevitas.nn as qnn
    torch.set_num_threads(1)
    torch.manual_seed(1)

    class ResCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(1, 8, 3, padding=1, weight_bit_width=4, bias=False)
            self.b1 = torch.nn.BatchNorm2d(8)
            # float outputs: the residual add sees two differently scaled quantized tensors
            self.r1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=False)
            self.c2 = qnn.QuantConv2d(8, 8, 3, padding=1, weight_bit_width=4, bias=False)
            self.b2 = torch.nn.BatchNorm2d(8)
            self.q2 = qnn.QuantIdentity(bit_width=4, return_quant_tensor=False)
            self.r2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = qnn.QuantLinear(8 * 4 * 4, 10, bias=True, weight_bit_width=4)

        def forward(self, x):
            a = self.r1(self.b1(self.c1(self.inp(x))))
            b = self.q2(self.b2(self.c2(a)))
            y = self.r2(a + b)
            return self.fc(self.pool(y).flatten(1))

    m = ResCNN()
    path = tmp_path / "rescnn.onnx"
    om = _export(m, (1, 1, 8, 8), path)
    x = np.random.default_rng(1).uniform(-1, 1, (1000, 1, 8, 8)).astype(np.float32)
    plan = _check(m, om, path, x)
    kinds = [l["kind"] for l in plan.layers]
    assert "add" in kinds and "maxpool" in kinds and kinds.count("conv") == 2
