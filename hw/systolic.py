"""R x C systolic array for matrix-vector work at batch 1 (DESIGN.md, "Hardware architecture").

Rows are the SIMD reduction lanes, columns are PEs (output channels). Column ``c`` owns a
weight ROM (one word = its ``rows`` weights of one step, synchronous read) whose address
reaches it ``c`` cycles after column 0's: addresses and activations move one register per
hop, so no signal fans out across the array. Each column multiplies lane-wise, reduces the
products through a registered adder tree whose every node has its own width, and
accumulates into a register of the column's own width; all arithmetic wraps. The tree
has a register after the products, after every ``register_every`` levels and at the root.

The columns finish a sum ``c`` cycles apart. Column ``c``'s result register holds its sum
until the column's next sum ends, at least ``sum_len`` steps later, so the results are
read together when the last column finishes; column ``c`` needs an extra
``max(0, cols - c - sum_len)`` delay registers only when ``sum_len < cols``.

Everything advances only when ``en`` is high: a stall freezes the whole array, so the
owner (the MVU) can stall it from back-pressure at any cycle.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from accumulus.compiler.accumulators import exact_range
from accumulus.compiler.types import IntType, signed_bits

from .mac import _check_type, _shape
from .rom import ROM, check_int, lanes_fit, pack_words

__all__ = ["ArraySpec", "SystolicArray", "tree_shape", "exact_tree_bits", "wrap_i64"]


def wrap_i64(v, bits):
    """Vectorised two's-complement wrap of int64 values to ``bits`` (<= 62)."""
    v = np.asarray(v, dtype=np.int64)
    half = np.int64(1) << (np.asarray(bits, dtype=np.int64) - 1)
    return ((v + half) % (2 * half)) - half


def tree_shape(rows: int) -> list[list[tuple[int, int]]]:
    """Adder-tree levels over ``rows`` lanes: level 0 is the products (one lane each); each
    following level adds neighbouring pairs (an odd last node passes through). Each node
    is the half-open lane range ``(a, b)`` it sums."""
    levels = [[(j, j + 1) for j in range(rows)]]
    while len(levels[-1]) > 1:
        prev = levels[-1]
        levels.append([(prev[i][0], prev[min(i + 1, len(prev) - 1)][1]) for i in range(0, len(prev), 2)])
    return levels


def exact_tree_bits(weights, input_type: IntType) -> list[list[int]]:
    """Per level, per node: the smallest two's-complement width holding that node's value over
    every step (row of ``weights``, shape ``(steps, rows)``) and every input code vector."""
    w = np.asarray(weights, dtype=np.int64)
    out = []
    for level in tree_shape(w.shape[1]):
        widths = []
        for (s, e) in level:
            lo, hi = exact_range(w[:, s:e], input_type)       # per step, over every input
            widths.append(signed_bits(int(lo.min()), int(hi.max())))
        out.append(widths)
    return out


