"""The accelerator top: the plan's layers as dataflow engines joined by streams, behind
AXI-Stream ports.

Every plan layer becomes one engine (:class:`EngineSpec` -> a ``wiring.Component`` with
stream ports ``i``/``o``, an ``add`` has ``a``/``b``/``o``); every tensor is a stream of
beats of its elements (hw/fifo.py). Where a producer emits ``a`` elements per beat and
the consumer reads ``b``, a :class:`~accumulus.hw.width.WidthConverter` regroups them; a
tensor read by several layers goes through a :class:`~accumulus.hw.fifo.Fork`, and the
branch of a fork that feeds an ``add`` directly (the skip path of a residual block) gets
a FIFO deep enough to cover the other branch's lead and latency
(:meth:`GraphSpec.skip_fifo_depth`; a whole frame where no bound is known), so the skip
path can never stall the main path into deadlock.

Engines:

* ``matvec``: the MVU (hw/mvu.py), SIMD elements in, PE out; or, when the layer's
  ``engine`` is ``"const"``, the constant-weight engine (hw/constmv.py): the whole vector in
  one beat, all N channels out, one vector per cycle;
* ``conv``: sliding-window generator (hw/swg.py), then the MVU (or the constant-weight
  engine, which takes one output pixel's whole window per beat: the generator then reads
  ``kh*kw`` window positions per cycle);
* ``maxpool`` / ``avgpool``: hw/pool.py (the average pool's window sum then its requant);
* ``requant`` (elementwise): hw/requant.py's requantizer, one lane per element of a beat;
* ``add``: hw/add.py; ``argmax``: hw/argmax.py;
* ``reorder`` (DepthToSpace, nearest Resize): hw/reorder.py, one element per beat.

:class:`AcceleratorTop` puts AXI-Stream ports around the graph (DESIGN.md's packing): a
beat carries ``in_elems`` consecutive input elements, element ``i`` in bits
``[i*w, (i+1)*w)``, the beat padded to a multiple of 8 bits; the output likewise, with
``m_axis_tlast`` on a frame's last beat. Frames have a fixed length, so ``s_axis_tlast``
is accepted and ignored.
"""
from __future__ import annotations

import math

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from accumulus.compiler.plan import Plan
from accumulus.compiler.types import IntType

from .add import AddSpec
from .argmax import ArgMaxSpec
from .fifo import Fork, StreamFIFO, beat_layout, beat_signature
from .pool import PoolSpec
from .reorder import ReorderSpec
from .stream_util import raw_payload
from .swg import SWGSpec
from .width import WidthConverter

__all__ = ["EngineSpec", "Engine", "BlackBoxEngine", "Graph", "GraphSpec", "AcceleratorTop", "POLICIES", "check_policy",
           "ENGINES", "check_engine", "layer_engine"]

# ``auto``: each layer's ``engine`` in the plan (absent: ``rom``); ``rom`` / ``const``: every
# MAC layer built with that engine whatever the plan chose (for comparisons).
ENGINES = ("auto", "rom", "const")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {' | '.join(ENGINES)}, got {engine!r}")
    return engine


def layer_engine(layer: dict, engine: str = "auto") -> str:
    """The engine a MAC layer is built with: the override, else the plan's choice."""
    if engine != "auto":
        return engine
    choice = layer.get("engine", "rom")
    if choice not in ("rom", "const"):
        raise ValueError(f"layer '{layer.get('name')}': engine {choice!r} in the plan is not rom or const; "
                         "re-run 'accumulus compile'")
    return choice


def check_policy(acc_policy: str) -> str:
    """Validate ``exact | datatype | fixed:K | exact-minus:D`` (hw/mvu.py's parser, the one
    definition); TypeError/ValueError naming ``acc_policy``."""
    from .mvu import parse_acc_policy

    parse_acc_policy(acc_policy)
    return acc_policy


