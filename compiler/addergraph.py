"""Shift-and-add graphs for a constant integer matrix (numpy only).

The constant-weight engine (hw/constmv.py) builds one; the folding pass
(compiler/passes/fold.py) builds the same graph to cost the engine and to record its size
in the plan, so that the plan's adders, adder bits and pipeline depth are the built ones.

1. CSD digits of every weight (the non-adjacent form: fewest nonzero digits).
2. Optional sharing (``cse=True``): a greedy two-term common-subexpression elimination
   across channels, the first stage of da4ml (Sun et al., "da4ml: Distributed Arithmetic
   for Real-time Neural Networks on FPGAs", 2025) and of Hcub-style algorithms (Voronenko
   and Püschel, "Multiplierless multiple constant multiplication", 2007).
3. Per channel a minimum-depth adder tree over its remaining terms.
4. Every node's exact range over the input type's code range, hence its width.
5. Pipeline stages: ``register_every`` adder levels per stage.
"""
from __future__ import annotations

import heapq
import math

import numpy as np

from .types import IntType, signed_bits

__all__ = ["csd_digits", "AdderGraph", "naf_max_digits", "digit_bound"]


def csd_digits(value: int) -> list[tuple[int, int]]:
    """Canonical signed digits of an integer: ``[(shift, ±1), ...]`` with
    ``value = Σ d·2^shift``, no two adjacent shifts nonzero (the non-adjacent form, which
    has the fewest nonzero digits of any signed-digit representation)."""
    v = int(value)
    out, s = [], 0
    while v:
        if v & 1:
            d = 2 - (v & 3)          # +1 when v = 1 (mod 4), -1 when v = 3 (mod 4)
            out.append((s, d))
            v -= d
        v >>= 1
        s += 1
    return out


