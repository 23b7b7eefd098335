"""Matrix-vector unit (MVU): the per-layer engine of a ``matvec`` layer and the MAC part of a
``conv`` layer, built on the systolic array of :mod:`accumulus.hw.systolic`.

Interface (fixed; ``hw/top.py`` and ``hw/swg.py`` build on it)
---------------------------------------------------------------
``spec = MVUSpec(plan, layer, acc_policy="exact", threshold_search="auto")``
    ``plan``: :class:`accumulus.compiler.plan.Plan`; ``layer``: one of its ``matvec``/``conv``
    layer dicts (``groups`` must be 1); ``acc_policy``: ``"exact" | "datatype" | "fixed:K" |
    "exact-minus:D"``. Every parameter is validated when the spec is made (``TypeError`` /
    ``ValueError`` naming the parameter and the layer).

Properties of the spec:

* ``in_elems`` = SIMD, ``in_width`` = input code bits (``layer["input_type"]``), ``in_signed``;
* ``out_elems`` = PE, ``out_width``, ``out_signed``: the requant's ``out_type`` or, when
  ``layer["requant"]`` is None, the plan's type of the layer's output tensor (each PE's
  accumulator sign-extended to it);
* ``acc_bits``: list of PE ints, the accumulator built for each PE under the policy (under
  ``exact`` equal to ``folding.pe_acc_bits``); ``tree_bits``: per PE, per adder-tree level,
  the width of each node; ``threshold_bits``: per PE, the stored threshold width;
* ``fold_in`` = K/SIMD (input beats per vector), ``fold_out`` = N/PE (output beats per vector);
* ``cycles_per_frame`` = ``fold_out * fold_in``: steady-state cycles per input vector with
  input offered every cycle and no back-pressure (a conv layer runs this per output pixel);
  ``fold_out * beat_interval`` in general, when a forced binary threshold search is slower
  than ``fold_in`` cycles per fold (``threshold_search="auto"`` never is);
* ``latency``: cycles from accepting the first input beat of a vector to the first output
  beat of that vector being valid (input every cycle, no back-pressure);
* ``compute(x)``: numpy model, ``x`` int array ``(B, K)`` of input codes (a conv layer:
  the im2col windows, ``(B, K)``) -> ``(B, N)`` outputs in natural channel order. Under
  ``exact``/``datatype``/``fixed:K`` it equals ``compiler.golden``'s result for the layer;
  under ``exact-minus:D`` it models the deliberate wrap of the narrowed accumulators;
* ``create()`` -> :class:`MVU`.

``MVU(spec)`` is a :class:`amaranth.lib.wiring.Component`, sync domain, with ports

* ``i = In(stream.Signature(unsigned(in_elems * in_width)))``: one input vector of K
  elements arrives as K/SIMD beats in stream order; beat ``s`` carries elements
  ``x[s*SIMD : (s+1)*SIMD]``, element ``j`` in bits ``[j*in_width, (j+1)*in_width)``.
  For conv, the sliding-window generator delivers each output pixel's window
  (``kh*kw*C`` elements in ``(kh, kw, c)`` order) as K/SIMD beats.
* ``o = Out(stream.Signature(unsigned(out_elems * out_width)))``: per input vector,
  N/PE beats in **natural channel order**: beat ``f`` carries channels
  ``f*PE .. f*PE+PE-1``, element ``p`` (channel ``f*PE+p``) in bits
  ``[p*out_width, (p+1)*out_width)``, two's complement when ``out_signed``.
  The folding's ``channel_order`` (PE ``p`` computes channels ``channel_order[p::PE]``) is
  undone inside the engine: by a lane permutation when every fold's channels are a
  contiguous natural block, otherwise by a double-buffered output buffer (N elements each).

Both streams follow ``amaranth.lib.stream`` rules (a beat moves when ``valid & ready``);
the engine tolerates input gaps and output stalls at any cycle. There is no ``last``:
vector boundaries are implied by the beat counts (K/SIMD in, N/PE out).

More for build reports: ``spec.exact_pe_bits`` (exact width per PE from the weights),
``spec.channel_order``, ``spec.direct_order`` (True: no output buffer),
``spec.requant.search`` (``"binary"`` / ``"parallel"``; None for multshift),
``spec.beat_interval``, ``spec.macs_per_cycle``; the component's ``mac_step`` signal is
high in every cycle a step of PE x SIMD MACs enters the array (benchmarks).

Inside
------
* Sequencer: fold ``f`` = 0 reads the input stream (and writes the step into an input
  buffer of K/SIMD words, a synchronous-read memory); folds 1..N/PE-1 replay the buffer,
  so the input is stalled during them, as in FINN's MVAU.
* :class:`accumulus.hw.systolic.SystolicArray`, SIMD rows x PE columns. The weight ROM is
  split per PE column: column ``p``'s ROM (synchronous read, so block RAM) holds at row
  ``f*(K/SIMD) + s`` the SIMD weights of channel ``channel_order[p + PE*f]`` for step
  ``s``; together the columns' rows are the PE*SIMD weights of one fold step.
* Accumulator beat register; all of the above stall together when it is full and not taken.
* Requant (:mod:`accumulus.hw.requant`) per PE lane, then :class:`Reorder`.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accumulus.compiler.accumulators import exact_bits
from accumulus.compiler.plan import Plan
from accumulus.compiler.types import IntType

from .mac import wrap
from .requant import RequantSpec
from .rom import check_int, lanes_fit
from .systolic import ArraySpec, SystolicArray, exact_tree_bits

__all__ = ["MVUSpec", "MVU", "Reorder", "parse_acc_policy", "ACC_POLICIES"]

ACC_POLICIES = ("exact", "datatype", "fixed:K", "exact-minus:D")


def parse_acc_policy(policy) -> tuple[str, int | None]:
    """``"exact" | "datatype" | "fixed:K" | "exact-minus:D"`` -> (kind, K or D)."""
    if not isinstance(policy, str):
        raise TypeError(f"acc_policy must be a string ({' | '.join(ACC_POLICIES)}), got {policy!r}")
    kind, _, arg = policy.partition(":")
    if kind in ("exact", "datatype") and not arg:
        return kind, None
    if kind in ("fixed", "exact-minus") and arg.isdigit() and int(arg) >= 1:
        return kind, int(arg)
    raise ValueError(f"acc_policy must be one of {' | '.join(ACC_POLICIES)} (K, D >= 1), got {policy!r}")


class MacLayerSpec:
    """What every engine of a ``matvec``/``conv`` plan layer shares: the layer's checks and
    integer weights, the output side (requant or raw accumulators) and the stream-type
    properties. Subclasses: :class:`MVUSpec` (folded ROM engine) and
    :class:`accumulus.hw.constmv.ConstMVSpec` (constant-weight adder graph)."""

    ENGINE = "engine"

    def _load_layer(self, plan: Plan, layer: dict, acc_policy: str):
        """Checks ``layer`` and sets name, plan, layer, policy, weights, types, channels, fan_in.
        Returns the policy's argument (K of fixed:K, D of exact-minus:D)."""
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be an accumulus.compiler.plan.Plan, got {type(plan).__name__}")
        if not isinstance(layer, dict) or "name" not in layer:
            raise TypeError(f"layer must be a plan layer dict, got {layer!r}")
        name = self.name = layer["name"]
        if layer.get("kind") not in ("matvec", "conv"):
            raise ValueError(f"layer '{name}': kind must be 'matvec' or 'conv', got {layer.get('kind')!r}")
        self.plan, self.layer = plan, layer
        self.policy, policy_arg = parse_acc_policy(acc_policy)
        self.acc_policy = acc_policy

        w = np.asarray(plan.array(layer["weight"]))
        if not np.issubdtype(w.dtype, np.integer):
            raise TypeError(f"layer '{name}': weights must be integers, got dtype {w.dtype}")
        self.weight_type = IntType.from_json(layer["weight_type"])
        self.input_type = IntType.from_json(layer["input_type"])
        n, k = check_int("channels", layer["channels"]), check_int("fan_in", layer["fan_in"])
        if w.shape != (n, k):
            raise ValueError(f"layer '{name}': weight shape {w.shape} is not (channels={n}, fan_in={k})")
        if not lanes_fit(w, self.weight_type.bits, self.weight_type.signed):
            raise ValueError(f"layer '{name}': weights span [{w.min()}, {w.max()}], outside weight_type {self.weight_type}")
        self.weights = w.astype(np.int64)
        self.channels, self.fan_in = n, k
        conv = layer.get("conv")
        if conv is not None and conv.get("groups", 1) != 1:
            raise ValueError(f"layer '{name}': groups={conv['groups']} is not supported by the {self.ENGINE} "
                             "(groups must be 1)")
        return policy_arg

    def _setup_output(self, lanes: int, order, beat_interval: int, threshold_search: str, exact_max: int,
                      acc_range=None):
        """``requant`` (its lanes, channel order and beat interval), ``out_type``, ``threshold_bits``.
        ``acc_range``: the channels' accumulator ranges, for the ``linear`` threshold form."""
        layer, name = self.layer, self.name
        if layer.get("requant") is not None:
            self.requant = RequantSpec(self.plan, layer["requant"], lanes, self.acc_bits, order, threshold_search,
                                       beat_interval=beat_interval, name=name, acc_range=acc_range)
            if self.requant.channels != self.channels:
                raise ValueError(f"layer '{name}': requant has {self.requant.channels} channels, "
                                 f"layer has {self.channels}")
            self.out_type = self.requant.out_type
            self.threshold_bits = self.requant.threshold_bits
        else:
            self.requant = None
            self.out_type = self.plan.tensor_type(layer["output"])
            self.threshold_bits = []
            # the accumulators' values lie in their exact range whatever the policy builds
            if self.out_type.bits < exact_max or not self.out_type.signed:
                raise ValueError(f"layer '{name}': output type {self.out_type} cannot hold the accumulators "
                                 f"({exact_max}-bit signed)")

    # -- interface properties ---------------------------------------------------------------
    @property
    def in_width(self) -> int:
        return self.input_type.bits

    @property
    def in_signed(self) -> bool:
        return self.input_type.signed

    @property
    def out_width(self) -> int:
        return self.out_type.bits

    @property
    def out_signed(self) -> bool:
        return self.out_type.signed

    @property
    def requant_latency(self) -> int:
        return 0 if self.requant is None else self.requant.latency

    # -- model -------------------------------------------------------------------------------
    def _check_x(self, x) -> np.ndarray:
        """``(B, fan_in)`` input codes inside ``input_type``, as int64."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.fan_in:
            raise ValueError(f"layer '{self.name}': x must be (B, fan_in={self.fan_in}), got shape {x.shape}")
        if not lanes_fit(x, self.input_type.bits, self.input_type.signed):
            raise ValueError(f"layer '{self.name}': x leaves input_type {self.input_type}")
        return x.astype(np.int64)

    def compute(self, x) -> np.ndarray:
        """``(B, K)`` input codes -> ``(B, N)`` outputs in natural channel order."""
        acc = self.accumulators(x)
        return acc if self.requant is None else self.requant.compute(acc)


class MVUSpec(MacLayerSpec):
    """Parameters, widths, timing and numpy model of one MAC layer's engine (see the module
    docstring for the interface).

    Parameters
    ----------
    plan : Plan
    layer : dict
        A ``matvec`` or ``conv`` layer of ``plan``.
    acc_policy : str
        ``exact`` (the plan's per-PE exact widths; every adder-tree node at its own exact
        width), ``datatype`` (hls4ml's width everywhere), ``fixed:K`` (K bits; K below a PE's
        exact width is an error) or ``exact-minus:D`` (D bits below exact: deliberately
        wraps, for showing that the exact width is needed).
    threshold_search : "auto" | "binary" | "parallel"
        Threshold requant form (:class:`accumulus.hw.requant.RequantSpec`).
    register_every : int
        Adder-tree levels per pipeline register (:class:`accumulus.hw.systolic.ArraySpec`).
    """

    ENGINE = "MVU"

    def __init__(self, plan: Plan, layer: dict, acc_policy: str = "exact", threshold_search: str = "auto",
                 register_every: int = 2):
        policy_arg = self._load_layer(plan, layer, acc_policy)
        name, n, k = self.name, self.channels, self.fan_in

        fold = layer["folding"]
        self.pe = check_int(f"layer '{name}' folding.pe", fold["pe"])
        self.simd = check_int(f"layer '{name}' folding.simd", fold["simd"])
        if n % self.pe:
            raise ValueError(f"layer '{name}': folding.pe={self.pe} does not divide channels={n}")
        if k % self.simd:
            raise ValueError(f"layer '{name}': folding.simd={self.simd} does not divide fan_in={k}")
        order = np.asarray(fold["channel_order"], dtype=np.int64)
        if sorted(order.tolist()) != list(range(n)):
            raise ValueError(f"layer '{name}': folding.channel_order is not a permutation of 0..{n - 1}")
        self.channel_order = order
        self.fold_in, self.fold_out = k // self.simd, n // self.pe
        plan_pe_bits = [int(b) for b in fold["pe_acc_bits"]]
        if len(plan_pe_bits) != self.pe:
            raise ValueError(f"layer '{name}': folding.pe_acc_bits has {len(plan_pe_bits)} entries, pe={self.pe}")

        # -- widths under the policy -----------------------------------------------------
        exact = exact_bits(self.weights, self.input_type)
        self.exact_pe_bits = [int(exact[order[p::self.pe]].max()) for p in range(self.pe)]
        for p in range(self.pe):
            if plan_pe_bits[p] < self.exact_pe_bits[p]:
                raise ValueError(
                    f"layer '{name}': folding.pe_acc_bits[{p}]={plan_pe_bits[p]} is below the exact width "
                    f"{self.exact_pe_bits[p]} of its channels; re-run 'accumulus compile'")
        cols = [self.weights[order[p::self.pe]].reshape(self.fold_out * self.fold_in, self.simd)
                for p in range(self.pe)]
        exact_tree = [exact_tree_bits(c, self.input_type) for c in cols]
        natural_product = self.weight_type.twos_complement_bits + self.input_type.twos_complement_bits
        if self.policy == "exact":
            acc_bits = plan_pe_bits
        elif self.policy == "datatype":
            acc_bits = [int(layer["acc"]["bits"]["datatype"])] * self.pe
        elif self.policy == "fixed":
            acc_bits = [policy_arg] * self.pe
            if policy_arg < max(self.exact_pe_bits):
                raise ValueError(
                    f"layer '{name}': acc_policy {acc_policy!r} is narrower than the exact width "
                    f"{max(self.exact_pe_bits)}; use exact-minus:D to build a deliberately wrapping design")
        else:
            acc_bits = [b - policy_arg for b in plan_pe_bits]
            if min(acc_bits) < 2:
                raise ValueError(f"layer '{name}': acc_policy {acc_policy!r} leaves a PE under 2 bits")
        if max(acc_bits) > 62:
            raise ValueError(f"layer '{name}': accumulator width {max(acc_bits)} > 62 is not supported")
        self.acc_bits = acc_bits
        tree = []
        for p in range(self.pe):
            levels = []
            for li, level in enumerate(exact_tree[p]):
                if self.policy in ("exact", "exact-minus"):
                    levels.append([min(b, acc_bits[p]) for b in level])
                elif li == 0:
                    levels.append([min(natural_product, acc_bits[p])] * len(level))
                else:
                    levels.append([acc_bits[p]] * len(level))
            tree.append(levels)
        self.tree_bits = tree
        self.array_spec = ArraySpec(np.stack(cols), self.weight_type, self.input_type, acc_bits,
                                    sum_len=self.fold_in, tree_bits=tree, register_every=register_every)

        # -- output ------------------------------------------------------------------------
        self._setup_output(self.pe, order, self.fold_in, threshold_search, max(self.exact_pe_bits))
        self.direct_order = all(
            sorted(order[f * self.pe:(f + 1) * self.pe].tolist()) == list(range(f * self.pe, (f + 1) * self.pe))
            for f in range(self.fold_out))

    # -- interface properties ---------------------------------------------------------------
    in_elems = property(lambda self: self.simd)
    out_elems = property(lambda self: self.pe)

    @property
    def beat_interval(self) -> int:
        """Steady-state cycles between output folds: K/SIMD, unless the requant is slower."""
        slowest = 1 if self.requant is None else self.requant.cycles_per_beat
        return max(self.fold_in, slowest)

    @property
    def cycles_per_frame(self) -> int:
        return self.fold_out * self.beat_interval

    @property
    def latency(self) -> int:
        # the first fold's last step is issued at fold_in - 1; stage R (1), the array,
        # the accumulator register (1), then the requant; a reordering buffer waits for
        # the last fold and adds one cycle
        first_acc = self.fold_in + self.array_spec.latency + 1
        if self.direct_order:
            return first_acc + self.requant_latency
        return first_acc + (self.fold_out - 1) * self.beat_interval + self.requant_latency + 1

    @property
    def macs_per_cycle(self) -> int:
        return self.pe * self.simd

    # -- model -------------------------------------------------------------------------------
    def accumulators(self, x) -> np.ndarray:
        """``(B, N)`` accumulators as built: exact sums, wrapped to each PE's width."""
        acc = self._check_x(x) @ self.weights.T
        bits = np.empty(self.channels, dtype=np.int64)
        for p in range(self.pe):
            bits[self.channel_order[p::self.pe]] = self.acc_bits[p]
        return np.asarray(wrap(acc, np.broadcast_to(bits, acc.shape)), dtype=np.int64)

    def create(self) -> "MVU":
        return MVU(self)


