"""``accumulus bitstream``: the accelerator inside the UART harness, as a bitstream for a board.

Writes ``DIR/bitstream/``:

``accumulus_<board>.bin|.bit``
    the bitstream (iCE40: ``iceprog``; ECP5: ``openFPGALoader -b ulx3s``);
``bitstream.json``
    board, policy, harness protocol (bytes per image, bytes per answer, baud), Fmax and
    utilisation from nextpnr, tool versions;
``host.py``
    a client that sends images and prints the classes (needs ``pyserial`` on the host);
``build/``
    the amaranth-boards build tree (Yosys script, constraints, nextpnr log and report).

The protocol is in :mod:`.harness`; docs/boards.md tells how to use it on the board.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from accumulus.errors import UserError

from .boards import Board
from .pnr import BAUD, harness_params, place_and_route

__all__ = ["make_bitstream", "HOST_SCRIPT"]

HOST_SCRIPT = '''"""Send images to the accumulus UART harness and print the answers.

usage: python host.py PORT images.npy      (images: uint8 codes, shape (B, {frame_elems}))
       python host.py PORT --random 4       (random codes, to check the link)
Needs: pip install pyserial numpy
"""
import sys
import time

import numpy as np
import serial

FRAME_ELEMS = {frame_elems}      # input codes per image, one byte each, in stream order
IN_BITS = {in_width}             # bits per input code
ANSWER_BYTES = {answer_bytes}    # bytes back per image ({out_beats} beat(s) x {out_bytes} byte(s), LSB first)
BAUD = {baud}


def classify(port, images):
    out = []
    with serial.Serial(port, BAUD, timeout=2) as s:
        s.reset_input_buffer()
        for img in images:
            codes = np.asarray(img, dtype=np.int64).reshape(-1)
            assert codes.size == FRAME_ELEMS, f"an image has {{FRAME_ELEMS}} codes, got {{codes.size}}"
            s.write(bytes(int(c) & 0xFF for c in codes))
            answer = s.read(ANSWER_BYTES)
            if len(answer) != ANSWER_BYTES:
                raise SystemExit(f"timeout: got {{len(answer)}} of {{ANSWER_BYTES}} bytes (is the bitstream loaded?)")
            out.append(int.from_bytes(answer, "little") if ANSWER_BYTES <= 8 else answer)
    return out


if __name__ == "__main__":
    port = sys.argv[1]
    if sys.argv[2] == "--random":
        imgs = np.random.default_rng(0).integers(0, 1 << IN_BITS, size=(int(sys.argv[3]), FRAME_ELEMS))
    else:
        imgs = np.load(sys.argv[2])
    t = time.time()
    answers = classify(port, imgs)
    print("\\n".join(str(a) for a in answers))
    print(f"{{len(answers)}} images in {{time.time() - t:.2f}} s", file=sys.stderr)
'''


def make_bitstream(project: Path, board: Board, *, out: Path | None = None, policy: str = "exact",
                   say=print) -> dict:
    """Build (if needed), wrap, place and route, and pack the bitstream of ``project``'s plan."""
    if not board.has_open_pnr:
        raise UserError(f"board '{board.id}' has no open place and route: bitstreams are built for icebreaker and "
                        f"ulx3s-85f; for {board.id} use 'accumulus report DIR --board {board.id}' (Vivado TCL/XDC)")
    from accumulus.compiler.plan import Plan
    from accumulus.hw.build import build as hw_build

    project = Path(project)
    out_dir = Path(out or project) / "bitstream"
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan.load(project)
    rtl_dir = project / "rtl"
    build_json = rtl_dir / "build.json"
    build_doc = json.loads(build_json.read_text()) if build_json.exists() else None
    if build_doc is None or build_doc.get("acc_policy") != policy:
        say(f"bitstream: building the RTL under acc-policy {policy} into {out_dir / 'rtl'}")
        build_doc = hw_build(plan, out_dir, policy)
        rtl_dir = out_dir / "rtl"
    params = harness_params(build_doc)
    if params["in_width"] > 8:
        raise UserError(f"input codes are {params['in_width']} bits wide; the UART harness sends one byte per code")
    say(f"bitstream: place and route for {board.id} (harness: {params['frame_elems']} bytes per image, "
        f"{params['out_beats_per_frame']} x {(params['out_bits'] + 7) // 8} byte(s) back, {BAUD} baud)")
    r = place_and_route(board, rtl_dir, out_dir / "build", params, dsp=False)
    if not r["fits"] or not r["bitstream"]:
        raise UserError(f"place and route for {board.id} failed: {r['error']} (log: {out_dir / 'build' / 'build.log'})")
    ext = Path(r["bitstream"]).suffix
    target = out_dir / f"accumulus_{board.id}{ext}"
    shutil.copyfile(r["bitstream"], target)
    out_bytes = (params["out_bits"] + 7) // 8
    (out_dir / "host.py").write_text(HOST_SCRIPT.format(
        frame_elems=params["frame_elems"], in_width=params["in_width"], baud=BAUD, out_bytes=out_bytes,
        out_beats=params["out_beats_per_frame"], answer_bytes=out_bytes * params["out_beats_per_frame"]))
    meta = {
        "board": board.id, "part": board.part, "bitstream": target.name, "acc_policy": build_doc["acc_policy"],
        "plan": plan.doc.get("source", {}).get("model"),
        "harness": {**params, "baud": BAUD, "answer_bytes": out_bytes * params["out_beats_per_frame"],
                    "protocol": "send frame_elems bytes (one code each, stream order); read answer_bytes "
                                "(each output beat LSB first)"},
        "clock_mhz": board.clock_mhz, "fmax_mhz": r["fmax_mhz"], "utilization": r["utilization"],
        "program": board.toolchain.get("program", "").format(bitstream=target.name),
        "pnr_seconds": r["seconds"],
    }
    (out_dir / "bitstream.json").write_text(json.dumps(meta, indent=1) + "\n")
    if r["fmax_mhz"] and r["fmax_mhz"] < board.clock_mhz:
        say(f"bitstream: WARNING Fmax {r['fmax_mhz']} MHz is below the board clock {board.clock_mhz} MHz")
    say(f"bitstream: wrote {target} (Fmax {r['fmax_mhz']} MHz at a {board.clock_mhz} MHz clock); "
        f"program: {meta['program']}")
    return meta