def _wrap64(v: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement wrap of an int64 array to ``bits`` <= 62."""
    half = np.int64(1) << np.int64(bits - 1)
    return ((v + half) & (2 * half - 1)) - half


class AdderGraph:
    """Shift-and-add graph computing ``y = W @ x`` for a constant integer matrix.

    Nodes ``0 .. K-1`` are the inputs; node ``K + a`` is adder ``a``, whose value is
    ``Σ sign·(value(node) << shift)`` over its one (a negation) or two operands
    ``adders[a]["ops"]`` = ``[(node, shift, sign), ...]``. Channel ``c``'s result is
    ``value(outputs[c][0]) << outputs[c][1]``, or 0 when ``outputs[c]`` is None.

    Parameters
    ----------
    weights : int array (N, K)
    input_type : IntType
    cse : bool
        Greedy two-term sharing across channels (module docstring, step 2).
    register_every : int
        Adder levels per pipeline stage; 0: one combinational stage.
    solver : str
        ``csd`` (steps 1-3 of the module docstring) or ``da4ml``: the shift-and-add graph of
        da4ml's constant-matrix solver (:meth:`_from_da4ml`), sized and pipelined here like
        any other (``cse`` is then ignored).
    """

    SOLVERS = ("csd", "da4ml")

    def __init__(self, weights, input_type: IntType, cse: bool = True, register_every: int = 2,
                 solver: str = "csd"):
        w = np.asarray(weights)
        if w.ndim != 2 or not np.issubdtype(w.dtype, np.integer):
            raise ValueError(f"weights must be an integer (channels, fan_in) array, got {w.dtype} {w.shape}")
        if not isinstance(input_type, IntType):
            raise TypeError(f"input_type must be an IntType, got {input_type!r}")
        if isinstance(register_every, bool) or not isinstance(register_every, int) or register_every < 0:
            raise ValueError(f"register_every must be an int >= 0, got {register_every!r}")
        self.weights = w.astype(np.int64)
        self.channels, self.fan_in = w.shape
        self.input_type = input_type
        self.cse = bool(cse)
        self.register_every = register_every
        if solver not in self.SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(self.SOLVERS)}, got {solver!r}")
        self.solver = solver
        self.adders: list[dict] = []
        self._memo: dict[tuple, int] = {}
        k = self.fan_in
        # coefficient vectors (linear forms over the inputs) of every node
        self._coeff: list[np.ndarray] = [np.eye(1, k, i, dtype=np.int64)[0] for i in range(k)]
        self._level: list[int] = [0] * k

        # 1. CSD terms per channel: {(node, shift): sign}
        terms = [{(i, s): d for i in range(k) if self.weights[c, i] for s, d in csd_digits(self.weights[c, i])}
                 for c in range(self.channels)]
        self.csd_per_channel = [len(t) for t in terms]
        self.nonzero_per_channel = [int(np.count_nonzero(self.weights[c])) for c in range(self.channels)]
        self.shared = 0
        if solver == "da4ml":
            self.outputs: list[tuple[int, int] | None] = self._from_da4ml()
        else:
            # 2. sharing
            if self.cse:
                self._share(terms)
            # 3. trees
            self.outputs = [self._tree(t) for t in terms]
        # 4. widths: the exact range of every node's linear form
        lo_in, hi_in = input_type.min, input_type.max
        self.node_lo, self.node_hi, self.node_bits = [], [], []
        for c in self._coeff:
            a, b = c * lo_in, c * hi_in
            lo, hi = int(np.minimum(a, b).sum()), int(np.maximum(a, b).sum())
            self.node_lo.append(lo)
            self.node_hi.append(hi)
            self.node_bits.append(signed_bits(lo, hi))
        got = self.channel_values_coeff()
        if not np.array_equal(got, self.weights):
            raise AssertionError("adder graph does not compute W @ x (internal error)")
        # 5. stages
        levels = self._level
        self.max_level = max(levels[k:], default=0)
        if register_every == 0:
            self.stage = [1] * len(levels)
            self.stages = 1
        else:
            self.stage = [max(1, math.ceil(l / register_every)) for l in levels]
            self.stages = max(1, math.ceil(self.max_level / register_every))

    # -- construction ------------------------------------------------------------------------
    def _adder(self, ops) -> int:
        """The node computing ``Σ sign·(node << shift)`` (built once per operand tuple)."""
        key = tuple(sorted(ops))
        if key in self._memo:
            return self._memo[key]
        node = self.fan_in + len(self.adders)
        coeff = np.zeros(self.fan_in, dtype=np.int64)
        for n, s, g in key:
            coeff += g * (self._coeff[n] << s)
        self._coeff.append(coeff)
        self._level.append(1 + max(self._level[n] for n, _, _ in key))
        self.adders.append({"node": node, "ops": list(key)})
        self._memo[key] = node
        return node

    def _from_da4ml(self) -> list[tuple[int, int] | None]:
        """The adders of da4ml's solution of ``W @ x`` (``da4ml.trace.comb_trace``, its
        default solver), as this graph's nodes; returns the outputs.

        da4ml (Sun et al. 2025, LGPLv3, an optional dependency: ``pip install da4ml``) keeps
        every buffer value as ``2^e`` times an integer and each adder as ``v0 ± v1·2^d``;
        here a node is the integer and the power of two a shift of its consumers, so every
        adder's operand shifts are >= 0 and its width is its own exact range (step 4).
        Anything but copies, additions, subtractions, identity quantizers (da4ml's trace of
        the input type) and constant zeros is refused.
        """
        try:
            from da4ml.trace import FixedVariableArrayInput, HWConfig, comb_trace
        except ImportError:
            raise ImportError("the da4ml solver needs da4ml: pip install 'accumulus[bench]' (da4ml==0.6.0, LGPLv3)") \
                from None
        it, k = self.input_type, self.fan_in
        inp = FixedVariableArrayInput(k, hwconf=HWConfig(1, -1, -1))
        sign = int(it.signed)
        y = inp.quantize(sign, it.bits - sign, 0) @ np.ascontiguousarray(self.weights.T.astype(np.float64))
        comb = comb_trace(inp, y)
        node_of: list[tuple[int, int] | None] = []        # op index -> (node, e): value = node << e
        for i, op in enumerate(comb.ops):
            if op.opcode == -1:
                node_of.append((int(op.id0), int(comb.inp_shifts[op.id0])))
            elif op.opcode in (0, 1):
                (u0, e0), (u1, e1) = node_of[op.id0], node_of[op.id1]
                a, b = e0, int(op.data) + e1
                m = min(a, b)
                node_of.append((self._adder([(u0, a - m, 1), (u1, b - m, 1 if op.opcode == 0 else -1)]), m))
            elif op.opcode == 3 and op.qint == comb.ops[op.id0].qint:
                node_of.append(node_of[op.id0])            # the input's quantize: the identity here
            elif op.opcode == 5 and int(op.data) == 0:
                node_of.append(None)
            else:
                raise ValueError(f"da4ml op {i} has opcode {op.opcode}, which a constant matrix product does not need")
        outputs = []
        for c in range(self.channels):
            idx = int(comb.out_idxs[c])
            if idx < 0 or node_of[idx] is None or not self.weights[c].any():
                outputs.append(None)
                continue
            node, e = node_of[idx]
            e += int(comb.out_shifts[c])
            if e < 0:
                raise ValueError(f"da4ml output {c} has a negative shift {e}")
            if comb.out_negs[c]:
                node = self._adder([(node, 0, -1)])
            outputs.append((node, e))
        return outputs

    def _pair(self, t1, t2):
        """Pattern key, new-node operands and replacement (shift, sign) of two terms."""
        (n1, s1, g1), (n2, s2, g2) = sorted([t1, t2])
        d, g = s2 - s1, g1 * g2
        ops = [(n1, 0, 1), (n2, d, g)] if d >= 0 else [(n1, -d, 1), (n2, 0, g)]
        return (n1, n2, d, g), ops, min(s1, s2), g1

    def _share(self, terms):
        # occ[key][c]: occurrences (overlapping) of pattern key in channel c
        occ: dict[tuple, dict[int, int]] = {}
        total: dict[tuple, int] = {}
        heap: list = []

        def bump(key, c, by):
            per = occ.setdefault(key, {})
            per[c] = per.get(c, 0) + by
            if not per[c]:
                del per[c]
            total[key] = total.get(key, 0) + by
            if by > 0:
                heapq.heappush(heap, (-total[key], key))

        def touch(c, term, by):
            n, s = term
            for other, g in terms[c].items():
                if other != term:
                    bump(self._pair((n, s, terms[c][term]), (other[0], other[1], g))[0], c, by)

        for c, t in enumerate(terms):
            items = [(n, s, g) for (n, s), g in t.items()]
            for a in range(len(items)):
                for b in range(a + 1, len(items)):
                    bump(self._pair(items[a], items[b])[0], c, 1)
        while heap:
            negc, key = heapq.heappop(heap)
            if total.get(key, 0) != -negc:
                continue                                 # stale entry
            if -negc < 2:
                break
            n1, n2, d, g = key
            node = None
            for c in sorted(occ.get(key, {})):
                t = terms[c]
                for (n, s) in sorted(list(t)):
                    if n != n1 or (n, s) not in t or (n2, s + d) not in t or (n2, s + d) == (n, s):
                        continue
                    g1, g2 = t[(n, s)], t[(n2, s + d)]
                    if g1 * g2 != g:
                        continue
                    _, ops, shift, sign = self._pair((n, s, g1), (n2, s + d, g2))
                    if node is None:
                        node = self._adder(ops)
                        self.shared += 1
                    for term in ((n, s), (n2, s + d)):
                        touch(c, term, -1)
                        del t[term]
                    t[(node, shift)] = sign
                    touch(c, (node, shift), +1)

    def _tree(self, terms: dict) -> tuple[int, int] | None:
        """Minimum-depth tree over ``terms``; returns (node, shift) of a positive result."""
        if not terms:
            return None
        heap = [(self._level[n], n, s, g) for (n, s), g in terms.items()]
        heapq.heapify(heap)
        while len(heap) > 1:
            la, na, sa, ga = heapq.heappop(heap)
            lb, nb, sb, gb = heapq.heappop(heap)
            m = min(sa, sb)
            if ga == gb:       # a + b, or -(a + b)
                ops, sign = [(na, sa - m, 1), (nb, sb - m, 1)], ga
            else:              # the positive one minus the negative one
                ops, sign = [(na, sa - m, ga), (nb, sb - m, gb)], 1
            node = self._adder(ops)
            heapq.heappush(heap, (self._level[node], node, m, sign))
        _, n, s, g = heap[0]
        if g < 0:
            n = self._adder([(n, 0, -1)])
        return n, s

    # -- queries -----------------------------------------------------------------------------
    def channel_values_coeff(self) -> np.ndarray:
        """``(N, K)`` coefficients of every channel's result (must equal the weights)."""
        out = np.zeros((self.channels, self.fan_in), dtype=np.int64)
        for c, o in enumerate(self.outputs):
            if o is not None:
                out[c] = self._coeff[o[0]] << o[1]
        return out

    def coeff(self, node: int) -> np.ndarray:
        return self._coeff[node].copy()

    def level(self, node: int) -> int:
        return self._level[node]

    @property
    def used_inputs(self) -> list[int]:
        used = {n for a in self.adders for n, _, _ in a["ops"] if n < self.fan_in}
        used |= {o[0] for o in self.outputs if o is not None and o[0] < self.fan_in}
        return sorted(used)

    def delays(self) -> dict[int, int]:
        """node -> pipeline registers its value passes through (the accumulator register
        excluded): from its own stage to its latest consumer's."""
        latest: dict[int, int] = {}
        for a in self.adders:
            st = self.stage[a["node"]]
            for n, _, _ in a["ops"]:
                latest[n] = max(latest.get(n, 0), st)
        for o in self.outputs:
            if o is not None:
                latest[o[0]] = max(latest.get(o[0], 0), self.stages)
        return {n: t - self.stage[n] for n, t in latest.items() if t > self.stage[n]}

    def register_bits(self, bits=None) -> int:
        """Pipeline register bits with node widths ``bits`` (default: the exact widths)."""
        bits = self.node_bits if bits is None else bits
        return int(sum(bits[n] * d for n, d in self.delays().items()))

    def consumers(self) -> dict[int, list[tuple[int, int]]]:
        """node -> [(consumer node or -1-channel, shift)]."""
        out: dict[int, list] = {}
        for a in self.adders:
            for n, s, _ in a["ops"]:
                out.setdefault(n, []).append((a["node"], s))
        for c, o in enumerate(self.outputs):
            if o is not None:
                out.setdefault(o[0], []).append((-1 - c, o[1]))
        return out


