"""Pass ``fold``: PE/SIMD per MAC layer, channel grouping, cycles per frame.

requires: a sized IntGraph (every MAC layer has ``acc``).
ensures:  every layer has ``cycles_per_frame``; every MAC layer has ``folding`` with
          ``pe | channels``, ``simd | fan_in``, a width-grouping ``channel_order`` and
          per-PE built widths; the graph's estimate fits ``budget`` when any folding does.

Targets (FINN's cycle model, ``(N/PE)·(K/SIMD)·OH·OW`` per MAC layer):
* ``target_cycles`` (from ``--target-fps F --clock-mhz C``: C·1e6/F): each layer gets the
  fewest MAC lanes (PE·SIMD) that meet it, SIMD preferred on ties (wider ROM words, fewer
  accumulators);
* ``max_pes`` N: the fastest folding whose MAC lanes (PE·SIMD summed over layers) are <= N;
* neither: ``DEFAULT_TARGET_CYCLES`` (1024: an mnist-tfc-sized MLP then runs a frame in ~1k
  cycles with a few dozen lanes per layer).
With a board budget the target is relaxed (x1.25 steps) until the cost model fits.

Engines (``engine``, from ``--engine rom|const|auto``): every MAC layer records
``engine`` = ``"rom"`` (the folded MVU, hw/mvu.py) or ``"const"`` (the constant-weight
adder graph, hw/constmv.py: folding PE = N, SIMD = K, identity channel order, one vector
or output pixel per cycle), ``engine_cost`` (both engines' cost-model estimates: ROM at the
folding that meets the target, const at one vector per cycle) and, for const layers,
``const`` (the adder graph's size, see :func:`const_summary`). ``auto`` chooses per layer,
at the current target (so it is re-decided while a budget relaxes the target):

    const  iff  const meets the target (it always does: one vector per cycle),
                its LUTs alone fit the board's LUT budget, and
                score(const) < score(rom at the folding the target needs),

where ``score`` is, with a board budget, the largest fraction of any budgeted resource
(LUT, FF, DSP, BRAM bits) the layer takes -- the resource that binds -- and without one the
LUTs (block RAM then costs nothing, so the ROM engine keeps its weights for free). Under
``--max-pes`` the lanes bound the ROM engines only; ``auto`` then keeps every layer ROM.
"""
from __future__ import annotations

import math

import numpy as np

from accumulus.errors import UserError

from .. import cost as cost_model
from ..accumulators import group_channels, pe_widths
from ..addergraph import AdderGraph, csd_digits, digit_bound
from ..ir import MAC_KINDS, IntGraph, IntKind

DEFAULT_TARGET_CYCLES = 1024
ENGINES = ("rom", "const", "auto")
# Adder levels per pipeline stage of a constant-weight engine when no clock is known.
DEFAULT_REGISTER_EVERY = 4
# Estimated delay of one adder level (a ~12-bit carry chain plus routing), in ns; a stage
# gets 70% of the clock period (the rest: setup, clock skew, the stage's registers).
# Uncalibrated: the Fmax measurements in boards/ replace them.
NS_PER_ADDER_LEVEL = {"ice40": 5.0, "ecp5": 2.5, "xc7": 1.5, "default": 2.5}
MAX_REGISTER_EVERY = 8
# The greedy sharing of compiler/addergraph.py costs ~0.5 s at 3k CSD digits and grows
# quadratically with a channel's terms (a 784x64 layer: minutes); larger layers are built
# without sharing (recorded as ``const.cse``, which the top follows).
CSE_MAX_DIGITS = 8192


