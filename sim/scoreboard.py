"""Expected outputs from the golden model, and the scoreboard that compares frames to them.

The golden model (``compiler/golden.py``) is the law: expected frames come only from it,
for the whole design (:func:`expected_design`) or for one layer engine fed directly
(:func:`expected_layer`). The scoreboard checks frames in order, so a lost or duplicated
frame shows up as a count error (and usually as mismatches after it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from accumulus.compiler import golden
from accumulus.compiler.plan import Plan

__all__ = ["expected_design", "expected_layer", "Mismatch", "Scoreboard"]


def expected_design(plan: Plan, codes: np.ndarray) -> np.ndarray:
    """Golden output of the whole plan for input codes in stream order, flattened per frame."""
    env = golden.run(plan, codes)
    out = golden.output_codes(plan, env)
    return out.reshape(out.shape[0], -1)


def expected_layer(plan: Plan, layer: dict, x: np.ndarray, extra_inputs: dict | None = None) -> np.ndarray:
    """Golden output of one layer fed ``x`` (its input tensor, (B, *shape)), flattened per frame.

    A residual ``add`` needs its second input in ``extra_inputs`` (tensor name -> array).
    """
    env = {layer["inputs"][0]: np.asarray(x, dtype=np.int64)}
    env.update(extra_inputs or {})
    y = golden.run_layer(plan, layer, env)
    return np.asarray(y).reshape(len(x), -1)


@dataclass
class Mismatch:
    frame: int
    index: int
    expected: int
    got: int

    def to_json(self) -> dict:
        return {"frame": self.frame, "output_index": self.index, "expected": self.expected, "got": self.got}


@dataclass
class Scoreboard:
    """Compares received frames, in order, against ``expected`` (frames, elements)."""

    expected: np.ndarray
    max_recorded: int = 20
    frames_checked: int = 0
    frames_ok: int = 0
    mismatched_frames: int = 0
    mismatched_elements: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    framing_errors: list[str] = field(default_factory=list)
    extra_frames: int = 0

    def __post_init__(self):
        self.expected = np.asarray(self.expected, dtype=np.int64)
        if self.expected.ndim != 2:
            raise ValueError(f"Scoreboard: expected must be (frames, elements), got shape {self.expected.shape}")

    def check(self, frame_index: int, values, error: str | None = None) -> bool:
        """Check one received frame; True when it is bit-exact."""
        if frame_index >= len(self.expected):
            self.extra_frames += 1
            self.framing_errors.append(f"frame {frame_index}: extra frame (only {len(self.expected)} were sent)")
            return False
        self.frames_checked += 1
        ok = True
        if error:
            self.framing_errors.append(f"frame {frame_index}: {error}")
            ok = False
        want = self.expected[frame_index]
        got = np.asarray(values, dtype=np.int64)
        if got.shape != want.shape:
            self.framing_errors.append(f"frame {frame_index}: {got.size} elements, expected {want.size}")
            got = np.resize(got, want.shape) if got.size else np.zeros_like(want)
            ok = False
        bad = np.nonzero(got != want)[0]
        if bad.size:
            ok = False
            self.mismatched_elements += int(bad.size)
            for i in bad[: max(0, self.max_recorded - len(self.mismatches))]:
                self.mismatches.append(Mismatch(frame_index, int(i), int(want[i]), int(got[i])))
        if ok:
            self.frames_ok += 1
        else:
            self.mismatched_frames += 1
        return ok

    @property
    def frames_missing(self) -> int:
        return len(self.expected) - self.frames_checked

    @property
    def passed(self) -> bool:
        return self.mismatched_frames == 0 and self.frames_missing == 0 and self.extra_frames == 0

    def summary(self) -> dict:
        return {
            "frames_expected": int(len(self.expected)),
            "frames_checked": self.frames_checked,
            "frames_ok": self.frames_ok,
            "mismatched_frames": self.mismatched_frames,
            "mismatched_elements": self.mismatched_elements,
            "frames_missing": self.frames_missing,
            "extra_frames": self.extra_frames,
            "first_mismatch": self.mismatches[0].to_json() if self.mismatches else None,
            "mismatches": [m.to_json() for m in self.mismatches],
            "framing_errors": self.framing_errors[:20],
        }
