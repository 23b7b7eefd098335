"""The cocotb test module run inside the simulator (Icarus or Verilator).

Configured by the JSON file named in ``ACCUMULUS_SIM_CONFIG`` (written by
:mod:`accumulus.sim.runner`): port formats, clock, reset, the stimulus ``.npz``
(``inputs`` and golden ``expected``, both (frames, elements) int64), seed,
back-pressure and where to write the raw results.

Two phases on one reset:

1. **throughput**: ``measure_frames`` frames with input offered every cycle and the
   output always ready; cycles per frame = steady-state interval between output
   ``tlast`` transfers, latency = first input transfer of frame 0 to its output ``tlast``;
2. **back-pressure**: every stimulus frame with random ``tvalid`` gaps on the input and
   random ``tready`` stalls on the output (seeded).

Every output frame of both phases is checked against the golden model, in order; after
the last frame the output is watched for a while so that a duplicated frame is caught.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import convert
from cocotb.triggers import Event, RisingEdge, Timer

from .axis import AxisDriver, AxisMonitor, ClockTiming, NoPause, RandomPause, StreamFormat
from .scoreboard import Scoreboard

from .runner import CONFIG_ENV


def _load_config() -> dict:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"{CONFIG_ENV} is not set: run simulations through accumulus.sim.runner or 'accumulus sim'")
    return json.loads(Path(path).read_text())


async def _watchdog(timing: ClockTiming, progress, window_cycles: int, on_stall) -> None:
    """Calls ``on_stall(reason)`` when neither stream moved for ``window_cycles`` cycles."""
    last = progress()
    while True:
        await Timer(window_cycles * timing.period_steps, "step")
        now = progress()
        if now == last:
            on_stall(f"no AXI-Stream transfer for {window_cycles} cycles (design stalled or a frame was lost)")
            return
        last = now


def _steady_interval(ends: list[int], period: int) -> tuple[float | None, list[int]]:
    intervals = [(b - a) // period for a, b in zip(ends, ends[1:])]
    if not intervals:
        return None, intervals
    tail = sorted(intervals[len(intervals) // 2:])   # after the pipeline has filled
    return float(tail[len(tail) // 2]), intervals


@cocotb.test()
async def cosim(dut):
    """Drive the stimulus through the design and compare every frame with the golden model."""
    cfg = _load_config()
    wall0 = time.perf_counter()
    period_ns = cfg.get("clock_period_ns", 10)
    clk = getattr(dut, cfg.get("clock", "clk"))
    Clock(clk, period_ns, unit="ns").start(start_high=False)
    period_steps = int(convert(period_ns, "ns", to="step"))
    timing = ClockTiming(clk, period_steps)

    fin, fout = StreamFormat.from_json(cfg["input"]), StreamFormat.from_json(cfg["output"])
    with np.load(cfg["stimulus"]) as z:
        inputs, expected = z["inputs"].astype(np.int64), z["expected"].astype(np.int64)
    frames = len(inputs)
    measure = int(cfg.get("measure_frames", 0))
    m_idx = np.resize(np.arange(frames), measure) if frames else np.zeros(0, dtype=np.int64)
    all_expected = np.concatenate([expected[m_idx], expected]) if measure else expected
    board = Scoreboard(all_expected)

    driver = AxisDriver(dut, cfg.get("input_ports", "s_axis"), fin, timing)
    done = Event()
    target = {"frames": 0}

    def on_frame(frame):
        board.check(frame.index, frame.values, frame.error)
        if len(monitor.frames) >= target["frames"]:
            done.set()

    monitor = AxisMonitor(dut, cfg.get("output_ports", "m_axis"), fout, timing, on_frame=on_frame)

    # reset (Amaranth's synchronous, active-high rst by default)
    rst = cfg.get("reset", {"name": "rst", "active_high": True, "cycles": 4})
    driver.idle()
    monitor.tready.value = 0
    rst_sig = getattr(dut, rst["name"])
    rst_sig.value = 1 if rst["active_high"] else 0
    for _ in range(int(rst["cycles"])):
        await RisingEdge(clk)
    rst_sig.value = 0 if rst["active_high"] else 1
    await RisingEdge(clk)
    t0 = timing.now()
    cocotb.start_soon(monitor.run())

    window = int(cfg.get("stall_cycles", 20000))
    stalled: str | None = None

    def on_stall(reason: str) -> None:
        nonlocal stalled
        stalled = reason
        done.set()

    watchdog = cocotb.start_soon(
        _watchdog(timing, lambda: (driver.beats_sent, monitor.beats_received), window, on_stall))

    async def phase(sel: np.ndarray, want_frames: int) -> None:
        if stalled:
            return
        target["frames"] = want_frames
        done.clear()
        sender = cocotb.start_soon(driver.send(inputs[i] for i in sel))
        if len(monitor.frames) < want_frames:
            await done.wait()
        if not stalled:
            await sender
        # back to "just after an edge" for the next phase
        await RisingEdge(clk)

    results: dict = {}
    # 1. throughput: no back-pressure
    cycles_per_frame = latency = None
    intervals: list[int] = []
    if measure:
        driver.pause, monitor.pause = NoPause(), NoPause()
        await phase(m_idx, measure)
        ends = [f.end_steps for f in monitor.frames[:measure]]
        cycles_per_frame, intervals = _steady_interval(ends, period_steps)
        if monitor.frames and driver.frame_start_steps:
            latency = (monitor.frames[0].end_steps - driver.frame_start_steps[0]) // period_steps
    # 2. back-pressure on both sides
    p = float(cfg.get("backpressure", 0.0))
    seed = int(cfg.get("seed", 0))
    max_pause = int(cfg.get("max_pause", 8))
    driver.pause = RandomPause(p, max_pause, seed=2 * seed + 1)
    monitor.set_pause(RandomPause(p, max_pause, seed=2 * seed + 2))
    t_bp = timing.now()
    gaps0, stalls0 = driver.pause_cycles, monitor.pause_cycles
    await phase(np.arange(frames), measure + frames)
    bp_cycles = (timing.now() - t_bp) // period_steps

    # watch the idle output for duplicates / extra frames
    monitor.set_pause(NoPause())
    # long enough for a duplicated frame to come out: two latencies and two frame times
    drain = int(cfg.get("drain_cycles", 0)) or int(2 * (latency or 0) + 2 * cfg.get("cycles_per_frame_estimate", 0) + 200)
    if not stalled:
        await timing.edges(drain)
    watchdog.cancel()

    sim_cycles = (timing.now() - t0) // period_steps
    results.update(board.summary())
    results.update({
        "frames": frames,
        "measure_frames": measure,
        "frames_sent": driver.frames_sent,
        "frames_received": len(monitor.frames),
        "stalled": stalled,
        "cycles_per_frame": cycles_per_frame,
        "output_intervals": intervals,
        "latency_cycles": latency,
        "backpressure": p,
        "seed": seed,
        "backpressure_phase_cycles": int(bp_cycles),
        "input_gap_cycles": int(driver.pause_cycles - gaps0),
        "output_stall_cycles": int(monitor.pause_cycles - stalls0),
        "sim_cycles": int(sim_cycles),
        "testbench_seconds": time.perf_counter() - wall0,
        "passed": board.passed and not stalled,
    })
    Path(cfg["results"]).write_text(json.dumps(results, indent=1) + "\n")
    assert not stalled, stalled
    assert board.passed, (
        f"{board.mismatched_frames} of {board.frames_checked} frames differ from the golden model "
        f"(first: {results['first_mismatch']}), {board.frames_missing} missing, {board.extra_frames} extra; "
        f"framing: {board.framing_errors[:3]}"
    )
