"""Precision Highway (Park et al., "Precision Highway for Ultra Low-Precision Quantization").

``--highway H``: the stem output, every residual branch output and every residual sum are
H-bit fixed point; only the copy feeding each convolution is quantized to ``--act-bits``.
Checked on the QONNX graph Brevitas exports (qonnx reads the Quant nodes), on the plan the
compiler makes of it, golden vs PyTorch top-1, and (slow) the generated hardware in co-sim.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from accumulus.cli import main
from accumulus.compiler import golden
from accumulus.compiler.plan import Plan
from accumulus.errors import UserError
from accumulus.quant.data import load_dataset
from accumulus.quant.models import build_model, make_config, preset
from accumulus.quant.train import TrainOptions, train

from conftest import require_tool


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _trained(tmp, hw, hidden=(16, 16, 32), w=2, a=2, epochs=1, limit=400):
    cfg = preset("digits-rescnn3", weight_bits=w, act_bits=a, highway_bits=hw, hidden=hidden)
    torch.set_num_threads(1)
    model, _ = train(cfg, tmp, TrainOptions(epochs=epochs, limit=limit, progress=False, float_baseline=False))
    from accumulus.quant.export import export_model

    ds = load_dataset("digits", seed=0)
    export_model(model, cfg, tmp, torch.from_numpy(ds.x_test[:8]))
    return model, cfg


def _quant_nodes(path):
    """Quant node -> (bits, signed, scale) and the producer of each node input, from the file."""
    m = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    q = {}
    for n in m.graph.node:
        if n.op_type == "Quant":
            signed = next((a.i for a in n.attribute if a.name == "signed"), 1)
            q[n.output[0]] = (int(init[n.input[3]].reshape(-1)[0]), bool(signed), float(init[n.input[1]].reshape(-1)[0]))
    return m, prod, q


def _source_quant(t, prod, q):
    """The Quant output a tensor comes from, through MaxPool/Relu (value-preserving on codes)."""
    while t not in q:
        t = prod[t].input[0]
    return q[t]


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    out = {}
    for hw in (16, 0):
        d = tmp_path_factory.mktemp(f"highway{hw}")
        model, cfg = _trained(d, hw)
        assert main(["compile", str(d / "model.onnx"), "--out", str(d), "--quiet"]) == 0
        out[hw] = (d, model, cfg)
    return out


@pytest.mark.parametrize("hw", [16, 0])
def test_exported_quantizer_widths(projects, hw):
    d, _, cfg = projects[hw]
    m, prod, q = _quant_nodes(d / "model.onnx")
    adds = [n for n in m.graph.node if n.op_type == "Add"]
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(adds) == 3 and len(convs) == 5
    stream = hw or cfg.act_bits
    for n in adds:
        # skip input, branch output and the sum's requantizer all at the stream width
        ins = [_source_quant(t, prod, q) for t in n.input]
        assert [b for b, _, _ in ins] == [stream, stream], (n.name, ins)
        sum_q = next(o for o in m.graph.node if o.input and o.input[0] == n.output[0])
        assert sum_q.op_type == "Quant" and q[sum_q.output[0]][0] == stream
    for i, n in enumerate(convs):
        bits, signed, _ = _source_quant(n.input[0], prod, q)
        assert not signed and bits == (cfg.input_bits if i == 0 else cfg.act_bits), (n.name, bits)
        src = prod[n.input[0]]
        if hw and i > 0:
            # the act_bits copy requantizes a 16-bit tensor
            assert src.op_type == "Quant" and _source_quant(src.input[0], prod, q)[0] == hw
    if hw:
        wide = [s for b, _, s in q.values() if b == hw]
        assert len(wide) == 7          # stem, 3 branch outputs, 3 sums
        assert all(np.log2(s) == np.round(np.log2(s)) for s in wide)   # fixed point: shift alignment


@pytest.mark.parametrize("hw", [16, 0])
def test_plan_adds_at_stream_width_and_golden_matches_pytorch(projects, hw, digits):
    d, model, cfg = projects[hw]
    plan = Plan.load(d)
    stream = hw or cfg.act_bits
    adds = [l for l in plan.layers if l["kind"] == "add"]
    assert len(adds) == 3
    for l in adds:
        ins = [plan.tensor(t)["type"] for t in l["inputs"]]
        assert [t["bits"] for t in ins] == [stream, stream]
        if hw:
            assert all(a["mult"] == 1 for a in l["align"])           # power-of-two scales: a shift
    convs = [l for l in plan.layers if l["kind"] == "conv"]
    assert [plan.tensor(l["inputs"][0])["type"]["bits"] for l in convs] == [cfg.input_bits] + [cfg.act_bits] * 4
    x = digits.x_test
    y = golden.onnx_output(plan, golden.run_float(plan, x)).reshape(len(x), -1)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    agree = float((y.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.999, agree


def test_cli_highway_option(tmp_path, capsys):
    from accumulus.cli import build_parser

    p = build_parser()
    assert p.parse_args(["train", "--highway", "8", "--out", "x"]).highway_bits == 8
    assert p.parse_args(["train", "--highway-bits", "8", "--out", "x"]).highway_bits == 8
    assert make_config(model="resnet").highway_bits == 16
    assert preset("digits-rescnn").highway_bits == 0
    with pytest.raises(UserError, match="residual models only"):
        make_config(model="mlp", highway_bits=8)
    with pytest.raises(UserError, match="--highway must be"):
        make_config(model="resnet", highway_bits=1)
    # the quantized highway model and its float twin share parameter names (fine-tuning from float)
    q = build_model(preset("digits-rescnn3", weight_bits=2, act_bits=2))
    f = build_model(preset("digits-rescnn3", quant="float"))
    assert {k for k in f.state_dict()} <= {k for k in q.state_dict()}


@pytest.mark.slow
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_highway_hardware_bit_exact(tmp_path, simulator):
    """A narrow digits-rescnn3 (channels 4, 4, 8) with a 16-bit highway built and co-simulated
    under back-pressure 0.3, bit-exact: test images and worst-case vectors. Icarus runs the
    top on the first layer's worst case and every MAC engine alone on its own; Verilator
    (whose builds take ~40 s each here) runs the top on test images and on the first layer's
    worst case. The skip FIFOs are sized to the branch's lead (hw/top.py), well under a frame:
    no frame may be lost or stall, and cycles per frame must stay at the plan's estimate."""
    from accumulus.hw.top import GraphSpec
    from accumulus.sim import stimulus as stim

    require_tool("iverilog" if simulator == "icarus" else "g++")
    _trained(tmp_path, 16, hidden=(4, 4, 8), epochs=1, limit=200)
    assert main(["compile", str(tmp_path / "model.onnx"), "--out", str(tmp_path), "--quiet"]) == 0
    assert main(["build", str(tmp_path)] + (["--no-layer-files"] if simulator == "verilator" else [])) == 0
    build = json.loads((tmp_path / "rtl" / "build.json").read_text())
    plan = Plan.load(tmp_path)
    for l in build["layers"]:
        if l["kind"] == "add":
            # the Add engine and its streams run at the plan's widths, not a MAC width
            pl = next(p for p in plan.layers if p["name"] == l["layer"])
            for port, t in (("in", pl["inputs"][0]), ("in_b", pl["inputs"][1]), ("out", pl["output"])):
                want = plan.tensor(t)["type"]
                assert (l[port]["elem_bits"], l[port]["signed"]) == (want["bits"], want["signed"]), (l, port)
            assert l["out"]["elem_bits"] > 16                 # the full-width sum of two 16-bit codes
    graph = GraphSpec(plan)
    adds = [e for e in graph.engines if e.kind == "add"]
    frame_beats = [int(np.prod(plan.tensor_shape(e.layer["inputs"][0]))) // e.in_elems for e in adds]
    depths = [graph.skip_fifo_depth(e, 0) for e in adds]
    assert all(d < f for d, f in zip(depths, frame_beats)), (depths, frame_beats)      # not a whole frame
    if simulator == "icarus":
        stimuli = [("test", "6"), ("worst", "6")]
    else:
        worst = stim.worst_case_codes(plan)
        np.save(tmp_path / "worst.npy", worst.reshape(len(worst), -1))
        stimuli = [("test", "20"), (str(tmp_path / "worst.npy"), str(len(worst)))]
    for stimulus, frames in stimuli:
        rc = main(["sim", str(tmp_path), "--simulator", simulator, "--frames", frames, "--backpressure", "0.3",
                   "--seed", "3", "--stimulus", stimulus, "--measure-frames", "3"])
        r = json.loads((tmp_path / "sim" / "results.json").read_text())
        assert rc == 0 and r["passed"] and r["mismatches"] == 0 and r["frames_missing"] == 0, r
        assert r["runs"][0]["design"] == "top"
        for run in r["runs"]:
            assert run["frames_sent"] == run["frames_received"] == run["frames_checked"] == run["frames_ok"] \
                == run["frames_expected"], run
            assert run["output_stall_cycles"] > 0 and run["input_gap_cycles"] > 0, run     # back-pressure was applied
        assert sum(run["frames_checked"] for run in r["runs"]) == r["frames"]
        assert abs(r["cycles_per_frame_error"]) <= 0.10, r["cycles_per_frame"]      # the skip path does not throttle