POLICIES = ("exact", "datatype", "fixed:K", "exact-minus:D")


def _prod(xs):
    out = 1
    for x in xs:
        out *= int(x)
    return out


class EngineSpec:
    """One plan layer's engine: its stream ports, rates and the pieces it is built from.

    Parameters
    ----------
    plan : Plan
    layer : dict
        One of ``plan.layers``.
    acc_policy : str
        ``exact | datatype | fixed:K | exact-minus:D`` (MAC layers).
    in_elems : int or None
        Elements per beat the producer of the (first) input delivers; engines without a
        folding of their own (pool, requant, add, argmax) adopt it when it divides their
        channels. None: the engine's own preference.
    engine : "auto" | "rom" | "const"
        MAC layers: ``auto`` builds the plan's ``layer["engine"]``; ``rom`` / ``const``
        override it.
    """

    def __init__(self, plan: Plan, layer: dict, acc_policy: str = "exact", in_elems: int | None = None,
                 engine: str = "auto"):
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a Plan, got {plan!r}")
        if not isinstance(layer, dict) or "kind" not in layer:
            raise TypeError(f"layer must be a plan layer dict, got {layer!r}")
        self.plan, self.layer, self.name, self.kind = plan, layer, layer["name"], layer["kind"]
        self.acc_policy = check_policy(acc_policy)
        self.engine = None
        self.in_type = plan.tensor_type(layer["inputs"][0])
        self.out_type = plan.tensor_type(layer["output"])
        in_shape = plan.tensor_shape(layer["inputs"][0])
        out_shape = plan.tensor_shape(layer["output"])
        self.in_frame = _prod(in_shape)
        self.out_frame = _prod(out_shape)
        channels_in = in_shape[-1]
        self.swg = self.mvu = self.pool = self.requant = self.add = self.argmax = self.reorder = None
        self.mid_elems = None
        self.in_fifo_depth = 0
        kind = self.kind

        def adopt(channels):
            e = in_elems or 1
            return e if channels % e == 0 else math.gcd(e, channels)

        if kind in ("matvec", "conv"):
            from .mvu import MVUSpec  # the other engines do not need the array

            if layer.get("conv") and layer["conv"].get("groups", 1) != 1:
                raise ValueError(f"layer '{self.name}': grouped convolution (groups={layer['conv']['groups']}) "
                                 "is not built yet; use groups=1")
            self.engine = layer_engine(layer, check_engine(engine))
            if self.engine == "const":
                from accumulus.compiler.passes.fold import DEFAULT_REGISTER_EVERY

                from .constmv import ConstMVSpec

                # the plan's pipeline (chosen from the clock) and sharing; defaults when the
                # layer was folded for the ROM engine and is built constant by override
                graph = layer.get("const") or {}
                self.mvu = ConstMVSpec(plan, layer, acc_policy,
                                       register_every=int(graph.get("register_every", DEFAULT_REGISTER_EVERY)),
                                       cse=bool(graph.get("cse", True)), solver=graph.get("solver", "csd"))
            else:
                self.mvu = MVUSpec(plan, layer, acc_policy)
            simd = self.mvu.in_elems
            self.out_elems = self.mvu.out_elems
            if kind == "conv":
                conv = layer["conv"]
                c = conv["in_shape"][2]

                def swg(beat):
                    return SWGSpec(conv["in_shape"], conv["kernel"], conv["stride"], conv["pads"],
                                   conv.get("dilation", [1, 1]), pad_value=conv["pad_value"],
                                   elem=self.in_type, simd=beat)
                try:
                    self.swg = swg(simd)
                except ValueError:
                    # SIMD neither divides C nor tiles the window into whole pixels: the
                    # generator emits gcd(SIMD, C) elements per beat and a converter packs
                    # them (slower than the MVU unless its N/PE folds hide it).
                    self.swg = swg(math.gcd(simd, c))
                self.in_elems = self.swg.word_elems
                self.mid_elems = simd
                self.pixels = conv["out_shape"][0] * conv["out_shape"][1]
                # The MVU reads its first fold at one beat per cycle; the window generator
                # (narrower when SIMD does not divide C) fills this queue during the other folds.
                if self.mvu.fold_out > 1:
                    self.in_fifo_depth = self.mvu.fold_in + 1
            else:
                self.in_elems = simd
                self.pixels = 1
                # A producer hands out the vector over its whole frame; one vector of queue
                # lets it run on while this MVU works through its folds (FINN's model
                # assumes exactly that overlap).
                if self.mvu.fold_out > 1:
                    self.in_fifo_depth = self.mvu.fold_in + 1
        elif kind in ("maxpool", "avgpool"):
            self.in_elems = adopt(channels_in)
            self.pool = PoolSpec("max" if kind == "maxpool" else "avg", layer["in_shape"], layer["kernel"],
                                 layer["stride"], layer["pads"], elem=self.in_type, simd=self.in_elems,
                                 pad_value=layer.get("pad_value") if kind == "avgpool" else None)
            if tuple(self.pool.out_shape) != tuple(out_shape) and kind == "maxpool":
                raise ValueError(f"layer '{self.name}': pool output {self.pool.out_shape} differs from the plan's {out_shape}")
            self.out_elems = self.in_elems
            if kind == "avgpool":
                self._make_requant(layer["requant"], self.pool.out_type, self.in_elems)
        elif kind == "requant":
            self.in_elems = self.out_elems = adopt(channels_in)
            self._make_requant(layer["requant"], self.in_type, self.in_elems)
        elif kind == "add":
            self.in_elems = self.out_elems = adopt(channels_in)
            self.b_type = plan.tensor_type(layer["inputs"][1])
            self.add = AddSpec(self.in_type, self.b_type, layer["align"], self.out_type, self.in_elems)
        elif kind == "argmax":
            self.in_elems = adopt(self.in_frame)
            self.argmax = ArgMaxSpec(self.in_type, self.in_frame, self.in_elems, self.out_type.bits)
            self.out_elems = 1
        elif kind == "reorder":
            if self.out_type != self.in_type:
                raise ValueError(f"layer '{self.name}': a reorder keeps its input type, but the plan says "
                                 f"{self.in_type} -> {self.out_type}")
            self.reorder = ReorderSpec.from_layer(layer, self.in_type)
            if tuple(self.reorder.in_shape) != tuple(in_shape) or tuple(self.reorder.out_shape) != tuple(out_shape):
                raise ValueError(f"layer '{self.name}': reorder {self.reorder.in_shape} -> {self.reorder.out_shape} "
                                 f"differs from the plan's tensors {tuple(in_shape)} -> {tuple(out_shape)}")
            # The source row, column and channel change from element to element.
            self.in_elems = self.out_elems = 1
        else:
            raise ValueError(f"layer '{self.name}': unknown layer kind '{kind}'")

    def _make_requant(self, requant, acc_type: IntType, elems: int):
        from .requant import RequantSpec

        channels = self.plan.tensor_shape(self.layer["output"])[-1]
        self.requant_in_type = acc_type
        self.requant = RequantSpec(self.plan, requant, elems, [acc_type.twos_complement_bits] * elems,
                                   channel_order=None, search="parallel", name=self.name)
        if self.requant.channels != channels:
            raise ValueError(f"layer '{self.name}': requant has {self.requant.channels} channels, the tensor {channels}")

    # -- rates ----------------------------------------------------------------------------
    @property
    def in_beats(self) -> int:
        return self.in_frame // self.in_elems

    @property
    def out_beats(self) -> int:
        return self.out_frame // self.out_elems

    @property
    def cycles_per_frame(self) -> int:
        """Steady-state cycles per frame of this engine alone (input every cycle, no stalls)."""
        parts = [self.in_beats, self.out_beats]
        if self.mvu is not None:
            parts.append(self.mvu.cycles_per_frame * self.pixels)
        if self.swg is not None:
            parts.append(self.swg.cycles_per_frame)
        if self.pool is not None:
            parts.append(self.pool.cycles_per_frame)
        if self.requant is not None:
            parts.append(self.requant.cycles_per_beat * self.out_beats)
        if self.reorder is not None:
            parts.append(self.reorder.cycles_per_frame)
        return max(parts)

    @property
    def latency(self) -> int:
        """Cycles from the first input beat to the first output beat (input every cycle)."""
        lat = 0
        if self.swg is not None:
            lat += self.swg.latency + 1
        if self.mvu is not None:
            lat += self.mvu.latency
        if self.pool is not None:
            lat += self.pool.latency
        if self.requant is not None:
            lat += self.requant.latency
        if self.add is not None:
            lat += self.add.latency
        if self.argmax is not None:
            lat += self.in_beats + self.argmax.latency - 1
        if self.reorder is not None:
            lat += self.reorder.latency
        return lat

    @property
    def module_name(self) -> str:
        safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in self.name)
        return f"layer_{safe}"

    def info(self) -> dict:
        """The layer's entry in build.json."""
        d = {
            "layer": self.name, "kind": self.kind, "module": self.module_name,
            "file": f"layers/{self.module_name}.v",
            "in": {"elems_per_beat": self.in_elems, "elem_bits": self.in_type.bits, "signed": self.in_type.signed,
                   "beats_per_frame": self.in_beats},
            "out": {"elems_per_beat": self.out_elems, "elem_bits": self.out_type.bits, "signed": self.out_type.signed,
                    "beats_per_frame": self.out_beats},
            "latency": self.latency,
            "cycles_per_frame": self.cycles_per_frame,
            "plan_cycles_per_frame": self.layer.get("cycles_per_frame"),
        }
        if self.kind == "add":
            d["in_b"] = {"elems_per_beat": self.in_elems, "elem_bits": self.b_type.bits, "signed": self.b_type.signed}
        if self.mvu is not None:
            fold = self.layer["folding"]
            d.update({
                # as built; the plan's folding differs only when --engine overrides its choice
                "pe": self.mvu.pe, "simd": self.mvu.simd,
                "plan_folding": {"pe": fold["pe"], "simd": fold["simd"]},
                "acc_bits": [int(b) for b in self.mvu.acc_bits],
                "plan_pe_acc_bits": [int(b) for b in fold["pe_acc_bits"]],
                "channel_order": [int(c) for c in fold["channel_order"]],
                "threshold_bits": _jsonable(getattr(self.mvu, "threshold_bits", None)),
                "tree_bits": _jsonable(getattr(self.mvu, "tree_bits", None)),
                "mvu_latency": self.mvu.latency,
                "engine": self.engine,
            })
            if self.engine == "const":
                rep = self.mvu.report()
                d["const"] = {k: v for k, v in rep.items() if not isinstance(v, list)}
        if self.swg is not None:
            d["swg"] = {"line_buffer_rows": self.swg.rows, "buffer_words": self.swg.buffer_words,
                        "elems_per_word": self.swg.word_elems, "read_ports": self.swg.lanes,
                        "elems_per_beat": self.swg.simd}
        if self.requant is not None:
            d["requant"] = {"kind": self.requant.kind, "search": self.requant.search}
        if self.reorder is not None:
            d["reorder"] = {"op": self.layer.get("op"), "buffer_elems": self.reorder.buffer_elems,
                            "buffer_bits": self.reorder.buffer_bits}
        return d

    def create(self) -> "Engine":
        return Engine(self)


