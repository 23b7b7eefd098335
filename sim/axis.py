"""AXI-Stream driver, monitor and back-pressure for cocotb 2.x (DESIGN.md, stream packing).

Packing: a beat carries ``elements_per_beat`` consecutive elements, element ``i`` in bits
``[i*w, (i+1)*w)`` at the code width ``w``, the beat padded to ``beat_bytes`` bytes;
``tlast`` marks the last beat of a frame. A frame's last beat may be partly filled; its
unused lanes are zero on input and ignored on output.

Driver and monitor wait on transfers, not on every clock edge: while a handshake is
blocked they sleep on a value change of the other side's ``tvalid``/``tready``, and a
pause of ``k`` cycles is one timer plus one edge. That keeps the Python work per frame
proportional to the beats, not to the cycles a frame takes inside the design.

Back-pressure is pluggable: a pause generator is any callable returning how many cycles
to hold ``tvalid`` (driver) or ``tready`` (monitor) low before the next beat.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

__all__ = [
    "StreamFormat", "PauseGenerator", "NoPause", "RandomPause", "SequencePause",
    "ClockTiming", "AxisDriver", "AxisMonitor", "ReceivedFrame", "signal_names",
]


# -- packing -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamFormat:
    """How one tensor travels on an AXI-Stream port."""

    elements_per_beat: int
    element_bits: int
    signed: bool
    beat_bytes: int
    frame_elements: int

    def __post_init__(self):
        for name in ("elements_per_beat", "element_bits", "beat_bytes", "frame_elements"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"StreamFormat.{name} must be a positive int, got {v!r}")
        if self.elements_per_beat * self.element_bits > 8 * self.beat_bytes:
            raise ValueError(
                f"StreamFormat: {self.elements_per_beat} elements x {self.element_bits} bits do not fit "
                f"beat_bytes={self.beat_bytes}"
            )

    @property
    def beats_per_frame(self) -> int:
        return -(-self.frame_elements // self.elements_per_beat)

    @property
    def data_bits(self) -> int:
        return 8 * self.beat_bytes

    @property
    def min(self) -> int:
        return -(1 << (self.element_bits - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.element_bits - (1 if self.signed else 0))) - 1

    def pack(self, frame: Iterable[int]) -> list[int]:
        """One frame of element codes -> beat words (tdata values)."""
        values = [int(v) for v in frame]
        if len(values) != self.frame_elements:
            raise ValueError(f"frame has {len(values)} elements, the stream carries {self.frame_elements}")
        lo, hi = self.min, self.max
        w, mask, epb = self.element_bits, (1 << self.element_bits) - 1, self.elements_per_beat
        beats = []
        for b in range(0, len(values), epb):
            word = 0
            for i, v in enumerate(values[b:b + epb]):
                if not lo <= v <= hi:
                    raise ValueError(f"element {b + i} = {v} does not fit {w}-bit {'signed' if self.signed else 'unsigned'}")
                word |= (v & mask) << (i * w)
            beats.append(word)
        return beats

    def unpack(self, word: int) -> list[int]:
        """One beat word -> its ``elements_per_beat`` element codes."""
        w, mask = self.element_bits, (1 << self.element_bits) - 1
        out = []
        for i in range(self.elements_per_beat):
            v = (word >> (i * w)) & mask
            if self.signed and v >> (w - 1):
                v -= 1 << w
            out.append(v)
        return out

    def to_json(self) -> dict:
        return {"elements_per_beat": self.elements_per_beat, "element_bits": self.element_bits,
                "signed": self.signed, "beat_bytes": self.beat_bytes, "frame_elements": self.frame_elements}

    @classmethod
    def from_json(cls, d: dict) -> "StreamFormat":
        return cls(int(d["elements_per_beat"]), int(d["element_bits"]), bool(d["signed"]),
                   int(d["beat_bytes"]), int(d["frame_elements"]))


# -- back-pressure -------------------------------------------------------------------------
PauseGenerator = Callable[[], int]
"""Returns the number of cycles to pause before the next beat (0: none)."""


class NoPause:
    """Never pauses: input offered every cycle, output always ready."""

    def __call__(self) -> int:
        return 0


class RandomPause:
    """Before each beat, with probability ``probability`` pause 1..``max_cycles`` cycles.

    Seeded, so a failing run repeats exactly.
    """

    def __init__(self, probability: float, max_cycles: int = 8, seed: int = 0):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"RandomPause: probability must be in [0, 1], got {probability!r}")
        if not isinstance(max_cycles, int) or max_cycles < 1:
            raise ValueError(f"RandomPause: max_cycles must be an int >= 1, got {max_cycles!r}")
        self.probability = probability
        self.max_cycles = max_cycles
        self._rng = random.Random(seed)

    def __call__(self) -> int:
        if self.probability and self._rng.random() < self.probability:
            return self._rng.randint(1, self.max_cycles)
        return 0


class SequencePause:
    """Pauses taken from a sequence, repeated: e.g. ``[0, 3]`` pauses 3 cycles every other beat."""

    def __init__(self, pauses: Iterable[int]):
        self._pauses = [int(p) for p in pauses]
        if not self._pauses or min(self._pauses) < 0:
            raise ValueError(f"SequencePause: pauses must be a non-empty list of ints >= 0, got {self._pauses!r}")
        self._it: Iterator[int] = iter(())

    def __call__(self) -> int:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self._pauses)
            return next(self._it)


# -- timing --------------------------------------------------------------------------------
class ClockTiming:
    """The clock and how to wait whole cycles cheaply.

    Every coroutine here resumes "just after a rising edge" (where it may drive the signals
    the next edge samples) or in the read-only phase before an edge.
    """

    def __init__(self, clk, period_steps: int):
        from cocotb.triggers import RisingEdge

        if period_steps < 2 or period_steps % 2:
            raise ValueError(f"ClockTiming: the clock period must be an even number of steps, got {period_steps}")
        self.clk = clk
        self.period_steps = period_steps
        self.rising = RisingEdge(clk)

    def now(self) -> int:
        from cocotb.simtime import get_sim_time

        return get_sim_time("step")

    async def edges(self, k: int) -> None:
        """From just after an edge, return just after the ``k``-th following edge."""
        from cocotb.triggers import Timer

        if k > 1:
            # One timer to the middle of the (k-1)-th cycle, then the edge: two wake-ups, not k.
            await Timer(k * self.period_steps - self.period_steps // 2, "step")
        if k >= 1:
            await self.rising


def _bit(handle) -> bool:
    return str(handle.value) == "1"


def signal_names(prefix_or_names: str | dict) -> dict:
    """Port names of one stream: ``"s_axis"`` -> ``s_axis_tdata``... or an explicit mapping.

    An explicit mapping (e.g. Amaranth's ``{"tdata": "i__payload", "tvalid": "i__valid",
    "tready": "i__ready"}``) may omit ``tlast``: frames are then delimited by beat count.
    """
    if isinstance(prefix_or_names, str):
        return {k: f"{prefix_or_names}_{k}" for k in ("tdata", "tvalid", "tready", "tlast")}
    names = dict(prefix_or_names)
    missing = [k for k in ("tdata", "tvalid", "tready") if k not in names]
    if missing:
        raise ValueError(f"stream port names lack {', '.join(missing)}: got {names}")
    return names


def _handles(dut, prefix_or_names, fmt: StreamFormat):
    names = signal_names(prefix_or_names)
    out = {}
    for key in ("tdata", "tvalid", "tready", "tlast"):
        name = names.get(key)
        if name is None:
            out[key] = None
            continue
        try:
            out[key] = getattr(dut, name)
        except AttributeError:
            raise ValueError(f"the design has no port '{name}' ({key}); check the port names in build.json") from None
    width = len(out["tdata"])
    # AXI-Stream tops pad a beat to whole bytes; bare Amaranth stream ports are not padded.
    if width < fmt.elements_per_beat * fmt.element_bits or width > fmt.data_bits:
        raise ValueError(
            f"{names['tdata']} is {width} bits wide but the stream format packs {fmt.elements_per_beat} x "
            f"{fmt.element_bits}-bit elements in {fmt.beat_bytes} bytes"
        )
    return out


# -- driver --------------------------------------------------------------------------------
class AxisDriver:
    """Drives ``<prefix>_tdata/tvalid/tlast`` and obeys ``<prefix>_tready``."""

    def __init__(self, dut, prefix: str | dict, fmt: StreamFormat, timing: ClockTiming,
                 pause: PauseGenerator | None = None):
        self.fmt = fmt
        self.timing = timing
        self.pause = pause or NoPause()
        h = _handles(dut, prefix, fmt)
        self.tdata, self.tvalid, self.tready, self.tlast = h["tdata"], h["tvalid"], h["tready"], h["tlast"]
        self.beats_sent = 0
        self.frames_sent = 0
        self.pause_cycles = 0                    # cycles tvalid was held low by the pause generator
        self.frame_start_steps: list[int] = []   # time of each frame's first transfer

    def idle(self) -> None:
        self.tvalid.value = 0
        self.tdata.value = 0
        if self.tlast is not None:
            self.tlast.value = 0

    async def send(self, frames: Iterable[Iterable[int]]) -> None:
        """Send frames back to back; returns just after the last beat's transfer edge."""
        from cocotb.triggers import ReadOnly, ValueChange

        t = self.timing
        for frame in frames:
            beats = self.fmt.pack(frame)
            for i, word in enumerate(beats):
                k = self.pause()
                if k:
                    self.tvalid.value = 0
                    self.pause_cycles += k
                    await t.edges(k)
                self.tdata.value = word
                if self.tlast is not None:
                    self.tlast.value = int(i == len(beats) - 1)
                self.tvalid.value = 1
                while True:
                    await ReadOnly()
                    if _bit(self.tready):
                        break
                    # Blocked: sleep until the design changes tready, then re-check settled values.
                    await ValueChange(self.tready)
                await t.rising   # the transfer edge
                if i == 0:
                    self.frame_start_steps.append(t.now())
                self.beats_sent += 1
            self.frames_sent += 1
        self.tvalid.value = 0
        if self.tlast is not None:
            self.tlast.value = 0


