"""Every ONNX backend node test in ../shared/reference/onnx-node-tests, reproduced exactly.

Each case is one ONNX node; its first input is the data input, the others (weights, scales,
zero points) are bound as constants (``--bind``). The plan's golden model, through
``predict``, must give the expected output bit for bit.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from accumulus.commands.predict import predict
from accumulus.compiler.compile import CompileOptions, compile_model

ROOT = Path(os.environ.get("ACCUMULUS_NODE_TESTS", "/work/shared/reference/onnx-node-tests"))
CASES = sorted(p.name for p in ROOT.glob("test_*")) if ROOT.exists() else []


def _load_case(case):
    d = ROOT / case
    model = onnx.load(str(d / "model.onnx"))
    ins = [numpy_helper.to_array(onnx.load_tensor(f)) for f in sorted(glob.glob(str(d / "test_data_set_0/input_*.pb")))]
    outs = [numpy_helper.to_array(onnx.load_tensor(f)) for f in sorted(glob.glob(str(d / "test_data_set_0/output_*.pb")))]
    return d, model, ins, outs


def test_all_cases_present():
    assert len(CASES) == 23, f"expected the 23 cases of the README in {ROOT}, found {len(CASES)}"


@pytest.mark.parametrize("case", CASES)
def test_node_case_reproduced_exactly(case):
    d, model, ins, outs = _load_case(case)
    names = [i.name for i in model.graph.input]
    binds = {n: v for n, v in zip(names[1:], ins[1:])}
    plan = compile_model(d / "model.onnx", CompileOptions(binds=binds))
    x = ins[0]
    # a model without a batch axis is compiled as one sample: predict takes a batch of them
    batch = list(plan.doc["input"]["onnx_shape"][1:]) == list(x.shape)
    y, env = predict(plan, x[None] if batch else x)
    y = y[0] if batch else y
    want = outs[0]
    assert y.shape == want.shape, f"shape {y.shape} != {want.shape}"
    assert y.dtype == want.dtype, f"dtype {y.dtype} != {want.dtype}"
    if np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(y, want)
    else:
        np.testing.assert_array_equal(y.astype(np.float32), want)
