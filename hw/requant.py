"""Requantization engines: accumulators -> output codes, exactly as ``compiler/golden.py``'s
``requantize`` (docs/plan.md, "Requant").

The input is a stream of beats of ``pe`` accumulators (lane ``p`` of the ``f``-th beat of a
vector is channel ``channel_order[p + pe*f]``); the output is a stream of ``pe`` codes in
the same lane order. Three forms:

* ``binary`` thresholds: one threshold per ROM word (synchronous read, so block RAM), each
  lane binary-searches its channel's sorted row: ``ceil(log2(T+1))`` probes, one per cycle.
* ``parallel`` thresholds: a channel's whole row in one ROM word and ``T`` comparators per
  lane (FINN's form): one beat per cycle.
* ``linear`` thresholds (one beat per cycle, one lane per channel; needs each channel's exact
  accumulator range): the count as ``clip((m·acc + b) >> s, c0, c1)`` with per-channel
  constants found and checked by :mod:`accumulus.compiler.linthresh`; ``m`` is a constant
  multiplier built of shifts and adds. Exactly the threshold count on the reachable range.
* ``multshift``: ``round_half_even((acc + bias) * mult / 2^shift) + zero_point``, clipped,
  one beat per cycle; the per-channel constants are small and sit in LUTs.

Thresholds are stored at the accumulator width of their PE (``threshold_bits`` =
``acc_bits``), clipped to ``[min, max]`` of that width. A threshold the accumulator can
never reach in the counting direction (the plan's ``hi + 1`` when ``hi`` is the width's
maximum) is cut off by a per-channel count of live thresholds instead of being stored one
bit wider, so the count is exact for every accumulator value.
"""
from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from accumulus.compiler.types import IntType, signed_bits

from .rom import ROM, check_int, pack_words

__all__ = ["RequantSpec", "ThresholdRequant", "MultShiftRequant", "round_shift_half_even"]

SEARCHES = ("auto", "binary", "parallel", "linear")


def round_shift_half_even(v, shift):
    """``round_half_even(v / 2**shift)`` for integer arrays, shift >= 0 (exact, object ints)."""
    v = np.asarray(v, dtype=object)
    shift = np.broadcast_to(np.asarray(shift, dtype=object), v.shape)
    out = np.empty(v.shape, dtype=object)
    for idx in np.ndindex(v.shape):
        x, s = int(v[idx]), int(shift[idx])
        q = x >> s
        r = x - (q << s)
        if s > 0:
            half = 1 << (s - 1)
            if r > half or (r == half and q & 1):
                q += 1
        out[idx] = q
    return out