class ArraySpec:
    """Parameters and numpy model of a :class:`SystolicArray`.

    Parameters
    ----------
    weights : int array ``(cols, depth, rows)``
        Column ``c``'s ROM: row ``d`` holds the ``rows`` lane weights of step address ``d``.
    weight_type, input_type : IntType
    acc_bits : list of int, one per column
        Accumulator widths.
    sum_len : int
        Steps per sum: the owner guarantees ``first`` on one step and ``last`` exactly
        ``sum_len - 1`` valid steps later (the deskew depends on it).
    tree_bits : per column, per level, per node widths, or None
        Adder-tree widths (see :func:`tree_shape`); default: each node's exact width
        (:func:`exact_tree_bits`) capped at the column's accumulator width.
    register_every : int
        Adder-tree levels per pipeline register (the products and the root are always
        registered): 1 is fastest, 2 halves the tree's flip-flops for one more adder
        in the longest path.
    """

    def __init__(self, weights, weight_type: IntType, input_type: IntType, acc_bits, sum_len: int, tree_bits=None,
                 register_every: int = 2):
        self.weight_type = _check_type("weight_type", weight_type)
        self.input_type = _check_type("input_type", input_type)
        w = np.asarray(weights)
        if w.ndim != 3 or 0 in w.shape:
            raise ValueError(f"weights must be a non-empty (cols, depth, rows) array, got shape {w.shape}")
        if not np.issubdtype(w.dtype, np.integer):
            raise TypeError(f"weights must be integers, got dtype {w.dtype}")
        if not lanes_fit(w, weight_type.bits, weight_type.signed):
            raise ValueError(f"weights span [{w.min()}, {w.max()}], outside weight_type {weight_type}")
        self.weights = w.astype(np.int64)
        self.cols, self.depth, self.rows = w.shape
        acc_bits = list(acc_bits)
        if len(acc_bits) != self.cols:
            raise ValueError(f"acc_bits must have one width per column ({self.cols}), got {len(acc_bits)}")
        self.acc_bits = [check_int(f"acc_bits[{c}]", b) for c, b in enumerate(acc_bits)]
        if max(self.acc_bits) > 62:
            raise ValueError(f"acc_bits must be <= 62, got {max(self.acc_bits)}")
        self.sum_len = check_int("sum_len", sum_len)
        self.levels = len(tree_shape(self.rows)) - 1
        self.register_every = check_int("register_every", register_every)
        if tree_bits is None:
            tree_bits = [[[min(b, self.acc_bits[c]) for b in level]
                          for level in exact_tree_bits(self.weights[c], input_type)] for c in range(self.cols)]
        shape = [len(level) for level in tree_shape(self.rows)]
        if len(tree_bits) != self.cols or any([len(l) for l in col] != shape for col in tree_bits):
            raise ValueError(f"tree_bits must be per column a list of levels with node counts {shape}")
        self.tree_bits = [[[check_int("tree_bits", b) for b in level] for level in col] for col in tree_bits]

    @property
    def latency(self) -> int:
        """Enabled cycles from presenting a sum's last step to ``acc_valid``."""
        return self.cols + 2 + len(self.registered_levels)

    @property
    def registered_levels(self) -> list[int]:
        """Adder-tree levels (1..levels) that end in a register."""
        return [l for l in range(1, self.levels + 1) if l % self.register_every == 0 or l == self.levels]

    @property
    def out_bits(self) -> int:
        return max(self.acc_bits)

    def compute(self, addr, x, valid, first, last) -> np.ndarray:
        """Model of the outputs for a step sequence: one ``(cols,)`` row per valid last step.

        Every product, tree node and accumulator wraps at its width exactly as built."""
        addr, x = np.asarray(addr), np.asarray(x, dtype=np.int64)
        acc = np.zeros(self.cols, dtype=np.int64)
        out = []
        for t in range(len(addr)):
            if not valid[t]:
                continue
            for c in range(self.cols):
                nodes = wrap_i64(self.weights[c, addr[t]] * x[t], self.tree_bits[c][0])
                for level, (spans, bits) in enumerate(zip(tree_shape(self.rows)[1:], self.tree_bits[c][1:])):
                    prev = nodes
                    nodes = np.array([prev[2 * i] + (prev[2 * i + 1] if 2 * i + 1 < len(prev) else 0)
                                      for i in range(len(spans))], dtype=np.int64)
                    nodes = wrap_i64(nodes, bits)
                root = int(nodes[0])
                acc[c] = wrap_i64(root if first[t] else acc[c] + root, self.acc_bits[c])
            if last[t]:
                out.append(acc.copy())
        return np.array(out, dtype=np.int64).reshape(-1, self.cols)

    def create(self) -> "SystolicArray":
        return SystolicArray(self)