def naf_max_digits(t: IntType) -> int:
    """The most nonzero CSD digits any value of type ``t`` has (counted up to 12 bits;
    wider: the non-adjacent form of ``|v| < 2^b`` has at most ``b + 1`` digits, no two
    adjacent, so at most ``(b + 2) // 2`` nonzero)."""
    if t.bits <= 12:
        return max(len(csd_digits(v)) for v in range(t.min, t.max + 1))
    return (t.bits + 2) // 2


def digit_bound(acc_bits: int, input_type: IntType, weight_type: IntType, fan_in: int) -> int:
    """The most nonzero CSD digits a channel can have when its exact accumulator width is
    at most ``acc_bits`` (the trained P).

    A channel's exact range spans ``hi - lo = ||w||_1 · (x_max - x_min)`` (each weight adds
    ``|w|·(x_max - x_min)`` to the span), and a ``P``-bit two's-complement accumulator holds a
    span of at most ``2^P - 1``: so ``||w||_1 <= (2^P - 1) / (x_max - x_min)`` (the form of
    A2Q+'s bound, Colbert et al. 2023, here implied by the width itself, for any training).
    A nonzero integer ``w`` has at most ``|w|`` nonzero CSD digits (and at most ``d_max`` of
    its type), so the channel has at most ``min(L1 bound, fan_in · d_max)`` digits; the
    bound is tight when the L1 bound is at most ``fan_in`` (all weights ±1)."""
    span = int(input_type.max) - int(input_type.min)
    l1 = ((1 << int(acc_bits)) - 1) // span if span else 0
    return int(min(l1, int(fan_in) * naf_max_digits(weight_type)))