class RequantSpec:
    """A requantizer for ``pe`` lanes.

    Parameters
    ----------
    plan : Plan
        Source of the arrays the requant dict names.
    requant : dict
        The plan's ``requant`` entry (``thresholds`` or ``multshift``).
    pe : int
        Lanes per beat.
    acc_bits : list of int (one per lane)
        Two's-complement width of each lane's input (its PE's accumulator).
    channel_order : sequence of int or None
        Lane ``p`` of beat ``f`` is channel ``channel_order[p + pe*f]``; None: natural order.
    search : "auto" | "binary" | "parallel" | "linear"
        Threshold form; ``auto`` takes ``binary`` when its ``cycles_per_beat`` fits in
        ``beat_interval`` cycles, else ``linear`` when ``acc_range`` is given and every
        channel has a linear form, else ``parallel``. ``linear`` asked for but impossible
        falls back to ``parallel`` (``linear_fallback`` says why).
    beat_interval : int
        Cycles between input beats in steady state (the MVU's K/SIMD), for ``auto``.
    name : str
        Layer name for error messages.
    acc_range : (lo, hi) arrays or None
        Each channel's exact accumulator range (natural order), for ``linear``.
    """

    def __init__(self, plan, requant: dict, pe: int, acc_bits, channel_order=None, search: str = "auto",
                 beat_interval: int = 1, name: str = "requant", acc_range=None):
        if not isinstance(requant, dict) or "kind" not in requant:
            raise TypeError(f"layer '{name}': requant must be a plan requant dict, got {requant!r}")
        self.name = name
        self.kind = requant["kind"]
        if self.kind not in ("thresholds", "multshift"):
            raise ValueError(f"layer '{name}': requant kind must be 'thresholds' or 'multshift', got {self.kind!r}")
        self.pe = check_int("pe", pe)
        self.out_type = IntType.from_json(requant["out_type"])
        acc_bits = list(acc_bits)
        if len(acc_bits) != self.pe:
            raise ValueError(f"layer '{name}': acc_bits must have pe={pe} entries, got {len(acc_bits)}")
        self.acc_bits = [check_int(f"acc_bits[{p}]", b) for p, b in enumerate(acc_bits)]
        if search not in SEARCHES:
            raise ValueError(f"layer '{name}': search must be one of {SEARCHES}, got {search!r}")
        beat_interval = check_int("beat_interval", beat_interval)
        self.requant = requant

        if self.kind == "thresholds":
            t = np.asarray(plan.array(requant["thresholds"]), dtype=np.int64)
            desc = np.asarray(plan.array(requant["descending"]), dtype=bool)
            if t.ndim != 2 or t.shape[1] < 1:
                raise ValueError(f"layer '{name}': thresholds must be (channels, T>=1), got shape {t.shape}")
            if desc.shape != (t.shape[0],):
                raise ValueError(f"layer '{name}': descending must have one flag per channel ({t.shape[0]})")
            self.channels = t.shape[0]
            self.levels = t.shape[1]
            self.descending = desc
            self.out_scale, self.out_bias = int(requant["out_scale"]), int(requant["out_bias"])
        else:
            self.bias = np.asarray(plan.array(requant["bias"]), dtype=np.int64).reshape(-1)
            self.mult = np.asarray(plan.array(requant["mult"]), dtype=np.int64).reshape(-1)
            self.shift = np.asarray(plan.array(requant["shift"]), dtype=np.int64).reshape(-1)
            self.channels = self.bias.size
            if not (self.mult.size == self.shift.size == self.channels):
                raise ValueError(f"layer '{name}': bias, mult and shift must have one entry per channel")
            if self.shift.min(initial=0) < 0:
                raise ValueError(f"layer '{name}': multshift shift must be >= 0, got {int(self.shift.min())}")
            self.zero_point, self.clip = int(requant["zero_point"]), bool(requant["clip"])

        if self.channels % self.pe:
            raise ValueError(f"layer '{name}': pe={pe} must divide the {self.channels} channels")
        self.folds = self.channels // self.pe
        order = np.arange(self.channels) if channel_order is None else np.asarray(channel_order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(self.channels)):
            raise ValueError(f"layer '{name}': channel_order must be a permutation of 0..{self.channels - 1}")
        self.channel_order = order
        # lane_channels[p][f]: channel of lane p at fold f
        self.lane_channels = [[int(order[p + self.pe * f]) for f in range(self.folds)] for p in range(self.pe)]

        if self.kind == "thresholds":
            self.count_bits = self.levels.bit_length()
            # Stored at the accumulator width: a threshold beyond the reachable range in the
            # "always" direction clips to the edge and stays always true; those in the
            # "never" direction (ascending above max, descending below min) form a suffix of
            # the sorted row and are cut off by the channel's ``limit`` (thresholds that can
            # ever count), so every stored value fits and every count stays exact.
            self.stored = np.empty_like(t)
            self.limit = np.empty(self.channels, dtype=np.int64)
            for p in range(self.pe):
                b = self.acc_bits[p]
                amin, amax = -(1 << (b - 1)), (1 << (b - 1)) - 1
                for c in self.lane_channels[p]:
                    self.stored[c] = np.clip(t[c], amin, amax)
                    self.limit[c] = int((t[c] >= amin).sum() if desc[c] else (t[c] <= amax).sum())
            self.threshold_bits = list(self.acc_bits)
            binary_cycles = self.count_bits + 1
            self.search = search if search != "auto" else ("binary" if binary_cycles <= beat_interval else "parallel")
            self.linear = None
            self.linear_fallback = None
            if search in ("auto", "linear") and self.search != "binary":
                self._try_linear(acc_range, search)
        else:
            self.search = None
            self.threshold_bits = []
            self.linear = None

    def _try_linear(self, acc_range, search):
        """Set ``search = "linear"`` and ``linear`` (one fit per channel) when every channel
        has an exact linear form over its range; else record why not."""
        from accumulus.compiler.linthresh import fit_cost, fit_layer

        if acc_range is None:
            self.linear_fallback = "no accumulator ranges given"
        elif self.folds != 1:
            self.linear_fallback = "one lane per channel only (pe = channels)"
        else:
            lo, hi = (np.asarray(v, dtype=np.int64).reshape(-1) for v in acc_range)
            if lo.size != self.channels or hi.size != self.channels:
                raise ValueError(f"layer '{self.name}': acc_range needs one (lo, hi) per channel")
            fits = fit_layer(self.stored, self.descending, self.limit, lo, hi)
            if fits is None:
                self.linear_fallback = "a channel's thresholds have no exact linear form (e.g. two at one value)"
            else:
                self.linear = fits
                self.linear_cost = [fit_cost(f, a, b) for f, a, b in zip(fits, lo, hi)]
                self.acc_lo, self.acc_hi = lo, hi
                self.search = "linear"
                return
        if search == "linear" or self.search == "linear":
            self.search = "parallel"

    @property
    def linear_adder_bits(self) -> int:
        return int(sum(c["adder_bits"] for c in self.linear_cost)) if self.linear else 0

    @property
    def out_bits(self) -> int:
        return self.out_type.bits

    @property
    def cycles_per_beat(self) -> int:
        """Steady-state cycles between accepted input beats."""
        if self.kind == "thresholds" and self.search == "binary":
            return self.count_bits + 1
        return 1

    @property
    def latency(self) -> int:
        """Cycles from accepting a beat to its output being valid."""
        if self.kind == "multshift":
            return 1
        if self.search == "linear":
            return 3
        return self.count_bits + 1 if self.search == "binary" else 2

    def compute(self, acc) -> np.ndarray:
        """Codes for accumulators ``acc`` ``(..., channels)`` in natural channel order."""
        acc = np.asarray(acc, dtype=np.int64)
        if self.kind == "thresholds":
            t = self.stored
            a = acc[..., None]
            live = np.arange(self.levels)[None, :] < self.limit[:, None]
            count = (np.where(self.descending[:, None], t >= a, t <= a) & live).sum(axis=-1)
            return self.out_bias + self.out_scale * count.astype(np.int64)
        y = round_shift_half_even((acc.astype(object) + self.bias.astype(object)) * self.mult.astype(object),
                                  self.shift)
        y = y + self.zero_point
        if self.clip:
            y = np.clip(y, self.out_type.min, self.out_type.max)
        return np.asarray(y).astype(np.int64)

    def create(self):
        if self.kind == "multshift":
            return MultShiftRequant(self)
        return ThresholdRequant(self)


