"""A channel's threshold requantization as one linear step: exact replacements for
comparator banks in one-vector-per-cycle engines (numpy only).

A threshold requantizer counts the thresholds an accumulator has passed: ascending,
``count(a) = #{j < limit : t_j <= a}``; descending, ``#{j < limit : t_j >= a}``
(hw/requant.py, the golden model's semantics). A one-vector-per-cycle engine builds that
with ``T`` comparators per channel (FINN's parallel form): on digits-mlp's constant-weight
build 64 x 15 comparators of 12-14 bits per hidden layer, as many carry cells as the layer's
whole adder graph.

Thresholds made by a uniform quantizer after an affine map (BatchNorm, scales) are an
arithmetic progression rounded to integers, and such a count is a floor of a linear form:
find integers ``m > 0, b, s`` with, for every accumulator value ``a`` of the channel's exact
range ``[lo, hi]`` (``a' = a``, or ``-a`` for a descending channel)::

    count(a) = clip(floor((m·a' + b) / 2^s), c0, c1),

``c0`` the count at the bottom of the range and ``c1`` at the top. With the in-range step
points ``u_1 < ... < u_n`` (the thresholds in ``(lo', hi']``), a non-decreasing ``f`` is
exact on the range iff ``f(u_j) >= (c0 + j)·2^s`` and ``f(u_j - 1) <= (c0 + j)·2^s - 1``
for every ``j`` (monotonicity fills in the rest, the clip the outside). For fixed ``s`` these
are linear in ``(m, b)``: ``m`` must lie in ``[max_{k<j} ceil(((j-k)2^s + 1) / (u_j - u_k + 1)),
min_{k>j} floor(((k-j)2^s - 1) / (u_k - u_j - 1))]`` and then ``b`` in
``[max_j ((c0+j)2^s - m·u_j), min_j ((c0+j)2^s - 1 - m·(u_j - 1))]``. The smallest feasible
``s`` is taken, and within it the ``m`` and ``b`` with the fewest canonical signed digits
(each nonzero digit of ``m`` beyond the first is one adder). Two thresholds at the same
value (a jump of two codes) have no such form: the channel keeps its comparators.

The hardware (hw/requant.py ``linear``) multiplies by the constant ``m`` with shifts and adds,
adds ``b``, drops ``s`` low bits and clips: about a third of the comparators' carry cells on
digits-mlp. Every fit is checked against the threshold count over the channel's whole range
(:func:`check_fit`) before it is used.
"""
from __future__ import annotations

import numpy as np

from .addergraph import csd_digits
from .types import signed_bits

__all__ = ["fit_channel", "fit_layer", "linear_counts", "check_fit", "MAX_SHIFT", "fit_cost", "stored_thresholds",
           "layer_linear_cost"]

MAX_SHIFT = 30
_CANDIDATES = 4096          # values of m (and b) searched for the fewest CSD digits


def _threshold_count(t: np.ndarray, desc: bool, limit: int, a: np.ndarray) -> np.ndarray:
    live = np.asarray(t[:limit], dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)[:, None]
    return ((live[None, :] >= a) if desc else (live[None, :] <= a)).sum(axis=1)


def _fewest_digits(lo: int, hi: int) -> int:
    """The value in ``[lo, hi]`` with the fewest CSD digits (the smallest magnitude on ties),
    searched among the ``_CANDIDATES`` nearest to zero plus every power of two in range."""
    if lo <= 0 <= hi:
        return 0
    cands = set()
    if hi - lo < _CANDIDATES:
        cands.update(range(lo, hi + 1))
    else:
        start = lo if lo > 0 else hi - _CANDIDATES + 1
        cands.update(range(start, start + _CANDIDATES))
    for e in range(0, 62):
        for v in (1 << e, -(1 << e)):
            if lo <= v <= hi:
                cands.add(v)
    return min(cands, key=lambda v: (len(csd_digits(v)), abs(v)))


