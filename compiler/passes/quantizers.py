"""Quantizers as exact functions ``real value -> integer code`` and threshold derivation.

A requantization in accumulus is ``code = q(f(acc))``: ``f`` is the chain of per-channel
float ops between an integer tensor and the next quantizer (affine maps from scales,
zero points, bias, batch-norm, Mul/Div/Sub; ReLU; Clip), ``q`` the quantizer. Both are
monotone, so ``q∘f`` is a step function of ``acc`` described exactly by thresholds. Every
value is a python ``Fraction`` made from the float32 constants of the graph, so the
derivation is exact rational arithmetic (DESIGN.md), ties resolved by ``q``'s rounding mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from accumulus.errors import UserError

from ..golden import round_float
from ..types import IntType

__all__ = ["Affine", "Relu", "Clip", "Chain", "Quantizer", "round_fraction", "derive_thresholds", "frac"]


def frac(v) -> Fraction:
    """Exact rational value of a float (float32 values are exact in float64)."""
    f = float(v)
    if not math.isfinite(f):
        raise UserError(f"constant {v} is not finite")
    return Fraction(f)


def round_fraction(v: Fraction, mode: str) -> int:
    mode = mode.upper()
    if mode in ("ROUND", "HALF_EVEN"):
        return round(v)                      # Fraction.__round__: half to even
    if mode == "FLOOR":
        return math.floor(v)
    if mode == "CEIL":
        return math.ceil(v)
    if mode in ("ROUND_TO_ZERO", "DOWN"):
        return int(v)
    s = 1 if v >= 0 else -1
    if mode == "UP":
        return s * math.ceil(abs(v))
    if mode == "HALF_UP":
        return s * math.floor(abs(v) + Fraction(1, 2))
    if mode == "HALF_DOWN":
        return s * math.ceil(abs(v) - Fraction(1, 2))
    raise UserError(f"unknown rounding_mode '{mode}'")


# -- chain elements (per plan channel) ----------------------------------------------------------
@dataclass(frozen=True)
class Affine:
    a: tuple[Fraction, ...]
    b: tuple[Fraction, ...]

    def exact(self, c: int, v: Fraction) -> Fraction:
        return self.a[c] * v + self.b[c]

    def approx(self, v: np.ndarray) -> np.ndarray:          # v: (C, T)
        return np.array([float(x) for x in self.a])[:, None] * v + np.array([float(x) for x in self.b])[:, None]

    def then(self, other: "Affine") -> "Affine":
        return Affine(tuple(o * s for s, o in zip(self.a, other.a)),
                      tuple(oa * sb + ob for sb, oa, ob in zip(self.b, other.a, other.b)))


@dataclass(frozen=True)
class Relu:
    def exact(self, c, v):
        return v if v > 0 else Fraction(0)

    def approx(self, v):
        return np.maximum(v, 0.0)


@dataclass(frozen=True)
class Clip:
    lo: Fraction | None
    hi: Fraction | None

    def exact(self, c, v):
        if self.lo is not None and v < self.lo:
            v = self.lo
        if self.hi is not None and v > self.hi:
            v = self.hi
        return v

    def approx(self, v):
        return np.clip(v, -np.inf if self.lo is None else float(self.lo), np.inf if self.hi is None else float(self.hi))


Chain = tuple  # of Affine | Relu | Clip


def chain_append(chain: Chain, elem) -> Chain:
    if isinstance(elem, Affine) and chain and isinstance(chain[-1], Affine):
        return chain[:-1] + (chain[-1].then(elem),)
    return chain + (elem,)


def chain_direction(chain: Chain, channels: int) -> np.ndarray:
    """+1 nondecreasing, -1 nonincreasing, 0 constant, per channel."""
    d = np.ones(channels, dtype=np.int64)
    for e in chain:
        if isinstance(e, Affine):
            d *= np.array([(x > 0) - (x < 0) for x in e.a], dtype=np.int64)
    return d


def chain_exact(chain: Chain, c: int, v) -> Fraction:
    v = Fraction(v)
    for e in chain:
        v = e.exact(c, v)
    return v


def chain_approx(chain: Chain, v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    for e in chain:
        v = e.approx(v)
    return v


def is_linear(chain: Chain) -> bool:
    return all(isinstance(e, Affine) for e in chain)


def linear_of(chain: Chain, channels: int) -> Affine:
    if not chain:
        return Affine((Fraction(1),) * channels, (Fraction(0),) * channels)
    assert len(chain) == 1 and isinstance(chain[0], Affine)
    return chain[0]


# -- quantizers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantizer:
    """``code = q(c, v)``, nondecreasing in ``v``; codes are ``out_min + step*i``.

    ``out_chain`` maps the code back to the ONNX tensor's value (dequantization).
    """

    kind: str                       # quant | bipolar | qlinear | multithreshold | trunc1 | trunc2
    out_type: IntType
    step: int
    out_chain: Chain
    scale: tuple = ()               # per channel Fractions (quant, qlinear, trunc: input scale)
    zero_point: tuple = ()
    rounding_mode: str = "ROUND"
    thresholds: tuple = ()          # multithreshold: per channel tuple of Fractions
    bits: int = 0
    trunc_scale: int = 1            # trunc: the power-of-two divisor

    @property
    def levels(self) -> int:
        return (self.out_type.max - self.out_type.min) // self.step

    def exact(self, c: int, v: Fraction) -> int:
        t = self.out_type
        if self.kind == "bipolar":
            return 1 if v >= 0 else -1
        if self.kind == "multithreshold":
            return sum(1 for th in self.thresholds[c] if v >= th)
        if self.kind == "qlinear":
            y = round(v / self.scale[c]) + self.zero_point[c]
            return min(max(y, t.min), t.max)
        y = v / self.scale[c] + self.zero_point[c]
        if self.kind == "quant":
            if self.bits == 1 and t.signed:
                return 1 if y >= 0 else -1
            return round_fraction(min(max(y, Fraction(t.min)), Fraction(t.max)), self.rounding_mode)
        y = Fraction(round(y), self.trunc_scale)                # trunc: round, then divide
        if self.kind == "trunc2":
            y = min(max(y, Fraction(t.min)), Fraction(t.max))
        code = round_fraction(y, self.rounding_mode)
        return min(max(code, t.min), t.max)                    # trunc1: range from the input

    def approx(self, v: np.ndarray) -> np.ndarray:
        """Float64 version for the threshold search's first guess (exactness restored after)."""
        t = self.out_type
        if self.kind == "bipolar":
            return np.where(v >= 0, 1.0, -1.0)
        if self.kind == "multithreshold":
            th = np.array([[float(x) for x in row] for row in self.thresholds])      # (C, T)
            return (v[:, :, None] >= th[:, None, :]).sum(axis=-1).astype(np.float64)
        s = np.array([float(x) for x in self.scale])[:, None]
        z = np.array([float(x) for x in self.zero_point])[:, None]
        if self.kind == "qlinear":
            return np.clip(np.round(v / s) + z, t.min, t.max)
        y = v / s + z
        if self.kind == "quant":
            if self.bits == 1 and t.signed:
                return np.where(y >= 0, 1.0, -1.0)
            return round_float(np.clip(y, t.min, t.max), self.rounding_mode)
        y = np.round(y) / self.trunc_scale
        return np.clip(round_float(np.clip(y, t.min, t.max), self.rounding_mode), t.min, t.max)


