"""Fuzzing the front door: >= 200 broken graphs, each one clear error line and exit code 2.

Every case goes through the CLI entry point in-process (``accumulus.cli.main``): a crash
would surface as an exception (test failure), a traceback as a multi-line stderr. An audit
hook records every file opened while compiling: nothing outside the model's folder that is
not Python's own library may be read (a secret file beside the folder proves it).
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler_graphs as cg
from accumulus.cli import main

_OPENED: list[str] | None = None


def _audit(event, args):
    if _OPENED is not None and event == "open" and args and isinstance(args[0], (str, bytes)):
        _OPENED.append(args[0] if isinstance(args[0], str) else args[0].decode(errors="replace"))


sys.addaudithook(_audit)


def _base(seed=0):
    m, _ = cg.mlp(widths=(16, 8, 4), seed=seed, in_shape=(1, 16))
    return m


def _cnn():
    return cg.cnn(seed=0)


def _mutations():
    rng = np.random.default_rng(1234)
    base = _base()
    raw = base.SerializeToString()
    cases = []

    def add(kind, model=None, data=None):
        cases.append((f"{kind}-{len(cases)}", model, data))

    # truncated bytes
    for n in sorted(set(rng.integers(1, len(raw) - 1, size=45).tolist()) | {0, 1, 2, 10}):
        add("truncated", data=raw[:n])
    add("garbage", data=bytes(rng.integers(0, 256, size=300, dtype=np.uint8)))
    add("text", data=b"this is not an onnx model\n")
    # removed initializers
    for i in range(len(base.graph.initializer)):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        del m.graph.initializer[i]
        add("removed-initializer", m)
    # wrong shapes: weights with a wrong reduction size, broken reshape/flatten
    for i, init in enumerate(base.graph.initializer):
        a = numpy_helper.to_array(init)
        if a.ndim == 2:
            for cut in (1, 2, 3):
                m = onnx.ModelProto()
                m.CopyFrom(base)
                m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a[:-cut], init.name))
                add("wrong-weight-shape", m)
    for dims in ([1, 15], [1, 17], [1, 4, 4, 2], [2, 3]):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        d = m.graph.input[0].type.tensor_type.shape
        del d.dim[:]
        for v in dims:
            d.dim.add().dim_value = v
        add("wrong-input-shape", m)
    # unknown ops / domains
    for k, node_i in enumerate(range(len(base.graph.node))):
        for new_op, dom in (("FancyOp", ""), ("Quant", "com.example"), ("Sigmoid", ""), ("LSTM", "")):
            if (k + len(new_op)) % 2:
                continue
            m = onnx.ModelProto()
            m.CopyFrom(base)
            m.graph.node[node_i].op_type = new_op
            m.graph.node[node_i].domain = dom
            if dom and dom not in [o.domain for o in m.opset_import]:
                m.opset_import.append(helper.make_opsetid(dom, 1))
            add("unknown-op", m)
    # cycles: a node reads a tensor produced later
    n_nodes = len(base.graph.node)
    for i in range(n_nodes - 1):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        m.graph.node[i].input[0] = m.graph.node[min(n_nodes - 1, i + 1 + i % 3)].output[0]
        add("cycle", m)
    # absurd bit widths, scales, attributes
    bit_inits = [init.name for init in base.graph.initializer if init.name.startswith("bits")]
    for name in bit_inits:
        for v in (0.0, -3.0, 3.5, 1000.0, float("nan"), 65.0):
            m = onnx.ModelProto()
            m.CopyFrom(base)
            for init in m.graph.initializer:
                if init.name == name:
                    init.CopyFrom(numpy_helper.from_array(np.float32(v), name))
            add("absurd-bits", m)
    for name in [i.name for i in base.graph.initializer if i.name.startswith("scale")]:
        for v in (0.0, -1.0, float("inf")):
            m = onnx.ModelProto()
            m.CopyFrom(base)
            for init in m.graph.initializer:
                if init.name == name:
                    init.CopyFrom(numpy_helper.from_array(np.float32(v), name))
            add("bad-scale", m)
    for mode in ("FOO", "", "round_banana"):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        for n in m.graph.node:
            if n.op_type == "Quant":
                for a in n.attribute:
                    if a.name == "rounding_mode":
                        a.s = mode.encode()
                break
        add("bad-rounding-mode", m)
    # external data outside the model's folder
    for loc in ("../secret.bin", "/etc/passwd", "sub/../../secret.bin", "../../../../../../etc/hostname",
                "missing.bin", "..", "/", "../model/../../secret.bin"):
        for i in range(0, len(base.graph.initializer), 3):
            m = onnx.ModelProto()
            m.CopyFrom(base)
            t = m.graph.initializer[i]
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", loc), ("offset", "0"), ("length", "64")):
                e = t.external_data.add()
                e.key, e.value = k, v
            add("external-data", m)
    # float weights, missing data input quantizer, empty graph, bad metadata
    m = onnx.ModelProto()
    m.CopyFrom(base)
    wq = next(n for n in m.graph.node if n.op_type == "MatMul")
    wq.input[1] = next(n for n in m.graph.node if n.op_type == "Quant" and n.input[0].startswith("w")).input[0]
    add("float-weights", m)
    m = onnx.ModelProto()
    m.CopyFrom(base)
    m.graph.node[0].op_type = "Identity"
    m.graph.node[0].domain = ""
    del m.graph.node[0].input[1:]
    del m.graph.node[0].attribute[:]
    add("unquantized-input", m)
    m = onnx.ModelProto()
    m.CopyFrom(base)
    del m.graph.node[:]
    add("empty-graph", m)
    for meta in ("{not json", "[1, 2]", '{"layers": {"fc0": {"acc_bits": "many"}}}', '{"layers": 5}'):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        helper.set_model_props(m, {"accumulus": meta})
        add("bad-metadata", m)
    # the CNN: broken conv weights / pads / pooling
    cnn = _cnn()
    for attr, val in (("kernel_shape", [5, 5]), ("group", 3), ("pads", [9, 9, 9, 9]), ("strides", [0, 0])):
        m = onnx.ModelProto()
        m.CopyFrom(cnn)
        conv = next(n for n in m.graph.node if n.op_type == "Conv")
        for a in list(conv.attribute):
            if a.name == attr:
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute(attr, val))
        add("bad-conv", m)
    for op in ("MaxPool",):
        for attr, val in (("kernel_shape", [20, 20]), ("ceil_mode", 1), ("dilations", [2, 2])):
            m = onnx.ModelProto()
            m.CopyFrom(cnn)
            pool = next(n for n in m.graph.node if n.op_type == op)
            pool.attribute.append(helper.make_attribute(attr, val))
            add("bad-pool", m)
    return cases


CASES = _mutations()


def test_enough_cases():
    assert len(CASES) >= 200, len(CASES)


def test_every_mutation_is_one_clear_error(tmp_path, capsys):
    global _OPENED
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    failures = []
    for name, model, data in CASES:
        path = folder / "m.onnx"
        if data is not None:
            path.write_bytes(data)
        else:
            path.write_bytes(model.SerializeToString())
        _OPENED = []
        try:
            code = main(["compile", str(path), "--out", str(tmp_path / "out"), "--quiet"])
        except BaseException as exc:  # noqa: BLE001 - a crash is a finding, collected below
            code = f"crash {type(exc).__name__}: {exc}"
        finally:
            opened, _OPENED = _OPENED, None
        out, err = capsys.readouterr()
        lines = [l for l in err.splitlines() if l.strip()]
        bad_reads = [p for p in opened if "secret.bin" in p or p.startswith("/etc/")]
        if code != 2 or len(lines) != 1 or not lines[0].startswith("accumulus compile: error: ") \
                or "Traceback" in err or bad_reads:
            failures.append(f"{name}: exit {code}, stderr {err!r}, reads {bad_reads}")
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures[:30])