# -- monitor -------------------------------------------------------------------------------
@dataclass
class ReceivedFrame:
    index: int
    values: list[int]
    beats: int
    end_steps: int                      # time of the tlast transfer edge
    error: str | None = None            # framing error (tlast early/late, X on the bus)


class AxisMonitor:
    """Drives ``<prefix>_tready`` (with back-pressure) and collects frames by ``tlast``."""

    def __init__(self, dut, prefix: str | dict, fmt: StreamFormat, timing: ClockTiming,
                 pause: PauseGenerator | None = None, on_frame: Callable[[ReceivedFrame], None] | None = None):
        self.fmt = fmt
        self.timing = timing
        self.pause = pause or NoPause()
        self.on_frame = on_frame
        h = _handles(dut, prefix, fmt)
        self.tdata, self.tvalid, self.tready, self.tlast = h["tdata"], h["tvalid"], h["tready"], h["tlast"]
        self.frames: list[ReceivedFrame] = []
        self.beats_received = 0
        self.pause_cycles = 0                    # cycles tready was held low by the pause generator
        self.last_beat_steps: int | None = None

    def set_pause(self, pause: PauseGenerator | None) -> None:
        self.pause = pause or NoPause()

    async def run(self) -> None:
        """Collect forever (start with ``cocotb.start_soon``; the test ends it)."""
        from cocotb.triggers import ReadOnly, ValueChange

        t, fmt = self.timing, self.fmt
        values: list[int] = []
        beats = 0
        error: str | None = None
        self.tready.value = 1
        while True:
            while True:
                await ReadOnly()
                if _bit(self.tvalid):
                    break
                await ValueChange(self.tvalid)
            raw = self.tdata.value
            # Without tlast a frame ends by count; with it, tlast is checked against the count.
            last = _bit(self.tlast) if self.tlast is not None else beats + 1 == fmt.beats_per_frame
            await t.rising   # the transfer edge
            now = t.now()
            self.beats_received += 1
            self.last_beat_steps = now
            beats += 1
            if raw.is_resolvable:
                values.extend(fmt.unpack(raw.to_unsigned()))
            else:
                error = error or f"beat {beats - 1} carries X/Z bits: {raw}"
                values.extend([0] * fmt.elements_per_beat)
            if beats > fmt.beats_per_frame and error is None:
                error = f"no tlast after {fmt.beats_per_frame} beats"
            if last:
                if beats < fmt.beats_per_frame and error is None:
                    error = f"tlast after {beats} beats, expected {fmt.beats_per_frame}"
                frame = ReceivedFrame(len(self.frames), values[:fmt.frame_elements], beats, now, error)
                self.frames.append(frame)
                if self.on_frame is not None:
                    self.on_frame(frame)
                values, beats, error = [], 0, None
            k = self.pause()
            if k:
                self.tready.value = 0
                self.pause_cycles += k
                await t.edges(k)
                self.tready.value = 1