def _in_signature(spec):
    return stream.Signature(data.ArrayLayout(signed(max(spec.acc_bits)), spec.pe))


def _out_signature(spec):
    return stream.Signature(unsigned(spec.pe * spec.out_bits))


def _code(spec, count):
    """out_bias + out_scale * count, as an expression."""
    return spec.out_bias + spec.out_scale * count


class ThresholdRequant(wiring.Component):
    """Threshold requantizer (binary search or parallel compare, see :class:`RequantSpec`).

    Members
    -------
    i : In(stream.Signature(ArrayLayout(signed(max acc_bits), pe)))
        Accumulator beats.
    o : Out(stream.Signature(unsigned(pe * out_bits)))
        Code beats, lane ``p`` in bits ``[p*out_bits, (p+1)*out_bits)``.
    """

    def __init__(self, spec: RequantSpec):
        if not isinstance(spec, RequantSpec) or spec.kind != "thresholds":
            raise TypeError(f"spec must be a thresholds RequantSpec, got {spec!r}")
        self.spec = spec
        super().__init__({"i": In(_in_signature(spec)), "o": Out(_out_signature(spec))})

    def _fold_counter(self, m, accept):
        spec = self.spec
        fold = Signal(range(max(2, spec.folds)))
        if spec.folds > 1:
            with m.If(accept):
                m.d.sync += fold.eq(Mux(fold == spec.folds - 1, 0, fold + 1))
        return fold

    def _desc(self, p, fold):
        flags = [bool(self.spec.descending[c]) for c in self.spec.lane_channels[p]]
        if all(flags) or not any(flags):
            return Const(int(flags[0]), 1)
        return Array(Const(int(f), 1) for f in flags)[fold]

    def _limit(self, p, fold):
        """Thresholds of lane p's channel at ``fold`` that can ever count (None: all of them)."""
        limits = [int(self.spec.limit[c]) for c in self.spec.lane_channels[p]]
        if all(v == self.spec.levels for v in limits):
            return None
        if len(set(limits)) == 1:
            return Const(limits[0], range(self.spec.levels + 1))
        return Array(Const(v, range(self.spec.levels + 1)) for v in limits)[fold]

    def elaborate(self, platform):
        if self.spec.search == "binary":
            return self._binary()
        if self.spec.search == "linear":
            return self._linear()
        return self._parallel()

    def _linear(self):
        """Per channel ``clip((m·a' + b) >> s, c0, c1)`` (a' = ±acc): the register of the
        accumulators, then the shift-and-add product plus ``b`` with its low ``s`` bits
        dropped (registered), then the clip and the output code (registered)."""
        from accumulus.compiler.addergraph import csd_digits

        spec = self.spec
        m = Module()
        ob = spec.out_bits
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        v1, v2 = Signal(), Signal()
        acc1 = Signal.like(self.i.payload)
        with m.If(en):
            m.d.sync += [v1.eq(self.i.valid), acc1.eq(self.i.payload), v2.eq(v1), self.o.valid.eq(v2)]
        for c, f in enumerate(spec.linear):
            cost = spec.linear_cost[c]
            if f["m"] == 0:
                with m.If(en):
                    m.d.sync += self.o.payload[c * ob:(c + 1) * ob].eq(_code(spec, Const(f["c0"], range(f["c0"] + 1))))
                continue
            lo, hi = int(spec.acc_lo[c]), int(spec.acc_hi[c])
            a = Signal(signed(signed_bits(min(lo, -hi, 0), max(hi, -lo, 0))), name=f"a{c}")
            m.d.comb += a.eq(-acc1[c] if f["desc"] else acc1[c])
            terms = [(a << sh) if sh else a for sh, _ in csd_digits(f["m"])]
            signs = [g for _, g in csd_digits(f["m"])]
            # the positive terms first, so that every step is an add or a subtract
            order = sorted(range(len(terms)), key=lambda i: -signs[i])
            expr = terms[order[0]] if signs[order[0]] > 0 else -terms[order[0]]
            for i in order[1:]:
                expr = expr + terms[i] if signs[i] > 0 else expr - terms[i]
            if f["b"]:
                expr = expr + Const(f["b"], signed(signed_bits(min(f["b"], 0), max(f["b"], 0))))
            q = Signal(signed(cost["q_bits"]), name=f"q{c}")
            with m.If(en):
                m.d.sync += q.eq(expr >> f["s"])     # floor: arithmetic shift of the exact sum
            count = Signal(range(f["c1"] + 1), name=f"count{c}")
            m.d.comb += count.eq(Mux(q < f["c0"], f["c0"], Mux(q > f["c1"], f["c1"], q)))
            with m.If(en):
                m.d.sync += self.o.payload[c * ob:(c + 1) * ob].eq(_code(spec, count))
        return m

    def _parallel(self):
        spec = self.spec
        m = Module()
        ob = spec.out_bits
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        accept = self.i.valid & en
        fold = self._fold_counter(m, accept)
        v1 = Signal()
        fold1 = Signal.like(fold)
        acc1 = Signal.like(self.i.payload)
        with m.If(en):
            m.d.sync += [v1.eq(self.i.valid), acc1.eq(self.i.payload), fold1.eq(fold),
                         self.o.valid.eq(v1)]
        for p in range(spec.pe):
            tb = spec.threshold_bits[p]
            rows = spec.stored[spec.lane_channels[p]]                     # (folds, T)
            rom = ROM(pack_words(rows, tb), spec.levels * tb)
            m.submodules[f"thr{p}"] = rom
            m.d.comb += [rom.addr.eq(fold), rom.en.eq(en)]
            acc = acc1[p]
            desc = self._desc(p, fold1)
            limit = self._limit(p, fold1)
            preds = []
            for i in range(spec.levels):
                t = rom.data[i * tb:(i + 1) * tb].as_signed()
                pred = Mux(desc, t >= acc, t <= acc)
                preds.append(pred if limit is None else pred & (i < limit))
            count = Signal(range(spec.levels + 1), name=f"count{p}")
            m.d.comb += count.eq(sum(preds))
            with m.If(en):
                m.d.sync += self.o.payload[p * ob:(p + 1) * ob].eq(_code(spec, count))
        return m

    def _binary(self):
        spec = self.spec
        m = Module()
        ob, nb = spec.out_bits, spec.count_bits
        busy = Signal()
        bit = Signal(nb)                       # one-hot: the count bit decided this cycle
        fold_l = Signal(range(max(2, spec.folds)))
        acc_l = Signal.like(self.i.payload)
        accept = Signal()
        m.d.comb += [self.i.ready.eq(~busy & (~self.o.valid | self.o.ready)),
                     accept.eq(self.i.valid & self.i.ready)]
        fold = self._fold_counter(m, accept)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(accept):
            m.d.sync += [busy.eq(1), bit.eq(1 << (nb - 1)), acc_l.eq(self.i.payload), fold_l.eq(fold)]
        with m.If(busy):
            m.d.sync += bit.eq(bit >> 1)
            with m.If(bit[0]):
                m.d.sync += [busy.eq(0), self.o.valid.eq(1)]
        first_probe = (1 << (nb - 1)) - 1
        for p in range(spec.pe):
            tb = spec.threshold_bits[p]
            words_per_chan = 1 << nb
            rows = np.zeros((spec.folds * words_per_chan, 1), dtype=np.int64)
            for f, c in enumerate(spec.lane_channels[p]):
                rows[f * words_per_chan: f * words_per_chan + spec.levels, 0] = spec.stored[c]
            rom = ROM(pack_words(rows, tb), tb)
            m.submodules[f"thr{p}"] = rom
            count = Signal(nb, name=f"count{p}")
            probe = Signal(nb, name=f"probe{p}")       # index whose threshold is on rom.data
            m.d.comb += probe.eq(count | (bit - 1))
            t = rom.data.as_signed()
            acc = acc_l[p]
            pred = Signal(name=f"pred{p}")
            limit = self._limit(p, fold_l)
            live = (probe < spec.levels) if limit is None else (probe < limit)
            m.d.comb += pred.eq(live & Mux(self._desc(p, fold_l), t >= acc, t <= acc))
            count_next = Signal(nb, name=f"count_next{p}")
            m.d.comb += count_next.eq(count | Mux(pred, bit, 0))
            next_probe = Signal(nb, name=f"next_probe{p}")
            m.d.comb += next_probe.eq(count_next | ((bit >> 1) - 1))
            addr_fold = Mux(busy, fold_l, fold)
            addr_idx = Mux(busy, next_probe, first_probe)
            m.d.comb += rom.addr.eq(addr_fold * words_per_chan + addr_idx)
            with m.If(accept):
                m.d.sync += count.eq(0)
            with m.If(busy):
                m.d.sync += count.eq(count_next)
                with m.If(bit[0]):
                    m.d.sync += self.o.payload[p * ob:(p + 1) * ob].eq(_code(spec, count_next))
        return m


