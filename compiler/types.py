"""The one integer data type of accumulus."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IntType:
    """A two's-complement (``signed``) or unsigned integer of ``bits`` bits.

    ``narrow`` trims one code as QONNX's narrow range does: the lowest code when signed
    (-2^(b-1)+1 .. 2^(b-1)-1), the top code when unsigned (0 .. 2^b-2).
    """

    bits: int
    signed: bool
    narrow: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 64:
            raise ValueError(f"IntType.bits must be an int in 1..64, got {self.bits!r}")
        if self.narrow and self.bits == 1 and not self.signed:
            raise ValueError("IntType: a 1-bit unsigned narrow type has only code 0")

    @property
    def min(self) -> int:
        if not self.signed:
            return 0
        return -(1 << (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def max(self) -> int:
        if self.signed:
            return (1 << (self.bits - 1)) - 1
        return (1 << self.bits) - 1 - (1 if self.narrow else 0)

    @property
    def twos_complement_bits(self) -> int:
        """Width of this type's range as a two's-complement number (unsigned counts one more bit)."""
        return self.bits if self.signed else self.bits + 1

    def contains(self, lo: int, hi: int) -> bool:
        return self.min <= lo and hi <= self.max

    def to_json(self) -> dict:
        return {"bits": self.bits, "signed": self.signed, "narrow": self.narrow}

    @classmethod
    def from_json(cls, d: dict) -> "IntType":
        return cls(int(d["bits"]), bool(d["signed"]), bool(d.get("narrow", False)))

    def __str__(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}{'n' if self.narrow else ''}"


def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in [lo, hi] (at least 1)."""
    lo, hi = int(lo), int(hi)
    if lo > hi:
        raise ValueError(f"signed_bits: empty range [{lo}, {hi}]")
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def parse_input_type(text: str, scale: float | None = None) -> tuple[IntType, float]:
    """``--input-type``: ``int8``, ``uint8``, ``intN``/``uintN``, or hls4ml's ``fixed<W,I>`` /
    ``ufixed<W,I>`` (W bits in all, I of them integer bits, sign included when signed:
    scale 2^-(W-I)). Returns (code type, scale); ``scale`` overrides the implied one."""
    import re

    from accumulus.errors import UserError

    t = text.strip().lower().replace(" ", "")
    m = re.fullmatch(r"(u?)int(\d+)", t)
    if m:
        itype, implied = IntType(int(m.group(2)), not m.group(1)), 1.0
    else:
        m = re.fullmatch(r"(u?)(?:ap_)?fixed<(\d+),(-?\d+)>", t)
        if not m:
            raise UserError(f"--input-type '{text}': expected int8, uint8, intN, uintN, fixed<W,I> or ufixed<W,I>")
        w, i = int(m.group(2)), int(m.group(3))
        itype, implied = IntType(w, not m.group(1)), 2.0 ** -(w - i)
    if not 1 <= itype.bits <= 32:
        raise UserError(f"--input-type '{text}': {itype.bits} bits, expected 1..32")
    if scale is not None and not (scale > 0 and scale != float("inf")):
        raise UserError(f"--input-scale {scale}: must be positive and finite")
    return itype, float(implied if scale is None else scale)