class Reorder(wiring.Component):
    """Restores natural channel order: beats of ``pe`` lanes, lane ``p`` of beat ``f`` being
    channel ``order[p + pe*f]``, in; beats of channels ``f*pe ..`` out.

    ``direct`` (each fold's channels a natural block): a lane permutation, no storage.
    Otherwise two buffers of ``len(order)`` elements alternate: one fills while the other
    drains, so a full rate is kept at one vector of latency.

    Members
    -------
    i, o : stream of ``unsigned(pe * width)``
    """

    def __init__(self, order, pe: int, width: int):
        self.order = np.asarray(order, dtype=np.int64)
        self.pe, self.width = check_int("pe", pe), check_int("width", width)
        n = self.order.size
        if n % pe or sorted(self.order.tolist()) != list(range(n)):
            raise ValueError(f"order must be a permutation of 0..{n - 1} with pe={pe} dividing it")
        self.folds = n // pe
        self.direct = all(sorted(self.order[f * pe:(f + 1) * pe].tolist()) == list(range(f * pe, (f + 1) * pe))
                          for f in range(self.folds))
        sig = stream.Signature(unsigned(pe * width))
        super().__init__({"i": In(sig), "o": Out(sig)})

    def _lane(self, beat, p):
        return beat[p * self.width:(p + 1) * self.width]

    def elaborate(self, platform):
        m = Module()
        pe, nf = self.pe, self.folds
        if self.direct:
            # src[f][q]: input lane holding channel f*pe+q
            src = [[int(np.nonzero(self.order[f * pe:(f + 1) * pe] == f * pe + q)[0][0]) for q in range(pe)]
                   for f in range(nf)]
            m.d.comb += [self.o.valid.eq(self.i.valid), self.i.ready.eq(self.o.ready)]
            beats = [Cat(self._lane(self.i.payload, src[f][q]) for q in range(pe)) for f in range(nf)]
            if all(s == src[0] for s in src):
                m.d.comb += self.o.payload.eq(beats[0])
            else:
                fold = Signal(range(nf))
                with m.If(self.o.valid & self.o.ready):
                    m.d.sync += fold.eq(Mux(fold == nf - 1, 0, fold + 1))
                m.d.comb += self.o.payload.eq(Array(beats)[fold])
            return m

        n = self.order.size
        bufs = [[Signal(self.width, name=f"b{b}_{c}") for c in range(n)] for b in range(2)]
        full = Signal(2)
        wsel, rsel = Signal(), Signal()
        wfold, rfold = Signal(range(max(2, nf))), Signal(range(max(2, nf)))
        m.d.comb += self.i.ready.eq(~full.bit_select(wsel, 1))
        write = self.i.valid & self.i.ready
        for b in range(2):
            for c in range(n):
                pos = int(np.nonzero(self.order == c)[0][0])
                f, p = divmod(pos, pe)
                with m.If(write & (wsel == b) & (wfold == f)):
                    m.d.sync += bufs[b][c].eq(self._lane(self.i.payload, p))
        set_full = Signal(2)
        clr_full = Signal(2)
        with m.If(write):
            with m.If(wfold == nf - 1):
                m.d.sync += [wfold.eq(0), wsel.eq(~wsel)]
                m.d.comb += set_full.eq(Mux(wsel, 0b10, 0b01))
            with m.Else():
                m.d.sync += wfold.eq(wfold + 1)
        m.d.comb += self.o.valid.eq(full.bit_select(rsel, 1))
        beats = Array(Array(Cat(bufs[b][f * pe + q] for q in range(pe)) for f in range(nf)) for b in range(2))
        m.d.comb += self.o.payload.eq(beats[rsel][rfold])
        with m.If(self.o.valid & self.o.ready):
            with m.If(rfold == nf - 1):
                m.d.sync += [rfold.eq(0), rsel.eq(~rsel)]
                m.d.comb += clr_full.eq(Mux(rsel, 0b10, 0b01))
            with m.Else():
                m.d.sync += rfold.eq(rfold + 1)
        m.d.sync += full.eq((full | set_full) & ~clr_full)
        return m