class MultShiftRequant(wiring.Component):
    """Multiplier/shift requantizer with round-half-to-even and optional clip (one stage).

    Members
    -------
    i, o : as :class:`ThresholdRequant`.
    """

    def __init__(self, spec: RequantSpec):
        if not isinstance(spec, RequantSpec) or spec.kind != "multshift":
            raise TypeError(f"spec must be a multshift RequantSpec, got {spec!r}")
        self.spec = spec
        super().__init__({"i": In(_in_signature(spec)), "o": Out(_out_signature(spec))})

    def elaborate(self, platform):
        spec = self.spec
        m = Module()
        ob = spec.out_bits
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        accept = self.i.valid & en
        fold = Signal(range(max(2, spec.folds)))
        if spec.folds > 1:
            with m.If(accept):
                m.d.sync += fold.eq(Mux(fold == spec.folds - 1, 0, fold + 1))
        with m.If(en):
            m.d.sync += self.o.valid.eq(self.i.valid)

        def table(values, shape):
            consts = [Const(int(v), shape) for v in values]
            return consts[0] if len(set(int(v) for v in values)) == 1 else Array(consts)[fold]

        bb = max(signed_bits(int(spec.bias.min()), int(spec.bias.max())), 1)
        mb = max(signed_bits(int(spec.mult.min()), int(spec.mult.max())), 1)
        sb = max(int(spec.shift.max()).bit_length(), 1)
        for p in range(spec.pe):
            chans = spec.lane_channels[p]
            bias = table(spec.bias[chans], signed(bb))
            mult = table(spec.mult[chans], signed(mb))
            shift = table(spec.shift[chans], unsigned(sb))
            acc = self.i.payload[p]
            vb = max(spec.acc_bits[p], bb) + 1 + mb
            v = Signal(signed(vb), name=f"v{p}")
            m.d.comb += v.eq((acc + bias) * mult)
            q = Signal(signed(vb), name=f"q{p}")
            m.d.comb += q.eq(v >> shift)
            r = Signal(unsigned(vb), name=f"r{p}")
            m.d.comb += r.eq(v - (q << shift))
            half = Signal(unsigned(vb), name=f"half{p}")
            m.d.comb += half.eq((Const(1, unsigned(vb)) << shift) >> 1)
            up = Signal(name=f"up{p}")
            m.d.comb += up.eq((shift != 0) & ((r > half) | ((r == half) & q[0])))
            y = Signal(signed(vb + 2), name=f"y{p}")
            m.d.comb += y.eq(q + up + spec.zero_point)
            if spec.clip:
                lo, hi = spec.out_type.min, spec.out_type.max
                yc = Mux(y < lo, lo, Mux(y > hi, hi, y))
            else:
                yc = y
            with m.If(en):
                m.d.sync += self.o.payload[p * ob:(p + 1) * ob].eq(yc)
        return m
