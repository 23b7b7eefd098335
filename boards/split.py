"""Split a synthesised netlist into multipliers / reduction datapath / thresholds / rest.

ABC renames the LUTs it makes, so a LUT's own name does not say what it computes. Flip-flops
keep their names (Yosys names a flip-flop cell's output after the register it implements,
with the hierarchy path after flattening), and the engines of ``hw/`` register every stage:
products, each adder-tree level, the accumulator, the requantizer. So every logic cell is
charged to the registers its output reaches before the next register: the LUTs and carries
in the cone of a product register are multiplier logic, those in the cone of a tree-level
or accumulator register are reduction datapath, and so on. Block RAMs are classified by
their own (hierarchical) names; DSPs like logic cells.

The rules (:data:`RULES`) are regular expressions on hierarchical names and follow the
names ``hw/systolic.py`` and ``hw/requant.py`` give their registers; first match wins.

A register on a stream between two modules carries several names after flattening: the
producer's output port, the consumer's input port and the parent's wire between them, and
the parent's name is often the only one left for the flip-flop's own bit. So a register is
placed first by where it was written: Yosys keeps the ``src`` location of the ``always``
block on the flip-flop cell and leaves one ``$scopeinfo`` cell per flattened instance with
its module's source span (``module_src``) and path (``hdlname``); the innermost instance
whose span holds the flip-flop's source line is the module that drives it. Its names (or
the instance path itself) choose the category and outer key; a netlist without scope
information falls back to the names alone.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from .synth import RESOURCE_KEYS, resources_from_cells

__all__ = ["CATEGORIES", "RULES", "classify_name", "split_netlist"]

CATEGORIES = ("multipliers", "reduction", "thresholds", "rest")
RULES = [
    # Anything inside a requantizer: threshold ROMs, comparators, search state.
    ("thresholds", re.compile(r"(^|[._ ])(requant\w*|thresh\w*|threshold\w*)([._ $]|$)")),
    # Product registers of the systolic array (c<col>_p<lane>) and multiplier modules.
    ("multipliers", re.compile(r"(^|[._ ])c\d+_p\d+(\s*\[\d+\])?$|(^|[._ ])(mul|mult|multiplier|products?)\d*([._ $]|$)")),
    # Adder-tree levels (c<col>_l<level>_<node>), accumulators, result/deskew registers.
    ("reduction", re.compile(r"(^|[._ ])(c\d+_l\d+_\d+|acc\d*|acc\d+_d\d+|result\d*|tree|adder\w*|accum\w*)"
                             r"([._ $\[]|$)")),
]
FF_PREFIXES = ("SB_DFF", "TRELLIS_FF", "FD")
FF_DATA_PORTS = ("D", "DI")
BRAM_CELLS = ("SB_RAM40_4K", "SB_SPRAM256KA", "DP16KD", "PDPW16KD", "RAMB18E1", "RAMB36E1", "TRELLIS_DPR16X4")


def classify_name(name: str) -> str | None:
    """Category of a hierarchical register/cell name, or None when no rule matches."""
    name = name.lstrip("\\")
    for category, rx in RULES:
        if rx.search(name):
            return category
    return None


def _is_ff(ctype: str) -> bool:
    ctype = ctype.lstrip("\\$")
    return ctype.startswith(FF_PREFIXES) and (ctype.startswith(("SB_DFF", "TRELLIS_FF")) or
                                               re.fullmatch(r"FD[A-Z]*", ctype) is not None)


_SRC = re.compile(r"^(.*?):(\d+)\.\d+-(\d+)\.\d+$")


def _src_span(src: str | None):
    """``(file, first_line, last_line)`` of the first location of a Yosys ``src`` attribute."""
    if not src:
        return None
    m = _SRC.match(str(src).split("|")[0])
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def _scopes(cells: dict) -> list[tuple[str, int, int, str]]:
    """``(file, first, last, instance path)`` of every flattened instance whose module is used once."""
    spans: dict[tuple, list[str]] = defaultdict(list)
    for cname, cell in cells.items():
        if cell["type"].lstrip("\\") != "$scopeinfo":
            continue
        attrs = cell.get("attributes", {})
        span = _src_span(attrs.get("module_src"))
        if span is None:
            continue
        path = ".".join(attrs["hdlname"].split()) if attrs.get("hdlname") else cname.lstrip("\\")
        spans[span].append(path)
    # a module instantiated twice has one span and two paths: its lines do not say which
    return sorted(((f, a, b, paths[0]) for (f, a, b), paths in spans.items() if len(paths) == 1),
                  key=lambda s: s[2] - s[1])


def _scope_of(cell: dict, scopes) -> str | None:
    """Instance path of the innermost instance whose module source holds ``cell``'s source line."""
    span = _src_span(cell.get("attributes", {}).get("src"))
    if span is None:
        return None
    f, line, _ = span
    for sf, a, b, path in scopes:      # narrowest span first
        if sf == f and a <= line <= b:
            return path
    return None