class MVU(wiring.Component):
    """The matrix-vector engine (see the module docstring for ports and packing).

    Members
    -------
    i : In(stream.Signature(unsigned(in_elems * in_width)))
    o : Out(stream.Signature(unsigned(out_elems * out_width)))
    """

    def __init__(self, spec: MVUSpec):
        if not isinstance(spec, MVUSpec):
            raise TypeError(f"spec must be an MVUSpec, got {spec!r}")
        self.spec = spec
        super().__init__({
            "i": In(stream.Signature(unsigned(spec.in_elems * spec.in_width))),
            "o": Out(stream.Signature(unsigned(spec.out_elems * spec.out_width))),
        })
        # for benchmarks: high in every cycle a step enters the array (PE*SIMD MACs of work)
        self.mac_step = Signal()

    def elaborate(self, platform):
        spec = self.spec
        m = Module()
        sf, nf = spec.fold_in, spec.fold_out
        m.submodules.array = array = SystolicArray(spec.array_spec)

        # the accumulator beat register: a stream source; everything upstream stalls with it
        acc_valid = Signal()
        acc_ready = Signal()
        acc_payload = Signal(data.ArrayLayout(signed(spec.array_spec.out_bits), spec.pe))
        en = Signal()
        m.d.comb += en.eq(~acc_valid | acc_ready)

        s = Signal(range(max(2, sf)))
        f = Signal(range(max(2, nf)))
        waddr = Signal(range(max(2, sf * nf)))
        take_stream = Signal()
        m.d.comb += take_stream.eq(f == 0)
        issue = Signal()
        m.d.comb += [issue.eq(en & (~take_stream | self.i.valid)),
                     self.i.ready.eq(en & take_stream),
                     self.mac_step.eq(issue)]
        with m.If(issue):
            m.d.sync += [s.eq(Mux(s == sf - 1, 0, s + 1)), waddr.eq(Mux(waddr == sf * nf - 1, 0, waddr + 1))]
            with m.If(s == sf - 1):
                m.d.sync += f.eq(Mux(f == nf - 1, 0, f + 1))

        # stage R: aligns the step with the input buffer's synchronous read
        r_valid, r_first, r_last, r_stream = Signal(), Signal(), Signal(), Signal()
        r_addr = Signal.like(waddr)
        r_x = Signal.like(self.i.payload)
        with m.If(en):
            m.d.sync += [r_valid.eq(issue), r_first.eq(s == 0), r_last.eq(s == sf - 1),
                         r_stream.eq(take_stream), r_addr.eq(waddr), r_x.eq(self.i.payload)]
        if nf > 1:
            # the input vector is kept for the N/PE output folds
            m.submodules.inbuf = inbuf = Memory(shape=unsigned(len(self.i.payload)), depth=sf, init=[])
            wp = inbuf.write_port()
            rp = inbuf.read_port()
            m.d.comb += [wp.addr.eq(s), wp.data.eq(self.i.payload), wp.en.eq(issue & take_stream),
                         rp.addr.eq(s), rp.en.eq(en)]
            x = Mux(r_stream, r_x, rp.data)
        else:
            x = r_x
        m.d.comb += [array.en.eq(en), array.addr.eq(r_addr), array.x.eq(x),
                     array.valid.eq(r_valid), array.first.eq(r_first), array.last.eq(r_last)]
        with m.If(en):
            m.d.sync += [acc_valid.eq(array.acc_valid), acc_payload.eq(array.acc)]

        # requantize (or pass accumulators at the output width), then restore channel order
        ow = spec.out_width
        m.submodules.reorder = reorder = Reorder(spec.channel_order, spec.pe, ow)
        if spec.requant is not None:
            m.submodules.requant = rq = spec.requant.create()
            m.d.comb += [rq.i.valid.eq(acc_valid), rq.i.payload.eq(acc_payload), acc_ready.eq(rq.i.ready)]
            wiring.connect(m, rq.o, reorder.i)
        else:
            lanes = [Signal(signed(ow), name=f"out{p}") for p in range(spec.pe)]
            m.d.comb += [lane.eq(acc_payload[p]) for p, lane in enumerate(lanes)]  # sign-extends
            m.d.comb += [reorder.i.valid.eq(acc_valid), acc_ready.eq(reorder.i.ready),
                         reorder.i.payload.eq(Cat(lanes))]
        wiring.connect(m, reorder.o, wiring.flipped(self.o))
        return m