def register_every_for(clock_mhz: float | None, family: str | None) -> int:
    """Adder levels per pipeline stage for a clock (None: ``DEFAULT_REGISTER_EVERY``)."""
    if clock_mhz is None:
        return DEFAULT_REGISTER_EVERY
    ns = NS_PER_ADDER_LEVEL.get(family or "default", NS_PER_ADDER_LEVEL["default"])
    return max(1, min(MAX_REGISTER_EVERY, int(0.7 * 1000.0 / clock_mhz // ns)))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _pixels(layer) -> int:
    conv = layer.params.get("conv")
    return 1 if conv is None else conv["out_shape"][0] * conv["out_shape"][1]


def _simd_options(layer) -> list[int]:
    """SIMD values the layer's input stream can deliver at one beat per cycle. A conv's
    sliding-window generator (hw/swg.py) emits SIMD elements per beat only when SIMD divides
    the input channels C or is a whole number of pixels (a multiple of C dividing the window);
    any other divisor of the fan-in would be fed at gcd(SIMD, C) per beat, slower than the
    cycle model says, so it is not offered."""
    K = layer.params["fan_in"]
    conv = layer.params.get("conv")
    if conv is None:
        return _divisors(K)
    c = conv["in_shape"][2]
    window = conv["kernel"][0] * conv["kernel"][1]
    return [s for s in _divisors(K) if c % s == 0 or (s % c == 0 and window % (s // c) == 0)]


def _choose(layer, target: float) -> tuple[int, int]:
    N, K = layer.params["channels"], layer.params["fan_in"]
    pix = _pixels(layer)
    best = None
    for pe in _divisors(N):
        for simd in _simd_options(layer):
            cyc = (N // pe) * (K // simd) * pix
            if cyc <= target:
                key = (pe * simd, -simd)
                if best is None or key < best[0]:
                    best = (key, pe, simd)
    if best is None:
        return N, K
    return best[1], best[2]


def _stream_cycles(ig: IntGraph, layer) -> int:
    if layer.kind is IntKind.ARGMAX:
        return int(ig.tensors[layer.inputs[0]].shape[-1])
    if layer.kind in (IntKind.MAXPOOL, IntKind.AVGPOOL):
        return int(np.prod(layer.params["in_shape"]))
    return int(np.prod(ig.tensors[layer.output].shape))


def _beat_elems(ig: IntGraph, layer, producer_elems: int) -> int:
    """Elements per beat a stream layer takes: hw/top.py's engines without a folding of their
    own adopt their producer's beat when it divides their channels (argmax: its input
    frame), else the gcd; a reorder moves one element per beat."""
    if layer.kind is IntKind.REORDER:
        return 1
    shape = ig.tensors[layer.inputs[0]].shape
    channels = int(np.prod(shape)) if layer.kind is IntKind.ARGMAX else int(shape[-1])
    e = max(1, producer_elems)
    return e if channels % e == 0 else math.gcd(e, channels)


def _const_cycles(layer) -> int:
    """Cycles per frame of a constant-weight engine: one vector (conv: one output pixel) per
    cycle; a conv's window generator also takes one input pixel (C elements) per cycle."""
    conv = layer.params.get("conv")
    if conv is None:
        return 1
    h, w = conv["in_shape"][0], conv["in_shape"][1]
    return max(_pixels(layer), h * w)


def _thresholds(p) -> tuple[int, int]:
    rq = p["requant"]
    levels = np.asarray(rq["thresholds"]).shape[1] if rq and rq["kind"] == "thresholds" else 0
    return levels, (rq.get("threshold_bits", 0) if rq else 0)


def const_summary(layer, register_every: int, cse: bool | None = None,
                  solver: str = "csd") -> tuple[AdderGraph, dict]:
    """The adder graph the constant-weight engine builds for ``layer`` (exact widths) and
    its size as the plan records it (``layer["const"]``, docs/plan.md). ``cse`` None: share
    when the layer has at most ``CSE_MAX_DIGITS`` CSD digits. ``solver``: ``csd`` or
    ``da4ml`` (:class:`~accumulus.compiler.addergraph.AdderGraph`)."""
    p = layer.params
    w = np.asarray(p["weight"], dtype=np.int64)
    if cse is None:
        cse = sum(len(csd_digits(v)) for v in w.flat if v) <= CSE_MAX_DIGITS
    try:
        g = AdderGraph(w, p["input_type"], cse=cse, register_every=register_every, solver=solver)
    except ImportError as exc:
        raise UserError(f"--const-solver {solver}: {exc}") from None
    k = g.fan_in
    exact = [int(b) for b in p["acc"]["bits"]["exact"]]
    target = p["acc"]["bits"].get("target")
    bound = None if target is None else digit_bound(target, p["input_type"], p["weight_type"], k)
    acc_regs = sum(b for c, b in enumerate(exact) if g.outputs[c] is not None)
    summary = {
        "register_every": int(register_every), "cse": bool(cse), "solver": g.solver,
        "adders": len(g.adders), "adder_bits": int(sum(g.node_bits[k:])),
        "shared_subexpressions": int(g.shared), "adder_levels": int(g.max_level),
        "pipeline_depth": int(g.stages),
        "pipeline_register_bits": g.register_bits(), "acc_register_bits": int(acc_regs),
        "nonzero_weights": int(sum(g.nonzero_per_channel)), "csd_digits": int(sum(g.csd_per_channel)),
        "csd_digits_max": int(max(g.csd_per_channel, default=0)),
        "digit_bound": bound,
        "zero_channels": int(sum(1 for o in g.outputs if o is None)),
        "unused_inputs": int(k - len(g.used_inputs)),
    }
    summary.update(_requant_form(p, exact, w))
    if bound is not None and summary["csd_digits_max"] > bound:
        # exact <= P was checked by the size pass, and exact <= P implies the bound
        raise AssertionError(f"layer '{layer.name}': {summary['csd_digits_max']} CSD digits exceed the bound "
                             f"{bound} of P={target} (internal error)")
    return g, summary


def _requant_form(p, exact, w) -> dict:
    """The requant form a constant-weight layer gets (hw/requant.py): ``linear`` where every
    channel's thresholds have an exact linear form (compiler/linthresh.py), with its adder
    and quotient register bits, else ``parallel`` comparators; None without thresholds."""
    rq = p.get("requant")
    if not rq or rq.get("kind") != "thresholds":
        return {"requant_form": None if not rq else rq.get("kind"), "requant_adder_bits": 0, "requant_q_bits": 0}
    from ..accumulators import exact_range
    from ..linthresh import layer_linear_cost

    lo, hi = exact_range(w, p["input_type"])
    lin = layer_linear_cost(np.asarray(rq["thresholds"]), np.asarray(rq["descending"]), exact, lo, hi)
    if lin is None:
        return {"requant_form": "parallel", "requant_adder_bits": 0, "requant_q_bits": 0}
    return {"requant_form": "linear", "requant_adder_bits": lin["adder_bits"], "requant_q_bits": lin["q_bits"]}


def _rom_cost(layer, pe, simd, coeff):
    p = layer.params
    exact = np.asarray(p["acc"]["bits"]["exact"])
    order = group_channels(exact, pe)
    widths = pe_widths(exact, pe, order)
    levels, tb = _thresholds(p)
    c = cost_model.mac_layer_cost(p["weight_type"].bits, p["input_type"].bits, p["channels"],
                                  p["fan_in"], pe, simd, widths, levels, tb, coeff)
    return _with_swg(c, p, simd, coeff)


def _const_cost(layer, summary, coeff):
    levels, tb = _thresholds(layer.params)
    c = cost_model.const_graph_cost(summary, layer.params["channels"], levels, tb, coeff)
    return _with_swg(c, layer.params, layer.params["fan_in"], coeff)    # a whole window per beat


def _with_swg(c: dict, p, simd: int, coeff) -> dict:
    """A conv layer's cost plus its sliding-window generator's (compiler/cost.py swg_cost)."""
    if not p.get("conv"):
        return c
    w = cost_model.swg_cost(p["conv"], p["input_type"].bits, simd, coeff)
    return {k: c[k] + w.get(k, 0) for k in c}


def _score(c, budget) -> float:
    if budget:
        fr = [c[k] / budget[k] for k in cost_model.RESOURCES if budget.get(k)]
        if fr:
            return max(fr)
    return c["lut"]


class _ConstGraphs:
    """A layer's adder graph, built lazily: ``plain`` without sharing (fast, an upper bound on
    the adders), ``best`` as the engine builds it (with sharing up to ``CSE_MAX_DIGITS``)."""

    def __init__(self, layer, register_every: int, solver: str = "csd"):
        self.layer, self.register_every, self.solver = layer, register_every, solver
        self._plain = self._best = None

    def plain(self) -> dict:
        if self._best is not None and not self._best["cse"]:
            return self._best
        if self._plain is None:
            self._plain = const_summary(self.layer, self.register_every, cse=False)[1]
        return self._plain

    def best(self) -> dict:
        if self._best is None:
            self._best = const_summary(self.layer, self.register_every, solver=self.solver)[1]
        return self._best

    def known(self) -> dict:
        """The best summary computed so far."""
        return self._best if self._best is not None else self.plain()


# Sharing removed 30% of the adder bits of a 64x64 layer (benchmarks/constmv_vs_rom.py:
# 19,982 -> 13,934); a layer whose unshared graph costs more than twice the ROM engine is
# not built with sharing just to be compared.
SHARING_BOUND = 0.5


def _assign(ig: IntGraph, target: float, engine: str = "rom", consts=None, coeff=None, budget=None):
    """layer name -> (engine, pe, simd) at ``target`` cycles per frame (module docstring)."""
    out = {}
    for layer in ig.layers:
        if layer.kind not in MAC_KINDS:
            continue
        pe, simd = _choose(layer, target)
        if engine == "const":
            out[layer.name] = ("const", layer.params["channels"], layer.params["fan_in"])
            continue
        if engine == "auto" and consts is not None:
            rc = _rom_cost(layer, pe, simd, coeff)
            graphs = consts[layer.name]
            cc = _const_cost(layer, graphs.plain(), coeff)
            if SHARING_BOUND * _score(cc, budget) < _score(rc, budget):
                cc = _const_cost(layer, graphs.best(), coeff)
            lut_ok = not (budget and budget.get("lut")) or cc["lut"] <= budget["lut"]
            if lut_ok and _score(cc, budget) < _score(rc, budget):
                out[layer.name] = ("const", layer.params["channels"], layer.params["fan_in"])
                continue
        out[layer.name] = ("rom", pe, simd)
    return out


def _cost(ig: IntGraph, choice, coeff, consts):
    costs = []
    for layer in ig.layers:
        if layer.kind in MAC_KINDS:
            eng, pe, simd = choice[layer.name]
            if eng == "const":
                costs.append(_const_cost(layer, consts[layer.name].best(), coeff))
            else:
                costs.append(_rom_cost(layer, pe, simd, coeff))
        elif layer.kind is IntKind.REORDER:
            costs.append(cost_model.reorder_layer_cost(ig.tensors[layer.output].type.bits,
                                                       layer.params["in_shape"], coeff))
        else:
            costs.append(cost_model.stream_layer_cost(ig.tensors[layer.output].type.bits, coeff))
    return cost_model.total(costs)


def _fits(total, budget) -> list[str]:
    if not budget:
        return []
    return [k for k in cost_model.RESOURCES if k in budget and budget[k] is not None and total[k] > budget[k]]


def fold(ig: IntGraph, target_cycles: float | None = None, max_pes: int | None = None,
         budget: dict | None = None, family: str | None = None, engine: str = "auto",
         clock_mhz: float | None = None, const_solver: str = "csd") -> tuple[IntGraph, dict]:
    """Returns the folded graph and an estimate dict (cycles, bottleneck, cost, notes).

    ``clock_mhz``: the clock the constant-weight engines are pipelined for
    (:func:`register_every_for`). ``const_solver``: who builds their adder graphs
    (``csd`` or ``da4ml``, :class:`~accumulus.compiler.addergraph.AdderGraph`)."""
    if const_solver not in AdderGraph.SOLVERS:
        raise UserError(f"--const-solver {const_solver!r}: choose one of {' | '.join(AdderGraph.SOLVERS)}")
    if target_cycles is not None and (not math.isfinite(target_cycles) or target_cycles <= 0):
        raise UserError(f"target cycles per frame {target_cycles} must be positive")
    if max_pes is not None and max_pes < 1:
        raise UserError(f"--max-pes {max_pes} must be >= 1")
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: choose one of {' | '.join(ENGINES)}")
    coeff = cost_model.load_coefficients(family)
    macs = [l for l in ig.layers if l.kind in MAC_KINDS]
    notes = []
    for l in macs:
        conv = l.params.get("conv")
        if engine == "const" and conv is not None and conv.get("groups", 1) != 1:
            raise UserError(f"--engine const: layer '{l.name}' is a grouped convolution (groups={conv['groups']}), "
                            "which the constant-weight engine does not build; use --engine auto or rom")
    every = register_every_for(clock_mhz, family)
    # the adder graphs do not depend on the target: built once (under every engine, so that
    # the plan holds both engines' costs)
    consts = None
    if macs:
        consts = {l.name: _ConstGraphs(l, every, const_solver) for l in macs
                  if (l.params.get("conv") or {}).get("groups", 1) == 1}
    auto = "auto" if max_pes is None else "rom"
    mode = engine if engine != "auto" else auto

    def assign(t):
        return _assign(ig, t, mode, consts, coeff, budget)

    def rom_lanes(ch):
        return sum(pe * simd for e, pe, simd in ch.values() if e == "rom")

    worst = max([(l.params["channels"] * l.params["fan_in"] * _pixels(l)) for l in macs] + [1])
    if max_pes is not None:
        if max_pes < len(macs) and mode == "rom":
            raise UserError(f"--max-pes {max_pes}: the model has {len(macs)} MAC layers, each needs at least one lane")
        lo, hi = 1, worst
        while lo < hi:
            mid = (lo + hi) // 2
            if rom_lanes(assign(mid)) <= max_pes:
                hi = mid
            else:
                lo = mid + 1
        target = float(lo)
    else:
        target = float(target_cycles if target_cycles is not None else DEFAULT_TARGET_CYCLES)
    choice = assign(target)
    total = _cost(ig, choice, coeff, consts)
    over = _fits(total, budget)
    relaxed = target
    # every layer constant-weight: no folding to relax
    while over and relaxed < worst and mode != "const":
        relaxed *= 1.25
        choice = assign(relaxed)
        total = _cost(ig, choice, coeff, consts)
        over = _fits(total, budget)
    if relaxed != target:
        notes.append(f"target relaxed from {target:.0f} to {relaxed:.0f} cycles per frame to fit the board budget")
    if over and mode == "const":
        notes.append("the constant-weight design (--engine const) exceeds the board budget in " + ", ".join(over))
    elif over:
        notes.append("even the most folded design exceeds the board budget in " + ", ".join(over))
    layers = []
    # Elements per beat on each tensor, for the stream layers' cycles: a constant-weight
    # engine emits all N channels per beat and the layers after it take them at that width.
    # After a ROM engine the estimate stays FINN's one element per cycle.
    beat = {ig.input["tensor"]: 1}
    for layer in ig.layers:
        if layer.kind in MAC_KINDS:
            eng, pe, simd = choice[layer.name]
            beat[layer.output] = layer.params["channels"] if eng == "const" else 1
            exact = np.asarray(layer.params["acc"]["bits"]["exact"])
            p = layer.params
            rpe, rsimd = _choose(layer, relaxed) if eng == "const" else (pe, simd)
            rom = _rom_cost(layer, rpe, rsimd, coeff)
            costs = {"rom": {**_rounded(rom), "pe": rpe, "simd": rsimd,
                             "cycles_per_frame": (p["channels"] // rpe) * (p["fan_in"] // rsimd) * _pixels(layer)}}
            if consts is not None and layer.name in consts:
                graph = consts[layer.name].best() if eng == "const" else consts[layer.name].known()
                costs["const"] = {**_rounded(_const_cost(layer, graph, coeff)),
                                  "cycles_per_frame": _const_cycles(layer), "cse": graph["cse"]}
            extra = {"engine": eng, "engine_cost": costs}
            if eng == "const":
                order = np.arange(p["channels"])
                cyc = _const_cycles(layer)
                extra["const"] = consts[layer.name].best()
            else:
                order = group_channels(exact, pe)
                cyc = (p["channels"] // pe) * (p["fan_in"] // simd) * _pixels(layer)
            layer = layer.with_params(folding={"pe": pe, "simd": simd, "channel_order": order.tolist(),
                                               "pe_acc_bits": pe_widths(exact, pe, order).tolist()},
                                      cycles_per_frame=int(cyc), **extra)
        else:
            e = _beat_elems(ig, layer, beat.get(layer.inputs[0], 1))
            beat[layer.output] = 1 if layer.kind is IntKind.ARGMAX else e
            layer = layer.with_params(cycles_per_frame=-(-_stream_cycles(ig, layer) // e))
        layers.append(layer)
    bott = max(layers, key=lambda l: l.params["cycles_per_frame"]) if layers else None
    engines = [choice[l.name][0] for l in macs]
    estimate = {"cycles_per_frame": int(bott.params["cycles_per_frame"]) if bott else 0,
                "bottleneck": bott.name if bott else None, "target_cycles": relaxed,
                "cost": {k: round(v, 1) for k, v in total.items()}, "cost_family": family or "default",
                "mac_lanes": int(sum(pe * simd for _, pe, simd in choice.values())), "notes": notes,
                "engine": engine, "const_layers": int(engines.count("const")), "register_every": every}
    return ig.with_layers(layers), estimate


def _rounded(c: dict) -> dict:
    return {k: round(float(v), 1) for k, v in c.items()}