def split_netlist(netlist: dict | str | Path, family: str, top: str | None = None,
                  group=None) -> dict:
    """Resources per key of a flat Yosys JSON netlist (``write_json``).

    ``group(name) -> str | None`` maps a hierarchical name to an outer key (e.g. the layer
    it belongs to); the result is ``{outer: {category: resources}}`` with ``outer`` ``"all"``
    when ``group`` is None.
    """
    if not isinstance(netlist, dict):
        netlist = json.loads(Path(netlist).read_text())
    modules = netlist["modules"]
    if top is None:
        tops = [k for k, v in modules.items() if v.get("attributes", {}).get("top")]
        top = tops[0] if tops else next(iter(modules))
    mod = modules[top]
    cells = mod.get("cells", {})
    names_of_bit: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for name, net in mod.get("netnames", {}).items():
        hidden = int(net.get("hide_name", 0))
        for b in net["bits"]:
            if isinstance(b, int):
                names_of_bit[b].append((hidden, name))
    driver: dict[int, str] = {}
    for cname, cell in cells.items():
        dirs = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            if dirs.get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = cname

    scopes = _scopes(cells)

    def best_name(bits, fallback, scope=None):
        cands = sorted(n for b in bits if isinstance(b, int) for n in names_of_bit.get(b, []))
        if scope:
            # names the driving module gives the register; a neighbour's or the parent's
            # name for the same bits describes the stream, not the logic that fills it
            local = [c for c in cands if c[1].lstrip("\\").startswith(scope + ".")]
            if not local:
                return scope + "." + fallback.lstrip("\\").rsplit(".", 1)[-1]
            cands = local
        for hidden, name in cands:
            if classify_name(name):
                return name
        return cands[0][1] if cands else fallback

    def key_of(name):
        cat = classify_name(name) or "rest"
        outer = group(name) if group else "all"
        return (outer or "rest", cat)

    seq_key: dict[str, tuple] = {}
    for cname, cell in cells.items():
        ctype = cell["type"].lstrip("\\$")
        if _is_ff(ctype):
            q = cell["connections"].get("Q", [])
            seq_key[cname] = key_of(best_name(q, cname, _scope_of(cell, scopes)))
        elif ctype in BRAM_CELLS:
            out_bits = [b for p, bits in cell["connections"].items()
                        if cell.get("port_directions", {}).get(p) == "output" for b in bits]
            name = cname if classify_name(cname) else best_name(out_bits, cname)
            seq_key[cname] = key_of(name)

    votes: dict[str, Counter] = defaultdict(Counter)
    for cname, key in seq_key.items():
        cell = cells[cname]
        ctype = cell["type"].lstrip("\\$")
        dirs = cell.get("port_directions", {})
        if _is_ff(ctype):
            start = [b for p in FF_DATA_PORTS for b in cell["connections"].get(p, [])]
        else:
            start = [b for p, bits in cell["connections"].items() if dirs.get(p) == "input" for b in bits]
        stack = [driver[b] for b in start if isinstance(b, int) and b in driver]
        seen = set()
        while stack:
            c = stack.pop()
            if c in seen or c in seq_key:
                continue
            seen.add(c)
            votes[c][key] += 1
            cc = cells[c]
            cdirs = cc.get("port_directions", {})
            for p, bits in cc["connections"].items():
                if cdirs.get(p) == "input":
                    stack.extend(driver[b] for b in bits if isinstance(b, int) and b in driver)

    priority = {c: i for i, c in enumerate(CATEGORIES)}
    counts: dict[tuple, Counter] = defaultdict(Counter)
    for cname, cell in cells.items():
        ctype = cell["type"].lstrip("\\$")
        if ctype == "scopeinfo":      # hierarchy bookkeeping, not hardware
            continue
        if cname in seq_key:
            key = seq_key[cname]
        elif votes.get(cname):
            # The register group most of the cell's fan-out cone feeds; ties go to the
            # earlier category (a LUT shared by a product and a tree register is multiplier logic).
            key = max(votes[cname].items(), key=lambda kv: (kv[1], -priority[kv[0][1]]))[0]
        else:
            key = key_of(cname)
        counts[key][ctype] += 1
    out: dict[str, dict] = {}
    for (outer, cat), cell_counts in counts.items():
        res = resources_from_cells(dict(cell_counts), family)
        out.setdefault(outer, {c: dict.fromkeys(RESOURCE_KEYS, 0) for c in CATEGORIES})
        out[outer][cat] = {k: out[outer][cat][k] + res[k] for k in RESOURCE_KEYS}
    return out