def derive_thresholds(chain: Chain, q: Quantizer, lo: np.ndarray, hi: np.ndarray):
    """Thresholds reproducing ``q(chain(acc))`` for every integer acc in [lo, hi] per channel.

    Returns ``(thresholds (C, T) int64, descending (C,) bool)``; ascending rows give
    ``code = out_min + step·#{t <= acc}`` and are clipped to [lo, hi+1]; descending rows
    give ``out_min + step·#{t >= acc}`` and are clipped to [lo-1, hi].
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    C = lo.size
    T = q.levels
    omin, step = q.out_type.min, q.step
    direction = chain_direction(chain, C)
    desc = direction < 0
    k = omin + step * np.arange(1, T + 1)[None, :]            # level reached at threshold i

    def code_exact(c, acc):
        return q.exact(c, chain_exact(chain, c, int(acc)))

    # float bisection for all (c, i) at once: the smallest acc with code >= k (ascending),
    # the largest acc with code >= k (descending)
    a = np.broadcast_to(lo[:, None], (C, T)).copy()
    b = np.broadcast_to(hi[:, None] + 1, (C, T)).copy()
    d = desc[:, None]
    a = np.where(d, lo[:, None] - 1, a)
    b = np.where(d, hi[:, None], b)
    for _ in range(80):
        if not np.any(a < b):
            break
        mid = np.where(d, (a + b + 1) // 2, (a + b) // 2)
        codes = q.approx(chain_approx(chain, mid.astype(np.float64)))
        ok = codes >= k
        # ascending: ok -> search left half; descending: ok -> search right half
        a = np.where(d, np.where(ok, mid, a), np.where(ok, a, mid + 1))
        b = np.where(d, np.where(ok, b, mid - 1), np.where(ok, mid, b))
    t = a
    # exact fix-up: a threshold is right iff the code steps across k exactly there
    for c in range(C):
        for i in range(T):
            kk = int(k[0, i])
            t[c, i] = _exact_threshold(code_exact, c, kk, int(t[c, i]), int(lo[c]), int(hi[c]), bool(desc[c]))
    return t, desc


def _exact_threshold(code, c, k, guess, lo, hi, desc):
    if not desc:
        def good(t):
            return (t == lo or code(c, t - 1) < k) and (t == hi + 1 or code(c, t) >= k)
        if lo <= guess <= hi + 1 and good(guess):
            return guess
        a, b = lo, hi + 1
        while a < b:
            m = (a + b) // 2
            if code(c, m) >= k:
                b = m
            else:
                a = m + 1
        return a
    def good_d(t):
        return (t == hi or code(c, t + 1) < k) and (t == lo - 1 or code(c, t) >= k)
    if lo - 1 <= guess <= hi and good_d(guess):
        return guess
    a, b = lo - 1, hi
    while a < b:
        m = (a + b + 1) // 2
        if code(c, m) >= k:
            a = m
        else:
            b = m - 1
    return a
