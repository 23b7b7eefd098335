"""``accumulus`` command line.

Each subcommand is a module in :mod:`accumulus.commands` that defines ``NAME``,
``HELP`` (one line), ``EXAMPLES`` (epilog text), ``add_arguments(parser)`` and
``run(args) -> int``. Modules import their heavy dependencies inside ``run`` so that
``accumulus --help`` and ``accumulus compile`` work without torch installed.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from accumulus import __version__
from accumulus.errors import UserError

# Pipeline order, for --help; commands not in this list are appended alphabetically.
ORDER = ["train", "precision", "export", "compile", "check", "widths", "predict", "build", "sim", "report", "bitstream", "flow", "sweep"]


def _command_modules():
    import accumulus.commands as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    mods = [importlib.import_module(f"accumulus.commands.{n}") for n in names]
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(mods, key=lambda m: (rank.get(m.NAME, len(ORDER)), m.NAME))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block is what ``--help`` is for."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="accumulus",
        description="Accumulator-aware quantized networks -> verified FPGA accelerators.",
        epilog="Example: accumulus flow --out build/digits   (train, export, compile, build, sim, report)\n"
        "Run 'accumulus COMMAND --help' for each command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"accumulus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=mod.HELP,
            epilog="Examples:\n" + mod.EXAMPLES.strip("\n"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"accumulus {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"accumulus {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into e.g. `head`, which closed early: not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # The file system refused a read or write the checks in accumulus.paths could not
        # foresee (disk full, a file replaced while running, permissions changed).
        what = f"{exc.filename}: " if exc.filename else ""
        print(f"accumulus {args.command}: error: {what}{exc.strerror or exc}; check the path, its permissions "
              "and free space", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
