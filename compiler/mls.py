"""The MLS (multi-level scaling) low-bit tensor format and its integer dot product.

MLS is the format of Zhong et al., "Exploring the Potential of Low-bit Training of
Convolutional Neural Networks" (2020): a tensor is a float tensor scale ``S_t`` times a
power-of-two group scale ``S_g`` per group of ``G`` channels times small
sign/exponent/mantissa elements, so that the products inside a group are "nearly fixed
point". An element's value is

    x = S_t * 2^-g * (-1)^s * 2^-e * (1 + m / 2^M)        (or exactly 0: the zero flag)

with integer codes ``s`` (1 bit), ``e`` in ``[0, 2^E - 1]`` (E bits), ``m`` in
``[0, 2^M - 1]`` (M bits), ``z`` (1 = zero; a zero element has ``s = e = m = 0``) and a
group exponent ``g`` in ``[0, 2^Eg - 1]`` (Eg bits). Element magnitudes lie in
``[2^-(2^E-1), 2 - 2^-M]`` relative to ``S_t * S_g``.

Groups (this module's convention, one for every tensor): axis 0 is the outer axis (output
channel of a weight, sample of an activation), axis 1 the channel axis; a group is one
index of axis 0 and ``G`` consecutive channels, over *all* remaining axes (a weight's
``kh x kw`` taps, an activation's ``H x W`` pixels). A convolution's partial sum over one
group of input channels and the whole kernel window therefore shares one product of group
scales, which is what makes the intra-group accumulator exact and fixed point.

Dynamic quantization (the paper's): ``S_t = max|x|`` (in float32, the dtype of the
tensor), ``S_g = 2^-g`` with ``g = floor(-log2(max_group|x| / S_t))`` clipped to the Eg-bit
range, and decreased by one when the group maximum would round up out of the element range
(nearest rounding) or lies above the largest element (stochastic rounding); a group whose
elements all round to zero gets ``g = 0`` (one code per value). Elements round
to nearest, ties to even mantissa, or stochastically (unbiased, for gradients). Below the
smallest element ``2^-(2^E-1)`` there are no subnormals: nearest rounding goes to 0 or the
smallest element (a tie goes to 0), stochastic rounding picks the smallest element with
probability ``y / 2^-(2^E-1)``. Rounding decisions are exact for float32 inputs: the
quotient ``|x| / S_t`` of two float32 values is computed in float64, which cannot cross a
rounding boundary of an element with at most 24 mantissa bits.

Integer dot product (:func:`mls_conv2d`, :func:`mls_linear`): for each pair of elements,
XOR the signs, add the exponents, multiply the (M+1)-bit mantissas ``(2^M + m)``, and shift
the ``2M+2``-bit product left by ``D - e_w - e_x`` (``D = 2^(E+1) - 2``, the largest
exponent sum) into an intra-group accumulator of

    (2M + 2) + (2^(E+1) - 2) + ceil(log2(G * kh * kw)) + 1   bits

(product, alignment shift, sum of ``G*kh*kw`` terms, sign). Across groups, each group sum is
shifted left by ``2*(2^Eg - 1) - g_w - g_x`` and added into a dot accumulator of the group
width plus ``2*(2^Eg - 1) + ceil(log2(groups))`` bits. The real value of the dot
accumulator ``T`` is ``T * 2^-(2M + D + 2*(2^Eg-1)) * S_t,w * S_t,x``: the tensor scales are
applied once per output. Both widths are bounds on the magnitude of every partial sum in
any order, so the accumulators never wrap; :func:`mls_conv2d` checks it.

numpy only (compiler/ layering): quant/mls.py adds the PyTorch quantizer and autograd.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from accumulus.errors import UserError

from .accumulators import ceil_log2

__all__ = ["MLSFormat", "MLSCodes", "MLSDotResult", "quantize", "quantize_int", "fake_quantize", "dequantize",
           "dequantize_exact",
           "group_shape", "element_integers", "mls_product", "mls_conv2d", "mls_linear",
           "worst_case_codes", "DEFAULT_FORMAT", "FORMAT_1M2E", "FORMAT_4M2E"]


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"MLSFormat.{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"MLSFormat.{name} must be {rng}, got {value}")
    return int(value)


@dataclass(frozen=True)
class MLSFormat:
    """Parameters of an MLS format.

    Parameters
    ----------
    mantissa_bits : int
        ``M``, element mantissa bits (the paper's "1M" / "4M").
    exponent_bits : int
        ``E``, element exponent bits (the paper's "2E").
    group_size : int
        ``G``, channels per group scale.
    group_bits : int
        ``Eg``, bits of the group exponent (the group scale ranges over ``2^0 .. 2^-(2^Eg-1)``).

    The defaults are the paper's 1M2E element format with groups of 4 channels and 2-bit
    group exponents (``--mls 1,2,4,2``); :data:`FORMAT_4M2E` is its 4M2E variant.
    """

    mantissa_bits: int = 1
    exponent_bits: int = 2
    group_size: int = 4
    group_bits: int = 2

    def __post_init__(self):
        _check_int("mantissa_bits", self.mantissa_bits, 0, 23)    # element grid within float32
        _check_int("exponent_bits", self.exponent_bits, 1, 5)
        _check_int("group_size", self.group_size, 1)
        _check_int("group_bits", self.group_bits, 0, 5)

    @classmethod
    def parse(cls, text: str) -> "MLSFormat":
        """``"M,E,G,Eg"`` (the CLI's ``--mls``), e.g. ``"1,2,4,2"``."""
        if not isinstance(text, str) or not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*){3}", text):
            raise UserError(f"--mls expects four integers M,E,G,Eg (e.g. 1,2,4,2), got {text!r}")
        m, e, g, eg = (int(t) for t in text.split(","))
        try:
            return cls(m, e, g, eg)
        except (TypeError, ValueError) as exc:
            raise UserError(f"--mls {text!r}: {exc}") from None

    # -- element ranges ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.mantissa_bits}M{self.exponent_bits}E-G{self.group_size}-Eg{self.group_bits}"

    @property
    def max_exponent(self) -> int:
        """Largest element exponent code ``2^E - 1`` (the smallest magnitude)."""
        return (1 << self.exponent_bits) - 1

    @property
    def max_mantissa(self) -> int:
        return (1 << self.mantissa_bits) - 1

    @property
    def max_group_exponent(self) -> int:
        """Largest group exponent code ``2^Eg - 1`` (the smallest group scale)."""
        return (1 << self.group_bits) - 1

    @property
    def element_max(self) -> float:
        """Largest element magnitude relative to ``S_t * S_g``: ``2 - 2^-M``."""
        return 2.0 - 2.0 ** -self.mantissa_bits

    @property
    def element_min(self) -> float:
        """Smallest nonzero element magnitude relative to ``S_t * S_g``: ``2^-(2^E-1)``."""
        return 2.0 ** -self.max_exponent

    @property
    def relative_error_bound(self) -> float:
        """Nearest rounding's bound ``2^-(M+1)`` for elements in ``[element_min, element_max]``."""
        return 2.0 ** -(self.mantissa_bits + 1)

    # -- integer datapath widths -------------------------------------------------------------
    @property
    def product_bits(self) -> int:
        """Unsigned width of a mantissa product ``(2^M + m_w)(2^M + m_x)``: ``2M + 2``."""
        return 2 * self.mantissa_bits + 2

    @property
    def exponent_shift_max(self) -> int:
        """Largest exponent sum ``D = 2^(E+1) - 2``: a product is shifted left by ``D - e_w - e_x``."""
        return 2 * self.max_exponent

    @property
    def group_shift_max(self) -> int:
        """Largest group exponent sum ``2 (2^Eg - 1)``: a group sum is shifted left by it minus ``g_w + g_x``."""
        return 2 * self.max_group_exponent

    @property
    def term_bits(self) -> int:
        """Two's-complement width of one aligned signed product."""
        return self.product_bits + self.exponent_shift_max + 1

    def group_acc_bits(self, terms_per_group: int) -> int:
        """Intra-group accumulator: ``(2M+2) + (2^(E+1)-2) + ceil(log2(G*kh*kw)) + 1``,
        with ``terms_per_group = G*kh*kw``."""
        terms = _check_int("terms_per_group", terms_per_group, 1)
        return self.product_bits + self.exponent_shift_max + ceil_log2(terms) + 1

    def dot_acc_bits(self, terms_per_group: int, groups: int) -> int:
        """Dot accumulator over ``groups`` group sums, each shifted by up to ``2 (2^Eg - 1)``."""
        groups = _check_int("groups", groups, 1)
        return self.group_acc_bits(terms_per_group) + self.group_shift_max + ceil_log2(groups)

    @property
    def output_shift(self) -> int:
        """The dot accumulator's binary point: value ``= T * 2^-output_shift * S_t,w * S_t,x``."""
        return 2 * self.mantissa_bits + self.exponent_shift_max + self.group_shift_max


DEFAULT_FORMAT = MLSFormat()
FORMAT_1M2E = MLSFormat(1, 2, 4, 2)
FORMAT_4M2E = MLSFormat(4, 2, 4, 2)


def group_shape(shape, group_size: int) -> tuple[int, int]:
    """Shape ``(outer, groups)`` of the group exponents of a tensor of ``shape``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"MLS tensors have an outer and a channel axis (ndim >= 2), got shape {shape}")
    return shape[0], -(-shape[1] // group_size)


@dataclass
class MLSCodes:
    """Integer codes of one MLS tensor.

    Attributes
    ----------
    sign, exponent, mantissa, zero : int64 arrays of the tensor's shape
        ``s``, ``e``, ``m`` and the zero flag ``z`` of each element.
    group_exponent : int64 array ``(outer, groups)``
        ``g`` of each group (:func:`group_shape`).
    tensor_scale : float
        ``S_t`` (a float32 value, held exactly as a Python float).
    fmt : MLSFormat
    """

    sign: np.ndarray
    exponent: np.ndarray
    mantissa: np.ndarray
    zero: np.ndarray
    group_exponent: np.ndarray
    tensor_scale: float
    fmt: MLSFormat

    @property
    def shape(self) -> tuple:
        return self.sign.shape

    def check(self, what: str = "MLS tensor") -> "MLSCodes":
        """Raise ``ValueError`` naming the field when any code is outside the format."""
        f = self.fmt
        for name in ("sign", "exponent", "mantissa", "zero"):
            if getattr(self, name).shape != self.shape:
                raise ValueError(f"{what}: {name} has shape {getattr(self, name).shape}, sign has {self.shape}")
        if self.group_exponent.shape != group_shape(self.shape, f.group_size):
            raise ValueError(f"{what}: group_exponent has shape {self.group_exponent.shape}, "
                             f"expected {group_shape(self.shape, f.group_size)} for groups of {f.group_size}")
        for name, hi in (("sign", 1), ("exponent", f.max_exponent), ("mantissa", f.max_mantissa),
                         ("zero", 1), ("group_exponent", f.max_group_exponent)):
            v = np.asarray(getattr(self, name))
            if v.size and (v.min() < 0 or v.max() > hi):
                raise ValueError(f"{what}: {name} codes must be in [0, {hi}] for {f.name}, "
                                 f"got [{v.min()}, {v.max()}]")
        z = self.zero.astype(bool)
        if np.any(self.sign[z] | self.exponent[z] | self.mantissa[z]):
            raise ValueError(f"{what}: a zero element (zero flag 1) must have sign, exponent and mantissa 0")
        s = self.tensor_scale
        if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            if s <= 0:       # an integer frame maximum (quantize_int)
                raise ValueError(f"{what}: an integer tensor_scale must be positive, got {s}")
        elif not (np.isfinite(s) and s > 0 and float(np.float32(s)) == s):
            raise ValueError(f"{what}: tensor_scale must be a positive finite float32 value, got {s!r}")
        return self


# -- quantization ---------------------------------------------------------------------------
def _groups(a: np.ndarray, group_size: int) -> np.ndarray:
    """View ``a`` (outer, C, ...) as (outer, groups, G * rest), padding channels with 0."""
    outer, c = a.shape[0], a.shape[1]
    r = a.reshape(outer, c, -1)
    pad = (-c) % group_size
    if pad:
        r = np.concatenate([r, np.zeros((outer, pad, r.shape[2]), r.dtype)], axis=1)
    return r.reshape(outer, -1, group_size * r.shape[2])


def _broadcast_groups(g: np.ndarray, shape, group_size: int) -> np.ndarray:
    """Per-element copy of per-group values ``g`` (outer, groups)."""
    per_channel = np.repeat(g, group_size, axis=1)[:, :shape[1]]
    return per_channel.reshape(per_channel.shape + (1,) * (len(shape) - 2)) * np.ones(shape, g.dtype)


def _floor_log2(y: np.ndarray) -> np.ndarray:
    """floor(log2 y) for positive finite floats, exactly (frexp)."""
    _, p = np.frexp(y)
    return p.astype(np.int64) - 1


def quantize(x, fmt: MLSFormat = DEFAULT_FORMAT, rounding: str = "nearest", rng=None) -> MLSCodes:
    """Dynamic MLS quantization of a float tensor (numpy).

    Parameters
    ----------
    x : array (outer, channels, ...)
        Cast to float32 first (``S_t`` is a float32 tensor scale, as in the paper).
    fmt : MLSFormat
    rounding : ``"nearest"`` (ties to even mantissa) or ``"stochastic"`` (unbiased).
    rng : numpy Generator or seed, for ``"stochastic"``.
    """
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    x32 = np.asarray(x, dtype=np.float32)
    group_shape(x32.shape, fmt.group_size)
    if not np.all(np.isfinite(x32)):
        raise ValueError("MLS quantize: the tensor holds inf or NaN; the tensor scale is max|x| and needs finite values")
    a = np.abs(x32).astype(np.float64)
    s_t = float(a.max()) if a.size else 0.0
    if s_t == 0.0:
        s_t = 1.0     # an all-zero tensor: any scale decodes to zero; 1.0 keeps codes canonical
    q = a / s_t
    uniform = None
    if rounding == "stochastic":
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        uniform = gen.random(q.shape)
    return _quantize_relative(q, np.signbit(x32), s_t, fmt, uniform)


def fake_quantize(x, fmt: MLSFormat = DEFAULT_FORMAT, per_sample: bool = False) -> np.ndarray:
    """``dequantize(quantize(x))`` as float32, nearest rounding: the meaning of the ONNX op
    ``accumulus.MLSQuant`` (docs/mls.md). ``per_sample`` quantizes each index of axis 0 alone
    (one tensor scale per sample, as activations are)."""
    x32 = np.asarray(x, dtype=np.float32)
    if not per_sample:
        return dequantize(quantize(x32, fmt)).astype(np.float32)
    return np.concatenate([dequantize(quantize(x32[i:i + 1], fmt)) for i in range(x32.shape[0])]
                          ).astype(np.float32).reshape(x32.shape)


def _bit_length(a: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values (0 for 0), exactly (leading-one detection)."""
    a = np.asarray(a, np.int64)
    n = np.zeros(a.shape, np.int64)
    v = a.copy()
    for k in (32, 16, 8, 4, 2, 1):
        big = v >= (np.int64(1) << k)
        n = np.where(big, n + k, n)
        v = np.where(big, v >> k, v)
    return n + (v > 0)


def quantize_int(x, fmt: MLSFormat = DEFAULT_FORMAT) -> MLSCodes:
    """Dynamic MLS quantization of an *integer* tensor, with integer operations only.

    The tensor scale is the integer ``S = max|x|`` (1 for an all-zero tensor); every decision
    of :func:`quantize` (nearest rounding) becomes a comparison of shifted integers:

    * group exponent ``g``: the smallest ``k >= 0`` with ``gmax * 2^k >= S`` (so the group
      maximum relative to ``S * 2^-g`` lies in ``[1, 2)``), clipped to ``2^Eg - 1``, minus one
      when the group maximum rounds up to 2;
    * element exponent ``e``: the smallest ``k`` with ``|x| * 2^(g+k) >= S``; above
      ``2^E - 1`` the element is the smallest element when ``|x| * 2^(g + 2^E) > S`` and 0
      otherwise (a tie goes to 0);
    * mantissa ``m``: ``N = |x| * 2^(g+e+M) - S * 2^M`` divided by ``S``, rounded half to even
      on the remainder (``2r > S``, or ``2r == S`` and the quotient odd); ``m = 2^M`` carries
      into ``e - 1``.

    The result equals :func:`quantize` of ``x * c`` for any power of two ``c`` (tensor scale
    ``S * c``; tests/test_mls.py): the float quotient of two such values cannot cross a
    rounding boundary.
    The codes' ``tensor_scale`` is the Python int ``S``.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"quantize_int takes an integer tensor, got dtype {x.dtype}")
    x = x.astype(np.int64)
    group_shape(x.shape, fmt.group_size)
    a = np.abs(x)
    s = int(a.max()) if a.size else 0
    s = s or 1
    M, emax, gmax_code = fmt.mantissa_bits, fmt.max_exponent, fmt.max_group_exponent
    if s.bit_length() + gmax_code + emax + M + 3 > 62:
        raise ValueError(f"quantize_int: max|x| = {s} is too wide for int64 comparisons in {fmt.name}")
    S = np.int64(s)
    gm = _groups(a, fmt.group_size).max(axis=2)
    # smallest k >= 0 with gm * 2^k >= S
    k = np.maximum(_bit_length(S) - _bit_length(np.maximum(gm, 1)), 0)
    k = np.where(np.left_shift(np.maximum(gm, 1), k) >= S, k, k + 1)
    g = np.where(gm > 0, np.minimum(k, gmax_code), 0)
    # the group maximum rounds up to 2: y_top * 2^(M+1) >= 2^(M+2) - 1 (a tie rounds to the even 2^M)
    over = (gm > 0) & (g > 0) & (np.left_shift(gm, g + M + 1) >= S * ((1 << (M + 2)) - 1))
    g = np.where(over, g - 1, g)
    gb = _broadcast_groups(g, a.shape, fmt.group_size)
    ag = np.left_shift(a, gb)                                        # |x| * 2^g
    pos = a > 0
    e = np.full(a.shape, emax + 1, np.int64)
    for kk in range(emax, -1, -1):                                   # smallest kk with ag * 2^kk >= S
        e = np.where(np.left_shift(ag, kk) >= S, kk, e)
    normal = pos & (e <= emax)
    under = pos & ~normal & (np.left_shift(ag, emax + 1) > S)
    ee = np.where(normal, e, 0)
    num = np.left_shift(ag, ee + M) - (S << M)
    q, r = np.divmod(np.where(normal, num, 0), S)
    up = (2 * r > S) | ((2 * r == S) & (q % 2 == 1))
    m = q + up
    carry = normal & (m == (1 << M))
    ee = np.where(carry, ee - 1, ee)
    m = np.where(carry, 0, m)
    if np.any(ee < 0):
        raise AssertionError("MLS integer rounding left the element range (group scale rule broken)")
    e = np.where(normal, ee, np.where(under, emax, 0)).astype(np.int64)
    m = np.where(normal, m, 0).astype(np.int64)
    z = (~(normal | under)).astype(np.int64)
    sign = np.where(z.astype(bool), 0, (x < 0).astype(np.int64))
    g = np.where(_groups(1 - z, fmt.group_size).max(axis=2) > 0, g, 0)
    return MLSCodes(sign, e, m, z, g.astype(np.int64), s, fmt)


def _quantize_relative(q, negative, s_t, fmt: MLSFormat, uniform) -> MLSCodes:
    """Codes of relative magnitudes ``q = |x| / S_t`` in [0, 1] (float64)."""
    gmax = _groups(q, fmt.group_size).max(axis=2)
    g = np.zeros(gmax.shape, np.int64)
    nz = gmax > 0
    g[nz] = np.clip(-_floor_log2(gmax[nz]), 0, fmt.max_group_exponent)
    y_top = gmax * np.exp2(g)
    if uniform is None:
        # the group maximum rounds up out of [1, 2): use the next larger group scale
        e_top = np.where(y_top > 0, -_floor_log2(np.where(y_top > 0, y_top, 1.0)), 0)
        mant = np.rint((y_top * np.exp2(e_top) - 1.0) * (1 << fmt.mantissa_bits))
        overflow = (e_top == 0) & (mant == (1 << fmt.mantissa_bits))
    else:
        overflow = y_top > fmt.element_max
    g = np.where(overflow & (g > 0), g - 1, g)
    y = q * np.exp2(_broadcast_groups(g, q.shape, fmt.group_size))
    codes = _round_elements(y, fmt, None if uniform is None else uniform)
    _, e, m, z = codes
    sign = np.where(z, 0, negative.astype(np.int64))
    # a group whose elements all rounded to zero keeps the canonical exponent 0
    g = np.where(_groups(1 - z, fmt.group_size).max(axis=2) > 0, g, 0)
    return MLSCodes(sign, e, m, z, g, s_t, fmt)


def _round_elements(y: np.ndarray, fmt: MLSFormat, uniform):
    """Round relative element magnitudes ``y`` (< 2) to (sign placeholder, e, m, zero)."""
    emax, scale = fmt.max_exponent, 1 << fmt.mantissa_bits
    pos = y > 0
    e = np.where(pos, -_floor_log2(np.where(pos, y, 1.0)), 0)
    normal = pos & (e <= emax)
    e = np.where(normal, e, emax)
    frac = (y * np.exp2(e) - 1.0) * scale          # exact: y has at most 53 bits, shifts are exact
    if uniform is None:
        m = np.rint(frac)
        under = pos & ~normal & (y > fmt.element_min / 2)        # a tie goes to zero
    else:
        m = np.floor(frac + uniform)
        under = pos & ~normal & (uniform < y / fmt.element_min)
    m = np.where(normal, m, 0).astype(np.int64)
    carry = normal & (m == scale)                  # rounded up to the next binade
    e = np.where(carry, e - 1, e)
    m = np.where(carry, 0, m)
    if np.any(e < 0):
        raise AssertionError("MLS rounding left the element range (group scale rule broken)")
    zero = ~(normal | under)
    e = np.where(zero, 0, e).astype(np.int64)
    m = np.where(zero, 0, m).astype(np.int64)
    return None, e, m, zero.astype(np.int64)


def element_integers(codes: MLSCodes) -> np.ndarray:
    """Each element as the integer ``(-1)^s (2^M + m) 2^(2^E-1-e)`` (0 when zero): the element
    value relative to ``S_t * S_g`` times ``2^(M + 2^E - 1)``."""
    f = codes.fmt
    mag = ((1 << f.mantissa_bits) + codes.mantissa) << (f.max_exponent - codes.exponent)
    return np.where(codes.zero.astype(bool), 0, np.where(codes.sign.astype(bool), -mag, mag)).astype(np.int64)


def dequantize(codes: MLSCodes) -> np.ndarray:
    """float64 values of the codes (exact: at most M+1 significant bits times ``S_t``)."""
    f = codes.fmt
    g = _broadcast_groups(codes.group_exponent, codes.shape, f.group_size)
    rel = element_integers(codes).astype(np.float64) * np.exp2(-(g + f.mantissa_bits + f.max_exponent))
    return rel * codes.tensor_scale


def dequantize_exact(codes: MLSCodes) -> np.ndarray:
    """Object array of :class:`fractions.Fraction` values of the codes (no rounding at all)."""
    f = codes.fmt
    g = _broadcast_groups(codes.group_exponent, codes.shape, f.group_size)
    ints = element_integers(codes)
    st = Fraction(codes.tensor_scale)
    out = np.empty(codes.shape, dtype=object)
    for idx in np.ndindex(codes.shape):
        out[idx] = st * Fraction(int(ints[idx]), 1 << int(g[idx] + f.mantissa_bits + f.max_exponent))
    return out


def worst_case_codes(shape, fmt: MLSFormat, negative=False, tensor_scale: float = 1.0) -> MLSCodes:
    """Every element at the largest magnitude (``e = 0``, ``m = 2^M - 1``), every group scale
    1: the operands that reach the accumulators' bounds."""
    shape = tuple(shape)
    gs = group_shape(shape, fmt.group_size)
    sign = np.full(shape, 1 if negative else 0, np.int64)
    return MLSCodes(sign, np.zeros(shape, np.int64), np.full(shape, fmt.max_mantissa, np.int64),
                    np.zeros(shape, np.int64), np.zeros(gs, np.int64), float(tensor_scale), fmt)


# -- integer dot product --------------------------------------------------------------------
def mls_product(fmt: MLSFormat, sw, ew, mw, zw, sx, ex, mx, zx):
    """One aligned signed product per element pair, integers only: XOR the signs, add the
    exponents, multiply the (M+1)-bit mantissas, shift left by ``D - (e_w + e_x)``."""
    sign = np.bitwise_xor(sw, sx)
    esum = np.add(ew, ex)
    one = 1 << fmt.mantissa_bits
    prod = np.multiply(np.add(one, mw), np.add(one, mx))             # (2M+2)-bit unsigned
    aligned = np.left_shift(prod, fmt.exponent_shift_max - esum)
    term = np.where(sign.astype(bool), -aligned, aligned)
    return np.where(np.logical_or(zw, zx), 0, term).astype(np.int64)


@dataclass
class MLSDotResult:
    """Integer outputs of an MLS dot product / convolution.

    Attributes
    ----------
    acc : int64 array
        Dot accumulators ``T``.
    group_acc : int64 array (acc.shape + (groups,))
        Intra-group sums before the cross-group shift.
    output_shift : int
    scale : tuple of two floats
        ``(S_t,w, S_t,x)``.
    group_acc_bits, acc_bits : int
        The widths the sums were checked against.
    """

    acc: np.ndarray
    group_acc: np.ndarray
    output_shift: int
    scale: tuple
    group_acc_bits: int
    acc_bits: int

    def value(self) -> np.ndarray:
        """float64 outputs: ``T * 2^-output_shift`` (exact while ``acc_bits <= 53``), then the
        two tensor scales, applied once per output."""
        return (self.acc.astype(np.float64) * 2.0 ** -self.output_shift) * self.scale[0] * self.scale[1]

    def value_exact(self) -> np.ndarray:
        """Outputs as Fractions (no rounding)."""
        k = Fraction(self.scale[0]) * Fraction(self.scale[1]) / (1 << self.output_shift)
        out = np.empty(self.acc.shape, dtype=object)
        for idx in np.ndindex(self.acc.shape):
            out[idx] = int(self.acc[idx]) * k
        return out


class MLSOverflow(UserError):
    """An MLS accumulator left its declared width (the width formula is broken)."""


def _fits(v: np.ndarray, bits: int, what: str) -> None:
    lim = 1 << (bits - 1)
    if v.size and (v.min() < -lim or v.max() > lim - 1):
        raise MLSOverflow(f"{what}: a sum reached [{v.min()}, {v.max()}], outside the {bits}-bit "
                          f"two's-complement range")


def mls_conv2d(w: MLSCodes, x: MLSCodes, stride: int = 1, padding: int = 0) -> MLSDotResult:
    """Integer-only MLS convolution (no bias): ``w`` (N, C, kh, kw), ``x`` (B, C, H, W), both
    with the same format. Padding uses the zero code. Returns (B, N, Ho, Wo) accumulators.

    Every cumulative intra-group sum (in the order lanes then kernel taps, as the hardware of
    hw/mls_mac.py adds them) and every cumulative dot sum (in group order) is checked against
    :meth:`MLSFormat.group_acc_bits` and :meth:`MLSFormat.dot_acc_bits`.
    """
    f = w.fmt
    if x.fmt != f:
        raise ValueError(f"mls_conv2d: weight format {f.name} and input format {x.fmt.name} differ")
    w.check("mls_conv2d weight")
    x.check("mls_conv2d input")
    if len(w.shape) != 4 or len(x.shape) != 4 or w.shape[1] != x.shape[1]:
        raise ValueError(f"mls_conv2d: weight (N, C, kh, kw) and input (B, C, H, W) must share C, "
                         f"got {w.shape} and {x.shape}")
    n, c, kh, kw = w.shape
    b, _, h, wd = x.shape
    p = int(padding)

    def pad(a, fill):
        return np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill) if p else a

    xs, xe, xm, xz = pad(x.sign, 0), pad(x.exponent, 0), pad(x.mantissa, 0), pad(x.zero, 1)
    ho, wo = (h + 2 * p - kh) // stride + 1, (wd + 2 * p - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"mls_conv2d: kernel {kh}x{kw} larger than the padded input {h + 2 * p}x{wd + 2 * p}")

    def patches(a):        # (B, Ho, Wo, C, kh*kw)
        out = np.empty((b, ho, wo, c, kh * kw), np.int64)
        for i in range(kh):
            for j in range(kw):
                out[..., i * kw + j] = a[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride].transpose(0, 2, 3, 1)
        return out

    px = [patches(a) for a in (xs, xe, xm, xz)]
    pw = [a.reshape(n, c, kh * kw) for a in (w.sign, w.exponent, w.mantissa, w.zero)]
    # terms (B, Ho, Wo, N, C, T)
    ex = [a[:, :, :, None] for a in px]
    terms = mls_product(f, *pw, *ex)
    groups = -(-c // f.group_size)
    padc = groups * f.group_size - c
    if padc:
        terms = np.concatenate([terms, np.zeros(terms.shape[:4] + (padc, kh * kw), np.int64)], axis=4)
    terms = terms.reshape(terms.shape[:4] + (groups, f.group_size, kh * kw))
    g_bits = f.group_acc_bits(f.group_size * kh * kw)
    lane_sums = terms.sum(axis=5)                                  # (B,Ho,Wo,N,J,T)
    partial = np.cumsum(lane_sums, axis=-1)
    _fits(partial, g_bits, f"MLS intra-group accumulator ({f.name}, {f.group_size}x{kh}x{kw} terms)")
    group_acc = partial[..., -1]                                    # (B,Ho,Wo,N,J)
    gsum = w.group_exponent[None, None, None, :, :] + x.group_exponent[:, None, None, None, :]
    shifted = np.left_shift(group_acc, f.group_shift_max - gsum)
    d_bits = f.dot_acc_bits(f.group_size * kh * kw, groups)
    if d_bits > 63:
        raise ValueError(f"mls_conv2d: a {d_bits}-bit dot accumulator does not fit numpy int64")
    dot_partial = np.cumsum(shifted, axis=-1)
    _fits(dot_partial, d_bits, f"MLS dot accumulator ({f.name}, {groups} groups)")
    acc = dot_partial[..., -1].transpose(0, 3, 1, 2)
    return MLSDotResult(acc, group_acc.transpose(0, 3, 1, 2, 4), f.output_shift,
                        (w.tensor_scale, x.tensor_scale), g_bits, d_bits)


def _as_4d(c: MLSCodes) -> MLSCodes:
    if len(c.shape) != 2:
        raise ValueError(f"mls_linear expects 2-D operands (outer, channels), got shape {c.shape}")
    r = lambda a: a.reshape(a.shape + (1, 1))                      # noqa: E731
    return MLSCodes(r(c.sign), r(c.exponent), r(c.mantissa), r(c.zero), c.group_exponent, c.tensor_scale, c.fmt)


def mls_linear(w: MLSCodes, x: MLSCodes) -> MLSDotResult:
    """Integer-only MLS matrix product: ``w`` (N, C), ``x`` (B, C) -> (B, N) accumulators."""
    r = mls_conv2d(_as_4d(w), _as_4d(x))
    return MLSDotResult(r.acc[:, :, 0, 0], r.group_acc[:, :, 0, 0], r.output_shift, r.scale,
                        r.group_acc_bits, r.acc_bits)