def fit_channel(t, desc: bool, limit: int, lo: int, hi: int) -> dict | None:
    """``{"m", "b", "s", "c0", "c1", "desc"}`` with ``count(a) = clip((m·a' + b) >> s, c0, c1)``
    on ``[lo, hi]`` (module docstring), or None when no such form exists up to ``MAX_SHIFT``."""
    t = np.asarray(t, dtype=np.int64)[:int(limit)]
    lo, hi = int(lo), int(hi)
    # in the a' = ±a coordinate every channel counts ascending: #{u <= a'}
    u_all = -t if desc else t
    plo, phi = (-hi, -lo) if desc else (lo, hi)
    c0 = int((u_all <= plo).sum())
    u = np.sort(u_all[(u_all > plo) & (u_all <= phi)])
    c1 = c0 + int(u.size)
    base = {"c0": c0, "c1": c1, "desc": bool(desc)}
    if u.size == 0:
        return {**base, "m": 0, "b": c0, "s": 0}
    if u.size > 1 and np.any(np.diff(u) == 0):
        return None
    n = u.size
    jj = np.arange(1, n + 1, dtype=np.int64)
    ka, kk = np.triu_indices(n, 1)                     # pairs a < k
    dj = (kk - ka).astype(np.int64)
    du = (u[kk] - u[ka]).astype(np.int64)              # >= 1
    best = None
    for s in range(0, MAX_SHIFT + 1):
        S = np.int64(1) << np.int64(s)
        m_lo = 1 if n == 1 else max(1, int(np.max(-(-(dj * S + 1) // (du + 1)))))
        up = du > 1
        m_hi = int(np.min((dj[up] * S - 1) // (du[up] - 1))) if up.any() else None
        if m_hi is not None and m_lo > m_hi:
            continue
        top = min(m_hi, m_lo + _CANDIDATES) if m_hi is not None else m_lo + _CANDIDATES
        m = b = None
        for tried, cand in enumerate(sorted(range(m_lo, top + 1), key=lambda v: (len(csd_digits(v)), v))):
            c = np.int64(cand)
            b_lo = int(np.max((c0 + jj) * S - c * u))
            b_hi = int(np.min((c0 + jj) * S - 1 - c * (u - 1)))
            if b_lo <= b_hi:
                m, b = cand, _fewest_digits(b_lo, b_hi)
                break
            if tried >= 64:
                break
        if m is None:
            continue
        cand = {**base, "m": int(m), "b": int(b), "s": s}
        if best is None or len(csd_digits(m)) < len(csd_digits(best["m"])):
            best = cand
        if s >= best["s"] + 3:
            break
    return best


def linear_counts(fit: dict, a) -> np.ndarray:
    """The count of :func:`fit_channel`'s form for accumulators ``a`` (int64)."""
    a = np.asarray(a, dtype=np.int64)
    ap = -a if fit["desc"] else a
    v = ap * np.int64(fit["m"]) + np.int64(fit["b"])
    return np.clip(v >> np.int64(fit["s"]), fit["c0"], fit["c1"])


def check_fit(fit: dict, t, desc: bool, limit: int, lo: int, hi: int, max_values: int = 1 << 22) -> bool:
    """The fit against the threshold count on every value of ``[lo, hi]`` (in chunks);
    ranges larger than ``max_values`` are checked at the step points, their neighbours and
    both ends, which with monotonicity covers every value."""
    lo, hi = int(lo), int(hi)
    if hi - lo + 1 <= max_values:
        for start in range(lo, hi + 1, 1 << 16):
            a = np.arange(start, min(hi, start + (1 << 16) - 1) + 1, dtype=np.int64)
            if not np.array_equal(linear_counts(fit, a), _threshold_count(t, desc, limit, a)):
                return False
        return True
    tt = np.asarray(t, dtype=np.int64)[:int(limit)]
    pts = np.unique(np.clip(np.concatenate([tt - 1, tt, tt + 1, [lo, hi]]), lo, hi))
    return bool(np.array_equal(linear_counts(fit, pts), _threshold_count(t, desc, limit, pts)))


def fit_cost(fit: dict, lo: int, hi: int) -> dict:
    """Adders and adder bits of the form in hardware: ``(digits(m) - 1)`` shift-adds and,
    with ``b != 0``, one constant add, each at the width of the sum's exact range."""
    lo, hi = int(lo), int(hi)
    if fit["m"] == 0:
        return {"adders": 0, "adder_bits": 0, "q_bits": 0}
    ap_lo, ap_hi = (-hi, -lo) if fit["desc"] else (lo, hi)
    m, b = fit["m"], fit["b"]
    v_lo, v_hi = min(m * ap_lo, m * ap_hi) + b, max(m * ap_lo, m * ap_hi) + b
    w = signed_bits(min(v_lo, m * ap_lo, m * ap_hi, 0), max(v_hi, m * ap_lo, m * ap_hi, 0))
    adds = len(csd_digits(m)) - 1 + (1 if b else 0)
    q_bits = signed_bits(v_lo >> fit["s"], v_hi >> fit["s"])
    return {"adders": adds, "adder_bits": adds * w, "q_bits": q_bits}


def stored_thresholds(thresholds, descending, acc_bits) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds clipped to each channel's accumulator width and the count of those that
    can ever count (``limit``), as hw/requant.py stores them."""
    t = np.asarray(thresholds, dtype=np.int64)
    desc = np.asarray(descending, dtype=bool)
    stored, limit = np.empty_like(t), np.empty(t.shape[0], dtype=np.int64)
    for c, b in enumerate(acc_bits):
        amin, amax = -(1 << (int(b) - 1)), (1 << (int(b) - 1)) - 1
        stored[c] = np.clip(t[c], amin, amax)
        limit[c] = int((t[c] >= amin).sum() if desc[c] else (t[c] <= amax).sum())
    return stored, limit


def layer_linear_cost(thresholds, descending, acc_bits, lo, hi) -> dict | None:
    """The linear form's size for a layer (compiler/passes/fold.py's estimate): adder bits
    and registered quotient bits summed over channels; None when it has no linear form."""
    stored, limit = stored_thresholds(thresholds, descending, acc_bits)
    fits = fit_layer(stored, descending, limit, lo, hi)
    if fits is None:
        return None
    costs = [fit_cost(f, a, b) for f, a, b in zip(fits, lo, hi)]
    return {"adder_bits": int(sum(c["adder_bits"] for c in costs)), "q_bits": int(sum(c["q_bits"] for c in costs)),
            "adders": int(sum(c["adders"] for c in costs))}


def fit_layer(thresholds, descending, limit, lo, hi) -> list[dict] | None:
    """:func:`fit_channel` for every channel, each checked (:func:`check_fit`); None when
    some channel has no linear form (the layer keeps its comparators)."""
    fits = []
    for c in range(len(thresholds)):
        f = fit_channel(thresholds[c], bool(descending[c]), int(limit[c]), int(lo[c]), int(hi[c]))
        if f is None or not check_fit(f, thresholds[c], bool(descending[c]), int(limit[c]), int(lo[c]), int(hi[c])):
            return None
        fits.append(f)
    return fits
