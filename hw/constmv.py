"""Constant-weight matrix-vector engine: one whole input vector per beat in, one output
vector per beat out, every output channel an adder graph over the canonical-signed-digit
(CSD) terms of its integer weights.

The weights are constants of the circuit, so a zero weight, a zero digit, an all-zero
channel and an input no channel reads generate no hardware, a power of two is a wire, and
every other weight costs (digits - 1) adders, fewer where common subexpressions are
shared. This is the constant-matrix-vector (CMVM) structure of hls4ml's latency strategy
and of da4ml (Sun et al., "da4ml: Distributed Arithmetic for Real-time Neural Networks on
FPGAs", 2025); accumulus adds that every adder is exactly as wide as the range of its own
partial sum over the input type's code range, so the accumulator-aware training's bound
(A2Q, A2Q+) becomes a bound on adder digits and adder bits.

Interface (the one of :class:`accumulus.hw.mvu.MVUSpec`, so a top can build either)
------------------------------------------------------------------------------------
``spec = ConstMVSpec(plan, layer, acc_policy="exact", register_every=2, cse=True)``
    ``layer``: a ``matvec`` (or ``conv``, groups 1, fed im2col windows) layer dict.

* ``in_elems`` = K (fan-in: the whole vector in one beat), ``in_width``, ``in_signed``;
* ``out_elems`` = N (all channels in one beat, natural order), ``out_width``,
  ``out_signed``: the requant's ``out_type``, or with ``requant`` None the plan type of the
  layer output (accumulators sign-extended to it);
* ``fold_in = fold_out = 1``, ``beat_interval = cycles_per_frame = 1``;
* ``latency``: cycles from an input handshake to that vector's output being valid (input
  every cycle, no stall): ``pipeline_depth`` (the adder graph and its output register)
  plus the requantizer's latency;
* ``acc_bits``: per channel, the width of its accumulator register under the policy
  (``exact``: the plan's exact width); ``tree_bits``: per adder of the graph its width;
  ``threshold_bits``: per channel, as the requantizer stores them;
* ``accumulators(x)``: the numpy model of the adder graph, node by node at each node's
  width; ``compute(x)``: then the requant; equal to ``compiler.golden`` under ``exact``,
  ``datatype`` and ``fixed:K``;
* ``report()``: the graph's size (adders, adder bits, register bits, pipeline depth,
  nonzero weights, CSD digits per channel);
* ``create()`` -> :class:`ConstMV`, ports ``i``: ``In(stream.Signature(unsigned(K *
  in_width)))`` (element ``k`` in bits ``[k*in_width, (k+1)*in_width)``) and ``o``:
  ``Out(stream.Signature(unsigned(N * out_width)))`` (channel ``c`` in bits
  ``[c*out_width, (c+1)*out_width)``).

Both streams follow ``amaranth.lib.stream`` rules; as in the MVU, one enable moves every
pipeline register at once and drops when the output register is full and not taken, so a
stall holds the pipeline and no vector is lost or duplicated.

Inside
------
Steps 1-5 build :class:`accumulus.compiler.addergraph.AdderGraph` (numpy only, so that the
folding pass costs and records the same graph in the plan); this module sizes it under the
accumulator policy and turns it into gates.

1. CSD digits of every weight (the non-adjacent form: fewest nonzero digits).
2. Optional sharing (``cse=True``): a greedy two-term common-subexpression elimination
   across channels, the first stage of da4ml and of Hcub-style algorithms (Voronenko and
   Püschel, "Multiplierless multiple constant multiplication", 2007): the signed digit
   pair ``±x_i·2^a ± x_j·2^b`` that occurs most often over all channels (by relative
   shift and sign) becomes one adder, its occurrences are replaced by the new term, and
   this repeats while some pair occurs at least twice.
3. Per channel an adder tree over its remaining terms, combining the two operands of
   lowest adder level first (a minimum-depth tree). Identical adders are built once.
   Negative terms become subtractions; only a channel whose every term is negative ends
   in a negation.
4. Widths: every node's value is a linear form ``Σ_k c_k·x_k`` of the inputs with integer
   coefficients ``c_k``; its exact range over independent inputs in ``[min, max]`` is
   ``[Σ min(c_k·min, c_k·max), Σ max(...)]`` (each end is reached by an input vector, so
   the width is neither too small nor larger than needed), and it is built at the
   smallest two's-complement width holding that range. Common low zero bits are shifts
   (wires), never adder bits.
5. Pipeline: adder level ``l`` (inputs are level 0) is computed in stage ``ceil(l / L)``
   for ``L = register_every``; a value used in a later stage passes through one register
   per stage boundary; every channel's result enters its accumulator register at the end
   of the last stage. ``L = 0``: one combinational graph and the output register.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Signal, signed
from amaranth.hdl import unsigned as unsigned_shape
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.accumulators import exact_bits
from accumulus.compiler.addergraph import AdderGraph, csd_digits, _wrap64
from accumulus.compiler.plan import Plan

from .mvu import MacLayerSpec

__all__ = ["csd_digits", "AdderGraph", "ConstMVSpec", "ConstMV"]


class ConstMVSpec(MacLayerSpec):
    """Parameters, widths, timing and numpy model of a constant-weight engine (see the
    module docstring for the interface).

    Parameters
    ----------
    plan : Plan
    layer : dict
        A ``matvec`` layer (or a ``conv`` layer with groups 1, fed im2col windows).
    acc_policy : str
        ``exact`` (every adder at its exact width), ``datatype`` / ``fixed:K`` (every adder
        and accumulator at that width, as FINN and hls4ml type the reduction), or
        ``exact-minus:D`` (each accumulator D bits below exact and every adder capped at
        what its consumers keep: deliberately wraps).
    register_every : int
        Adder levels per pipeline stage (0: combinational graph + output register).
    cse : bool
        Share two-term subexpressions across channels.
    solver : str
        ``csd`` (this module's steps 1-3) or ``da4ml`` (da4ml's constant-matrix solver,
        :meth:`accumulus.compiler.addergraph.AdderGraph._from_da4ml`).
    keep_adders : bool
        Mark every adder's output wire ``(* keep *)`` (default). Without it Yosys'
        ``alumacc`` merges chains of two-operand adders within a pipeline stage into
        multi-operand ``$macc`` cells, which ``synth_ecp5`` maps to LUT4 compressor trees
        instead of one carry chain per adder: 26% more LUTs on digits-mlp's layers
        (benchmarks/results/da4ml_peer.json, ``const_exact`` vs ``const_exact_keep``).
    threshold_search : str
        Threshold requant form; a one-vector-per-cycle engine needs ``parallel`` or
        ``linear`` (``auto`` picks ``linear`` where every channel has an exact linear form,
        hw/requant.py).
    """

    ENGINE = "constant-weight engine"

    def __init__(self, plan: Plan, layer: dict, acc_policy: str = "exact", register_every: int = 2,
                 cse: bool = True, threshold_search: str = "auto", keep_adders: bool = True,
                 solver: str = "csd"):
        policy_arg = self._load_layer(plan, layer, acc_policy)
        name, n = self.name, self.channels
        if isinstance(register_every, bool) or not isinstance(register_every, int) or register_every < 0:
            raise ValueError(f"layer '{name}': register_every must be an int >= 0, got {register_every!r}")
        self.register_every = register_every
        self.keep_adders = bool(keep_adders)

        self.graph = g = AdderGraph(self.weights, self.input_type, cse=cse, register_every=register_every,
                                    solver=solver)

        # -- widths under the policy --------------------------------------------------------
        exact = [int(b) for b in exact_bits(self.weights, self.input_type)]
        self.exact_bits = exact
        plan_exact = layer.get("acc", {}).get("bits", {}).get("exact")
        if plan_exact is not None and [int(b) for b in plan_exact] != exact:
            raise ValueError(f"layer '{name}': acc.bits.exact in the plan differs from the weights' exact widths; "
                             "re-run 'accumulus compile'")
        if self.policy == "exact":
            acc_bits = list(exact)
        elif self.policy == "datatype":
            acc_bits = [int(layer["acc"]["bits"]["datatype"])] * n
        elif self.policy == "fixed":
            acc_bits = [policy_arg] * n
            if policy_arg < max(exact):
                raise ValueError(
                    f"layer '{name}': acc_policy {acc_policy!r} is narrower than the exact width {max(exact)}; "
                    "use exact-minus:D to build a deliberately wrapping design")
        else:
            acc_bits = [b - policy_arg for b in exact]
            if min(acc_bits) < 1:
                raise ValueError(f"layer '{name}': acc_policy {acc_policy!r} leaves a channel under 1 bit")
        if self.policy in ("datatype", "fixed") and acc_bits[0] < max(exact):
            raise ValueError(f"layer '{name}': datatype width {acc_bits[0]} is below the exact width {max(exact)}")
        if max(acc_bits) > 62:
            raise ValueError(f"layer '{name}': accumulator width {max(acc_bits)} > 62 is not supported")
        self.acc_bits = acc_bits
        self.bits = self._node_widths()
        self.tree_bits = [self.bits[a["node"]] for a in g.adders]

        # -- output ---------------------------------------------------------------------------
        # The linear threshold form (hw/requant.py) is exact on the accumulators' exact range,
        # which every policy but exact-minus (whose accumulators wrap) keeps them in.
        from accumulus.compiler.accumulators import exact_range

        rng = exact_range(self.weights, self.input_type) if self.policy != "exact-minus" else None
        self._setup_output(n, None, 1, threshold_search, max(exact), acc_range=rng)
        self.channel_order = np.arange(n)
        self.direct_order = True

    def _node_widths(self) -> list[int]:
        """Built width of every node (inputs: their two's-complement width)."""
        g = self.graph
        k = g.fan_in
        exact = list(g.node_bits)
        if self.policy == "exact":
            return exact
        if self.policy in ("datatype", "fixed"):
            return exact[:k] + [max(b, self.acc_bits[0]) for b in exact[k:]]
        # exact-minus: a node need not be wider than what its widest consumer keeps of it
        # (two's-complement sums are exact modulo 2^width), never wider than exact
        need = [0] * len(exact)
        for c, o in enumerate(g.outputs):
            if o is not None:
                need[o[0]] = max(need[o[0]], self.acc_bits[c] - o[1])
        for a in reversed(g.adders):
            me = a["node"]
            width = max(1, min(exact[me], need[me]))
            need[me] = width
            for n, s, _ in a["ops"]:
                need[n] = max(need[n], width - s)
        return exact[:k] + [need[a["node"]] for a in g.adders]

    # -- interface properties ---------------------------------------------------------------
    in_elems = property(lambda self: self.fan_in)
    out_elems = property(lambda self: self.channels)
    fold_in = fold_out = 1
    beat_interval = 1
    pe = property(lambda self: self.channels)
    simd = property(lambda self: self.fan_in)

    @property
    def cycles_per_frame(self) -> int:
        return max(1, 1 if self.requant is None else self.requant.cycles_per_beat)

    @property
    def pipeline_depth(self) -> int:
        """Registers from the input to the accumulators (the last is the output register)."""
        return self.graph.stages

    @property
    def latency(self) -> int:
        return self.pipeline_depth + self.requant_latency

    @property
    def macs_per_cycle(self) -> int:
        return self.channels * self.fan_in

    # -- model -------------------------------------------------------------------------------
    def node_values(self, x) -> list[np.ndarray]:
        """Value of every node of the graph for ``(B, K)`` inputs, each wrapped at its built width."""
        x = self._check_x(x)
        g = self.graph
        vals = [x[:, i] for i in range(g.fan_in)]
        for a in g.adders:
            v = np.zeros(x.shape[0], dtype=np.int64)
            for n, s, sign in a["ops"]:
                v = v + sign * (vals[n] << np.int64(s))
            vals.append(_wrap64(v, self.bits[a["node"]]))
        return vals

    def accumulators(self, x) -> np.ndarray:
        """``(B, N)`` accumulators: the adder graph evaluated node by node as built."""
        vals = self.node_values(x)
        b = vals[0].shape[0] if vals else np.asarray(x).shape[0]
        acc = np.zeros((b, self.channels), dtype=np.int64)
        for c, o in enumerate(self.graph.outputs):
            if o is not None:
                acc[:, c] = _wrap64(vals[o[0]] << np.int64(o[1]), self.acc_bits[c])
        return acc

    model = MacLayerSpec.compute

    def report(self) -> dict:
        """Size of the adder graph (JSON-able)."""
        g = self.graph
        k = g.fan_in
        regs = g.register_bits(self.bits)
        acc_regs = sum(b for c, b in enumerate(self.acc_bits) if g.outputs[c] is not None)
        return {
            "engine": "const",
            "adders": len(g.adders),
            "adder_bits": int(sum(self.tree_bits)),
            "negations": sum(1 for a in g.adders if len(a["ops"]) == 1),
            "shared_subexpressions": g.shared,
            "solver": g.solver,
            "adder_levels": g.max_level,
            "register_every": self.register_every,
            "keep_adders": self.keep_adders,
            "pipeline_depth": self.pipeline_depth,
            "pipeline_register_bits": int(regs),
            "acc_register_bits": int(acc_regs),
            "nonzero_weights": int(sum(g.nonzero_per_channel)),
            "csd_digits": int(sum(g.csd_per_channel)),
            "nonzero_weights_per_channel": g.nonzero_per_channel,
            "csd_digits_per_channel": g.csd_per_channel,
            "zero_channels": [c for c, o in enumerate(g.outputs) if o is None],
            "unused_inputs": sorted(set(range(k)) - set(g.used_inputs)),
            "acc_bits": list(self.acc_bits),
            "acc_policy": self.acc_policy,
            "requant_form": None if self.requant is None else (self.requant.search or self.requant.kind),
            "requant_adder_bits": 0 if self.requant is None else self.requant.linear_adder_bits,
            "requant_q_bits": 0 if self.requant is None or not self.requant.linear else int(
                sum(c["q_bits"] for c in self.requant.linear_cost)),
        }

    def create(self) -> "ConstMV":
        return ConstMV(self)


class ConstMV(wiring.Component):
    """The constant-weight engine (see the module docstring for ports and packing).

    Members
    -------
    i : In(stream.Signature(unsigned(in_elems * in_width)))
    o : Out(stream.Signature(unsigned(out_elems * out_width)))
    """

    def __init__(self, spec: ConstMVSpec):
        if not isinstance(spec, ConstMVSpec):
            raise TypeError(f"spec must be a ConstMVSpec, got {spec!r}")
        self.spec = spec
        super().__init__({
            "i": In(stream.Signature(unsigned_shape(spec.in_elems * spec.in_width))),
            "o": Out(stream.Signature(unsigned_shape(spec.out_elems * spec.out_width))),
        })

    def elaborate(self, platform):
        spec, g = self.spec, self.spec.graph
        m = Module()
        k, depth = g.fan_in, g.stages

        acc_valid, acc_ready, en = Signal(), Signal(), Signal()
        m.d.comb += [en.eq(~acc_valid | acc_ready), self.i.ready.eq(en)]
        valid = self.i.valid
        for t in range(1, depth + 1):
            v = Signal(name=f"valid{t}")
            with m.If(en):
                m.d.sync += v.eq(valid)
            valid = v
        m.d.comb += acc_valid.eq(valid)

        # value[(node, stage)]: the node's value as seen in that stage
        value: dict[tuple[int, int], object] = {}
        iw = spec.in_width
        for i in g.used_inputs:
            # unsigned inputs are zero-extended into signed, so every node is signed
            x = Signal(signed(spec.bits[i]), name=f"x{i}")
            field = self.i.payload[i * iw:(i + 1) * iw]
            m.d.comb += x.eq(field.as_signed() if spec.in_signed else field)
            value[(i, 1)] = x

        def at(node, t):
            if (node, t) not in value:
                prev = at(node, t - 1)
                r = Signal(signed(spec.bits[node]), name=f"n{node}_s{t}")
                with m.If(en):
                    m.d.sync += r.eq(prev)
                value[(node, t)] = r
            return value[(node, t)]

        for a in g.adders:
            node, t = a["node"], g.stage[a["node"]]
            terms = []
            for n, s, sign in a["ops"]:
                op = at(n, t)
                terms.append((op << s if s else op, sign))
            if len(terms) == 1:
                expr = -terms[0][0]
            else:
                (ta, ga), (tb, gb) = terms
                if ga > 0 and gb > 0:
                    expr = ta + tb
                elif ga > 0:
                    expr = ta - tb
                else:
                    expr = tb - ta
            # the exact range fits this width, so the truncation drops only copies of the sign
            sig = Signal(signed(spec.bits[node]), name=f"n{node}",
                         attrs={"keep": 1} if spec.keep_adders else {})
            m.d.comb += sig.eq(expr)
            value[(node, t)] = sig

        amax = max(spec.acc_bits)
        acc_payload = Signal(data.ArrayLayout(signed(amax), spec.channels))
        for c, o in enumerate(g.outputs):
            if o is None:
                m.d.comb += acc_payload[c].eq(Const(0, signed(amax)))
                continue
            r = Signal(signed(spec.acc_bits[c]), name=f"acc{c}")
            src = at(o[0], depth)
            with m.If(en):
                m.d.sync += r.eq(src << o[1] if o[1] else src)
            m.d.comb += acc_payload[c].eq(r)                # sign-extends

        ow = spec.out_width
        if spec.requant is not None:
            m.submodules.requant = rq = spec.requant.create()
            m.d.comb += [rq.i.valid.eq(acc_valid), rq.i.payload.eq(acc_payload), acc_ready.eq(rq.i.ready)]
            wiring.connect(m, rq.o, wiring.flipped(self.o))
        else:
            lanes = [Signal(signed(ow), name=f"out{c}") for c in range(spec.channels)]
            m.d.comb += [lane.eq(acc_payload[c]) for c, lane in enumerate(lanes)]
            m.d.comb += [self.o.valid.eq(acc_valid), acc_ready.eq(self.o.ready), self.o.payload.eq(Cat(lanes))]
        return m
