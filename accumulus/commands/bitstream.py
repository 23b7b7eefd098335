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
    from accumulus.errors import UserError
    from accumulus.hw.top import check_policy
    from accumulus.paths import load_plan, output_dir

    project = Path(args.project)
    try:
        policy = check_policy(args.acc_policy)
    except ValueError as exc:
        raise UserError(f"--acc-policy: {exc}") from None
    if args.synthetic_preset and not (project / "plan.json").exists():
        from accumulus.boards.presets import preset_plan

        plan, note = preset_plan(args.synthetic_preset)
        output_dir(project, "DIR")
        plan.save(project)
        print(f"wrote {project}/plan.json: {note}")
    load_plan(project)
    build_json = project / "rtl" / "build.json"
    if build_json.exists():
        import json

        try:
            json.loads(build_json.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{build_json}: not a readable build record ({type(exc).__name__}: {exc}); re-run "
                            f"'accumulus build {project}'") from None
    out = output_dir(args.out or project, "--out" if args.out else "DIR", children=("bitstream",))
    make_bitstream(project, load_board(args.board), out=out if args.out else None, policy=policy)
    return 0