class SystolicArray(wiring.Component):
    """The array (see module docstring and :class:`ArraySpec`).

    Members
    -------
    en : In(1)
        Advance the whole array this cycle.
    addr : In(ceil_log2(depth))
        Weight ROM row of the step presented this cycle.
    x : In(rows * input bits)
        The step's activations, lane ``j`` in bits ``[j*w, (j+1)*w)``.
    valid, first, last : In(1)
        The step is real / starts a sum / ends a sum.
    acc_valid : Out(1)
        ``acc`` holds a finished sum of every column (sampled when ``en`` is high).
    acc : Out(ArrayLayout(signed(out_bits), cols))
        Column ``c``'s sum, sign-extended.
    """

    def __init__(self, spec: ArraySpec):
        if not isinstance(spec, ArraySpec):
            raise TypeError(f"spec must be an ArraySpec, got {spec!r}")
        self.spec = spec
        super().__init__({
            "en": In(1), "addr": In(ceil_log2(spec.depth)),
            "x": In(spec.rows * spec.input_type.bits),
            "valid": In(1), "first": In(1), "last": In(1),
            "acc_valid": Out(1),
            "acc": Out(data.ArrayLayout(signed(spec.out_bits), spec.cols)),
        })

    def elaborate(self, platform):
        spec = self.spec
        m = Module()
        en = self.en
        ib = spec.input_type.bits
        wb = spec.weight_type.bits
        shapes = tree_shape(spec.rows)
        registered = set(spec.registered_levels)

        addr_prev = self.addr
        x_prev, flags_prev = self.x, Signal(3)
        m.d.comb += flags_prev.eq(Cat(self.valid, self.first, self.last))
        for c in range(spec.cols):
            rom = ROM(pack_words(spec.weights[c], wb, signed=True), spec.rows * wb)
            m.submodules[f"rom{c}"] = rom
            if c == 0:
                addr_c = addr_prev
            else:
                addr_c = Signal.like(self.addr, name=f"addr{c}")
                with m.If(en):
                    m.d.sync += addr_c.eq(addr_prev)
            m.d.comb += [rom.addr.eq(addr_c), rom.en.eq(en)]
            addr_prev = addr_c

            # activations hop one register per column; flags travel with them
            x_c = Signal(spec.rows * ib, name=f"x{c}")
            f_c = Signal(3, name=f"flags{c}")
            with m.If(en):
                m.d.sync += [x_c.eq(x_prev), f_c.eq(flags_prev)]
            x_prev, flags_prev = x_c, f_c

            # products
            nodes = []
            for j in range(spec.rows):
                w_j = rom.data[j * wb:(j + 1) * wb].as_signed()
                x_j = x_c[j * ib:(j + 1) * ib]
                x_j = x_j.as_signed() if spec.input_type.signed else x_j
                p = Signal(signed(spec.tree_bits[c][0][j]), name=f"c{c}_p{j}")
                with m.If(en):
                    m.d.sync += p.eq(w_j * x_j)
                nodes.append(p)
            f_stage = Signal(3, name=f"c{c}_fp")
            with m.If(en):
                m.d.sync += f_stage.eq(f_c)
            # adder tree, one register per level
            for level in range(1, len(shapes)):
                nxt = []
                for i in range(len(shapes[level])):
                    n = Signal(signed(spec.tree_bits[c][level][i]), name=f"c{c}_l{level}_{i}")
                    value = nodes[2 * i] + nodes[2 * i + 1] if 2 * i + 1 < len(nodes) else nodes[2 * i]
                    if level in registered:
                        with m.If(en):
                            m.d.sync += n.eq(value)
                    else:
                        m.d.comb += n.eq(value)
                    nxt.append(n)
                nodes = nxt
                if level in registered:
                    f_next = Signal(3, name=f"c{c}_fl{level}")
                    with m.If(en):
                        m.d.sync += f_next.eq(f_stage)
                    f_stage = f_next
            root = nodes[0]
            acc = Signal(signed(spec.acc_bits[c]), name=f"acc{c}")
            done = Signal(name=f"done{c}")
            v, first, last = f_stage[0], f_stage[1], f_stage[2]
            # the accumulator restarts on the next sum's first step, so a finished sum moves
            # to a result register that holds it until the column's next sum ends
            result = Signal(signed(spec.acc_bits[c]), name=f"result{c}")
            with m.If(en):
                m.d.sync += done.eq(v & last)
                with m.If(v):
                    m.d.sync += acc.eq(Mux(first, root, acc + root))
                    with m.If(last):
                        m.d.sync += result.eq(Mux(first, root, acc + root))
            # deskew: column c must still show its sum when the last column finishes
            value = result
            for d in range(max(0, spec.cols - c - spec.sum_len)):
                r = Signal.like(acc, name=f"acc{c}_d{d}")
                with m.If(en):
                    m.d.sync += r.eq(value)
                value = r
            m.d.comb += self.acc[c].eq(value)
            if c == spec.cols - 1:
                m.d.comb += self.acc_valid.eq(done)
        return m

