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
"""