def _jsonable(v):
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    try:
        return int(v)
    except (TypeError, ValueError):
        return str(v)


def engine_signature(spec: EngineSpec) -> wiring.Signature:
    members = {}
    if spec.kind == "add":
        members["a"] = In(beat_signature(spec.in_type, spec.in_elems))
        members["b"] = In(beat_signature(spec.b_type, spec.in_elems))
    else:
        members["i"] = In(beat_signature(spec.in_type, spec.in_elems))
    members["o"] = Out(beat_signature(spec.out_type, spec.out_elems))
    return wiring.Signature(members)


class Engine(wiring.Component):
    """A layer engine of an :class:`EngineSpec`.

    Members
    -------
    i : ``In(beat_signature(in_type, in_elems))`` (``a`` and ``b`` for an ``add``)
    o : ``Out(beat_signature(out_type, out_elems))``
    """

    def __init__(self, spec: EngineSpec):
        if not isinstance(spec, EngineSpec):
            raise TypeError(f"spec must be an EngineSpec, got {spec!r}")
        self.spec = spec
        super().__init__(engine_signature(spec))

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        if s.kind == "add":
            m.submodules.add = add = s.add.create()
            wiring.connect(m, wiring.flipped(self.a), add.a)
            wiring.connect(m, wiring.flipped(self.b), add.b)
            wiring.connect(m, add.o, wiring.flipped(self.o))
            return m
        if s.kind == "argmax":
            m.submodules.argmax = am = s.argmax.create()
            wiring.connect(m, wiring.flipped(self.i), am.i)
            _join(m, am.o, self.o)
            return m
        src = wiring.flipped(self.i)
        if s.reorder is not None:
            m.submodules.reorder = ro = s.reorder.create()
            _join(m, src, ro.i)
            _join(m, ro.o, self.o)
            return m
        if s.swg is not None:
            m.submodules.swg = swg = s.swg.create()
            wiring.connect(m, src, swg.i)
            src = swg.o
            if s.mid_elems != s.swg.simd:
                m.submodules.widen = wc = WidthConverter(s.in_type, s.swg.simd, s.mid_elems)
                wiring.connect(m, src, wc.i)
                src = wc.o
        if s.mvu is not None:
            m.submodules.mvu = mvu = s.mvu.create()
            if s.in_fifo_depth:
                m.submodules.in_fifo = q = StreamFIFO(beat_layout(s.in_type, s.mvu.in_elems), s.in_fifo_depth)
                wiring.connect(m, src, q.i)
                src = q.o
            _join(m, src, mvu.i)
            _join(m, mvu.o, self.o)
            return m
        if s.pool is not None:
            m.submodules.pool = pool = s.pool.create()
            _join(m, src, pool.i)
            src = pool.o
        if s.requant is not None:
            m.submodules.requant = rq = s.requant.create()
            # Each element widened to the requantizer's lane width (sign or zero extension).
            m.d.comb += [rq.i.valid.eq(src.valid), src.ready.eq(rq.i.ready)]
            for e in range(s.out_elems):
                m.d.comb += rq.i.payload[e].eq(src.payload[e])
            src = rq.o
        _join(m, src, self.o)
        return m


