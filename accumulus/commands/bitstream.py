"""accumulus bitstream: the accelerator in a UART harness, placed, routed and packed for a board."""
from __future__ import annotations

NAME = "bitstream"
HELP = "Build a bitstream (UART harness around the accelerator) for icebreaker or ulx3s-85f."
EXAMPLES = """
  accumulus bitstream build/digits --board icebreaker        # -> build/digits/bitstream/accumulus_icebreaker.bin
  accumulus bitstream build/tfc --board ulx3s-85f
  iceprog build/digits/bitstream/accumulus_icebreaker.bin
  python build/digits/bitstream/host.py /dev/ttyUSB1 images.npy
"""


def add_arguments(p):
    p.add_argument("project", metavar="DIR", help="project folder with plan.json (and rtl/ if already built)")
    p.add_argument("--board", required=True, choices=["icebreaker", "ulx3s-85f"], help="target board")
    p.add_argument("--acc-policy", default="exact", help="accumulator policy of the built RTL (default: exact)")
    p.add_argument("--synthetic-preset", default=None, metavar="NAME",
                   help="when DIR has no plan.json, write the synthetic stand-in of a preset there first")
    p.add_argument("--out", default=None, help="write bitstream/ under this folder (default: DIR)")


def run(args) -> int:
    from pathlib import Path

    from accumulus.boards.bitstream import make_bitstream
    from accumulus.boards.boards import load_board

    project = Path(args.project)
    if args.synthetic_preset and not (project / "plan.json").exists():
        from accumulus.boards.presets import preset_plan

        plan, note = preset_plan(args.synthetic_preset)
        plan.save(project)
        print(f"wrote {project}/plan.json: {note}")
    make_bitstream(project, load_board(args.board), out=Path(args.out) if args.out else None,
                   policy=args.acc_policy)
    return 0
