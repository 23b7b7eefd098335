"""sim/: AXI-Stream packing, back-pressure generators, scoreboard, and the whole testbench
on a tiny hand-written design (tests/data/axis_frame_adder.v) whose behaviour is known:
y = 2*x - 3 per element, exactly 2*BEATS + BUSY cycles per frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accumulus.sim.axis import RandomPause, SequencePause, StreamFormat
from accumulus.sim.scoreboard import Scoreboard

from conftest import require_tool

DATA = Path(__file__).parent / "data"


# -- packing ---------------------------------------------------------------------------------
def test_pack_places_element_i_at_bits_i_times_w():
    fmt = StreamFormat(elements_per_beat=3, element_bits=4, signed=True, beat_bytes=2, frame_elements=5)
    beats = fmt.pack([1, -1, 7, -8, 0])
    # beat 0: 1 | 0xF<<4 | 7<<8 ; beat 1 (partly filled): 0x8 | 0<<4, unused lane zero
    assert beats == [0x7F1, 0x008]
    assert fmt.unpack(beats[0]) == [1, -1, 7]
    assert fmt.unpack(beats[1])[:2] == [-8, 0]
    assert fmt.beats_per_frame == 2


@pytest.mark.parametrize("signed", [False, True])
def test_pack_unpack_roundtrip(signed):
    rng = np.random.default_rng(3)
    fmt = StreamFormat(elements_per_beat=8, element_bits=5, signed=signed, beat_bytes=5, frame_elements=64)
    x = rng.integers(fmt.min, fmt.max + 1, size=64)
    words = fmt.pack(x)
    assert all(0 <= w < 1 << 40 for w in words)
    back = [v for w in words for v in fmt.unpack(w)]
    assert back == x.tolist()


def test_pack_rejects_out_of_range_and_bad_format():
    fmt = StreamFormat(2, 4, False, 1, 2)
    with pytest.raises(ValueError, match="does not fit"):
        fmt.pack([16, 0])
    with pytest.raises(ValueError, match="beat_bytes"):
        StreamFormat(4, 5, False, 2, 8)
    with pytest.raises(ValueError, match="frame_elements"):
        StreamFormat(4, 5, False, 3, 0)


def test_random_pause_is_seeded_and_bounded():
    g1, g2 = RandomPause(0.5, 4, seed=7), RandomPause(0.5, 4, seed=7)
    a = [g1() for _ in range(200)]
    assert [g2() for _ in range(200)] == a
    g3 = RandomPause(0.5, 4, seed=8)
    assert [g3() for _ in range(200)] != a
    assert 0 < sum(p > 0 for p in a) < 200 and max(a) <= 4
    assert [RandomPause(0.0, 4, seed=1)() for _ in range(50)] == [0] * 50
    seq = SequencePause([0, 3])
    assert [seq() for _ in range(5)] == [0, 3, 0, 3, 0]
    with pytest.raises(ValueError, match="probability"):
        RandomPause(1.5)


# -- scoreboard ------------------------------------------------------------------------------
def test_scoreboard_reports_first_mismatch_and_counts():
    exp = np.arange(12).reshape(3, 4)
    sb = Scoreboard(exp)
    assert sb.check(0, [0, 1, 2, 3])
    assert not sb.check(1, [4, 5, 9, 7])
    assert not sb.passed  # one frame missing and one wrong
    assert sb.check(2, [8, 9, 10, 11])
    s = sb.summary()
    assert s["first_mismatch"] == {"frame": 1, "output_index": 2, "expected": 6, "got": 9}
    assert s["mismatched_frames"] == 1 and s["frames_missing"] == 0
    assert not sb.check(3, [0, 0, 0, 0]) and sb.extra_frames == 1


def test_scoreboard_missing_frame_fails():
    sb = Scoreboard(np.zeros((2, 3)))
    sb.check(0, [0, 0, 0])
    assert sb.frames_missing == 1 and not sb.passed


# -- co-simulation of the scaffolding design ---------------------------------------------------
EPB, IN_W, OUT_W, BEATS, BUSY = 4, 5, 8, 4, 20


def _design(bug=0):
    from accumulus.sim.runner import Design

    return Design(
        name=f"axis_frame_adder-bug{bug}", sources=[DATA / "axis_frame_adder.v"], toplevel="axis_frame_adder",
        input=StreamFormat(EPB, IN_W, False, 3, EPB * BEATS), output=StreamFormat(EPB, OUT_W, True, 4, EPB * BEATS),
        parameters=dict(EPB=EPB, IN_W=IN_W, OUT_W=OUT_W, BEATS=BEATS, BUSY=BUSY, BUG=bug),
        cycles_per_frame_estimate=2 * BEATS + BUSY,
    )


@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("simbuild")


def _stimulus(frames=120, seed=0):
    x = np.random.default_rng(seed).integers(0, 1 << IN_W, size=(frames, EPB * BEATS))
    return x, 2 * x - 3          # the design's documented function, not the testbench's


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_cosim_scaffold_bit_exact_under_backpressure(simulator, build_root, tmp_path):
    from accumulus.sim.runner import run

    require_tool("iverilog" if simulator == "icarus" else "g++")
    x, y = _stimulus()
    r = run(_design(), x, y, simulator=simulator, build_root=build_root, work_dir=tmp_path,
            seed=5, backpressure=0.4, measure_frames=6)
    assert r["passed"], r
    assert r["frames_checked"] == 126 and r["frames_received"] == 126 and r["extra_frames"] == 0
    assert r["mismatched_elements"] == 0
    # The design takes exactly 2*BEATS + BUSY cycles per frame; latency one cycle less
    # (first input transfer edge to the tlast transfer edge of the same frame).
    assert r["cycles_per_frame"] == 2 * BEATS + BUSY
    assert r["latency_cycles"] == 2 * BEATS + BUSY - 1
    # back-pressure really happened on both sides and slowed the run down
    assert r["input_gap_cycles"] > 0 and r["output_stall_cycles"] > 0
    assert r["backpressure_phase_cycles"] > 1.15 * 120 * (2 * BEATS + BUSY)


def test_cosim_catches_wrong_values(build_root, tmp_path):
    from accumulus.sim.runner import run

    require_tool("iverilog")
    x, y = _stimulus(frames=40, seed=1)
    r = run(_design(bug=1), x, y, build_root=build_root, work_dir=tmp_path, seed=2, backpressure=0.3, measure_frames=0)
    assert not r["passed"]
    hits = np.argwhere(x == (1 << IN_W) - 1)   # BUG=1 flips bit 0 of y where x is all ones
    assert r["mismatched_elements"] == len(hits) > 0
    f, i = hits[0]
    assert r["first_mismatch"] == {"frame": int(f), "output_index": int(i), "expected": int(y[f, i]), "got": int(y[f, i]) ^ 1}


def test_cosim_catches_duplicated_frame(build_root, tmp_path):
    from accumulus.sim.runner import run

    require_tool("iverilog")
    x, y = _stimulus(frames=30, seed=2)
    x[:, 0] = 0
    x[-1, 0] = (1 << IN_W) - 1      # BUG=2 sends a frame twice when its first element is all ones
    y = 2 * x - 3
    r = run(_design(bug=2), x, y, build_root=build_root, work_dir=tmp_path, seed=3, backpressure=0.3, measure_frames=0)
    assert not r["passed"]
    assert r["extra_frames"] == 1 and r["mismatched_frames"] == 0