def _join(m, src, dst):
    """Connect two streams whose payloads have the same bits but maybe different shapes."""
    m.d.comb += [dst.valid.eq(src.valid), src.ready.eq(dst.ready), raw_payload(dst.payload).eq(raw_payload(src.payload))]


class GraphSpec:
    """Every engine of a plan, the streams between them and the top's packing.

    Parameters
    ----------
    plan : Plan
    acc_policy : str
    engine : "auto" | "rom" | "const"
        :class:`EngineSpec`'s: the plan's engine per MAC layer, or one for all.
    """

    def __init__(self, plan: Plan, acc_policy: str = "exact", engine: str = "auto"):
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a Plan, got {plan!r}")
        self.plan = plan
        self.acc_policy = check_policy(acc_policy)
        self.engine = check_engine(engine)
        produced = {plan.input_name: None}
        self.engines: list[EngineSpec] = []
        elems = {plan.input_name: None}
        for layer in plan.layers:
            for t in layer["inputs"]:
                if t not in produced:
                    raise ValueError(f"layer '{layer['name']}' reads tensor '{t}' before any layer writes it")
            spec = EngineSpec(plan, layer, acc_policy, in_elems=elems[layer["inputs"][0]], engine=engine)
            self.engines.append(spec)
            produced[layer["output"]] = spec
            elems[layer["output"]] = spec.out_elems
        first = self.engines[0]
        if plan.output_name not in produced or produced[plan.output_name] is None:
            raise ValueError(f"plan output '{plan.output_name}' is not written by any layer")
        self.in_type = plan.tensor_type(plan.input_name)
        self.in_frame = _prod(plan.tensor_shape(plan.input_name))
        self.in_elems = self._first_elems(first)
        last = produced[plan.output_name]
        self.out_type = last.out_type
        self.out_elems = last.out_elems
        self.out_frame = last.out_frame
        self.producers = produced

    def skip_fifo_depth(self, add: "EngineSpec", port: int) -> int:
        """Entries of the FIFO in front of input ``port`` of residual add ``add``, when that
        input comes straight from a fork (the skip path of a residual block).

        The fork hands a beat to the skip path and the branch together, so the FIFO must hold
        every beat the branch has to read before it can give the add the beat it waits for:
        the branch's lead. A convolution of stride 1 that keeps the image size emits pixel
        ``p`` once its window's last real pixel is in (hw/swg.py), ``yl*W + xl + 1`` pixels
        ahead of ``p``; a requantizer is elementwise; the leads of a chain add up. On top of
        the lead, the beats that arrive while a beat is in the branch's pipelines (at most
        one per cycle: the engines' latencies), a pixel per width converter and two beats
        (the fork and the add's registers), so the skip path never throttles the branch.
        Anything else between fork and add (pooling, a matvec, a second join, a reorder) has
        no such bound: the FIFO then holds a whole frame (+2), which never deadlocks.
        """
        plan = self.plan
        skip, other = add.layer["inputs"][port], add.layer["inputs"][1 - port]
        shape = plan.tensor_shape(skip)
        frame_beats = _prod(shape) // add.in_elems + 2
        chain, t = [], other
        while t != skip:
            e = self.producers.get(t)
            if e is None or len(e.layer["inputs"]) != 1 or len(chain) > len(self.engines):
                return frame_beats
            chain.append(e)
            t = e.layer["inputs"][0]
        if len(shape) != 3 or not chain:
            return frame_beats
        h, w, c = shape
        lead_px = 0
        for e in chain:
            if plan.tensor_shape(e.layer["output"])[:2] != (h, w):
                return frame_beats
            if e.kind == "requant":
                continue
            if e.kind != "conv" or e.swg is None or tuple(e.swg.stride) != (1, 1):
                return frame_beats
            top, left = e.swg.pads[0], e.swg.pads[1]
            yl = min((e.swg.kernel[0] - 1) * e.swg.dilation[0] - top, h - 1)
            xl = min((e.swg.kernel[1] - 1) * e.swg.dilation[1] - left, w - 1)
            lead_px += yl * w + xl + 1
        pixel_beats = -(-c // add.in_elems)
        src = self.producers.get(skip)
        # (consumer's beat, producer's beat) along the chain, add first: a width converter where they differ
        elems = ([add.in_elems] + [x for e in chain for x in (e.out_elems, e.in_elems)]
                 + [src.out_elems if src is not None else self.in_elems])
        converters = sum(1 for a, b in zip(elems[0::2], elems[1::2]) if a != b)
        depth = lead_px * pixel_beats + sum(e.latency for e in chain) + (converters + 1) * pixel_beats + 2
        return min(depth, frame_beats)

    def _first_elems(self, first):
        # DESIGN.md: an input beat carries SIMD consecutive elements of the first layer's input.
        readers = [e for e in self.engines if self.plan.input_name in e.layer["inputs"]]
        return readers[0].in_elems if readers else first.in_elems

    @property
    def in_beats(self) -> int:
        return self.in_frame // self.in_elems

    @property
    def out_beats(self) -> int:
        return self.out_frame // self.out_elems

    @property
    def in_bits(self) -> int:
        """s_axis_tdata width: the packed elements, padded to a multiple of 8."""
        return -(-self.in_elems * self.in_type.bits // 8) * 8

    @property
    def out_bits(self) -> int:
        return -(-self.out_elems * self.out_type.bits // 8) * 8

    @property
    def cycles_per_frame(self) -> int:
        return max([e.cycles_per_frame for e in self.engines] + [self.in_beats, self.out_beats])

    @property
    def latency(self) -> int:
        """Sum of engine latencies along the longest path (an estimate: FIFOs add a cycle or two)."""
        lat = {self.plan.input_name: 0}
        for e in self.engines:
            lat[e.layer["output"]] = max(lat[t] for t in e.layer["inputs"]) + e.latency
        return lat[self.plan.output_name]

    def packing(self) -> dict:
        return {
            "input": {"tensor": self.plan.input_name, "elems_per_beat": self.in_elems, "elem_bits": self.in_type.bits,
                      "signed": self.in_type.signed, "beat_bytes": self.in_bits // 8, "beats_per_frame": self.in_beats},
            "output": {"tensor": self.plan.output_name, "kind": self.plan.doc["output"]["kind"],
                       "elems_per_beat": self.out_elems, "elem_bits": self.out_type.bits,
                       "signed": self.out_type.signed, "beat_bytes": self.out_bits // 8,
                       "beats_per_frame": self.out_beats},
        }

    def create(self, blackbox: bool = False) -> "AcceleratorTop":
        return AcceleratorTop(self, blackbox)


class BlackBoxEngine(wiring.Component):
    """An :class:`Engine`'s ports around an instance of its separately converted module.

    The Verilog build converts each engine once (``rtl/layers/<module>.v``) and the
    interconnect around these instances, then concatenates them into the top file: every
    engine is elaborated and converted once, not twice.
    """

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        super().__init__(engine_signature(spec))

    def elaborate(self, platform):
        from amaranth.hdl import ClockSignal, Instance, ResetSignal

        m = Module()
        ports = {"i_clk": ClockSignal(), "i_rst": ResetSignal()}
        for path, member, value in self.signature.flatten(self):
            prefix = "i_" if member.flow == In else "o_"
            ports[prefix + "__".join(str(p) for p in path)] = raw_payload(value)
        m.submodules.engine = Instance(self.spec.module_name, **ports)
        return m


class Graph(wiring.Component):
    """The engines of a :class:`GraphSpec` joined by streams: ``i`` (input tensor), ``o`` (output).

    With ``blackbox=True`` each engine is an instance of its own Verilog module (for the
    Verilog build); otherwise the engines are elaborated in place (for simulation).
    """

    def __init__(self, spec: GraphSpec, blackbox: bool = False):
        self.spec = spec
        self.blackbox = bool(blackbox)
        super().__init__({"i": In(beat_signature(spec.in_type, spec.in_elems)),
                          "o": Out(beat_signature(spec.out_type, spec.out_elems))})

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        plan = s.plan
        # tensor -> list of (stream, elems, type) still to hand out, one per consumer
        readers = {}
        for e in s.engines:
            for t in e.layer["inputs"]:
                readers[t] = readers.get(t, 0) + 1
        readers[plan.output_name] = readers.get(plan.output_name, 0) + 1
        available = {}

        def publish(tensor, stream, elems, itype):
            n = readers.get(tensor, 0)
            if n == 0:
                m.d.comb += stream.ready.eq(1)  # an unused tensor is drained
                return
            if n == 1:
                available[tensor] = [(stream, elems, itype, False)]
                return
            fork = Fork(beat_layout(itype, elems), n)
            m.submodules[f"fork_{_safe(tensor)}"] = fork
            wiring.connect(m, stream, fork.i)
            available[tensor] = [(o, elems, itype, True) for o in fork.outputs]

        def take(tensor, want_elems, name, skip_depth=None):
            stream, elems, itype, forked = available[tensor].pop(0)
            if elems != want_elems:
                wc = WidthConverter(itype, elems, want_elems)
                m.submodules[f"wc_{name}"] = wc
                wiring.connect(m, stream, wc.i)
                stream = wc.o
            if forked and skip_depth is not None:
                # The skip branch of a residual block waits here for the main branch.
                q = StreamFIFO(beat_layout(itype, want_elems), skip_depth)
                m.submodules[f"skip_{name}"] = q
                wiring.connect(m, stream, q.i)
                stream = q.o
            return stream

        publish(plan.input_name, wiring.flipped(self.i), s.in_elems, s.in_type)
        for e in s.engines:
            eng = BlackBoxEngine(e) if self.blackbox else e.create()
            m.submodules[e.module_name] = eng
            if e.kind == "add":
                for k, (port, t) in enumerate(zip((eng.a, eng.b), e.layer["inputs"])):
                    wiring.connect(m, take(t, e.in_elems, f"{e.module_name}_{'ab'[k]}",
                                           skip_depth=s.skip_fifo_depth(e, k)), port)
            else:
                wiring.connect(m, take(e.layer["inputs"][0], e.in_elems, e.module_name), eng.i)
            publish(e.layer["output"], eng.o, e.out_elems, e.out_type)
        out = take(plan.output_name, s.out_elems, "out")
        wiring.connect(m, out, wiring.flipped(self.o))
        return m


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)


class AcceleratorTop(wiring.Component):
    """The accelerator with AXI-Stream ports (DESIGN.md packing); ``clk``/``rst`` are the
    sync domain's.

    Members
    -------
    s_axis_tdata : ``In(in_bits)``
    s_axis_tvalid, s_axis_tlast : ``In(1)``
    s_axis_tready : ``Out(1)``
    m_axis_tdata : ``Out(out_bits)``
    m_axis_tvalid, m_axis_tlast : ``Out(1)``
    m_axis_tready : ``In(1)``
    """

    def __init__(self, spec: GraphSpec, blackbox: bool = False):
        if not isinstance(spec, GraphSpec):
            raise TypeError(f"spec must be a GraphSpec, got {spec!r}")
        self.spec = spec
        self.blackbox = bool(blackbox)
        super().__init__({
            "s_axis_tdata": In(spec.in_bits), "s_axis_tvalid": In(1), "s_axis_tready": Out(1), "s_axis_tlast": In(1),
            "m_axis_tdata": Out(spec.out_bits), "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "m_axis_tlast": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        s = self.spec
        m.submodules.graph = g = Graph(s, self.blackbox)
        in_w = s.in_elems * s.in_type.bits
        out_w = s.out_elems * s.out_type.bits
        beat = Signal(range(max(2, s.out_beats)))
        last = beat == s.out_beats - 1
        m.d.comb += [
            raw_payload(g.i.payload).eq(self.s_axis_tdata[:in_w]),
            g.i.valid.eq(self.s_axis_tvalid),
            self.s_axis_tready.eq(g.i.ready),
            self.m_axis_tdata.eq(raw_payload(g.o.payload)[:out_w]),
            self.m_axis_tvalid.eq(g.o.valid),
            g.o.ready.eq(self.m_axis_tready),
            self.m_axis_tlast.eq(last),
        ]
        with m.If(g.o.valid & g.o.ready):
            m.d.sync += beat.eq(0 if s.out_beats == 1 else beat + 1)
            with m.If(last):
                m.d.sync += beat.eq(0)
        return m
