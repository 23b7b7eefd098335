"""Boards as data: one JSON file per board in ``boards/data/<id>.json``.

A board is what the compiler folds against (``budget``) and what the open toolchain
targets (``family``, ``part``, ``package``, ``toolchain``). Nothing here runs a tool.
The compiler reads the same JSON files (``budget``) so that there is one source of truth
for every board fact.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from accumulus.errors import UserError

__all__ = ["Board", "BOARD_IDS", "FAMILIES", "load_board", "board_ids", "board_path"]

# Yosys synthesis family per board family; xc7 has no open place-and-route here.
FAMILIES = {"ice40": "synth_ice40", "ecp5": "synth_ecp5", "xc7": "synth_xilinx"}
REQUIRED_KEYS = ("id", "part", "package", "family", "clock_mhz", "budget", "toolchain")
BUDGET_KEYS = ("lut", "ff", "dsp", "bram_bits")
BOARD_IDS = ("arty-a7-35t", "icebreaker", "ulx3s-85f")


def _data_dir():
    return resources.files("accumulus.boards").joinpath("data")


def board_ids() -> list[str]:
    """Ids of every board shipped in ``boards/data``."""
    return sorted(p.name[:-5] for p in _data_dir().iterdir() if p.name.endswith(".json"))


def board_path(board_id: str) -> Path:
    return Path(str(_data_dir().joinpath(f"{board_id}.json")))


@dataclass(frozen=True)
class Board:
    """One board: ``budget`` is ``{"lut", "ff", "dsp", "bram_bits"}``; ``doc`` is the whole JSON."""

    id: str
    name: str
    family: str
    part: str
    package: str
    speed: str | None
    clock_mhz: float
    lut_kind: str
    budget: dict
    toolchain: dict
    uart: dict
    amaranth_platform: str | None
    doc: dict

    @property
    def synth_command(self) -> str:
        return FAMILIES[self.family]

    @property
    def has_open_pnr(self) -> bool:
        """True when nextpnr from pip can place and route for this board."""
        return self.family in ("ice40", "ecp5")

    def fits(self, used: dict) -> dict:
        """Per resource ``{"used", "budget", "fraction", "fits"}`` for the keys of ``budget`` present in ``used``."""
        out = {}
        for key, cap in self.budget.items():
            if key not in used or used[key] is None:
                continue
            u = int(used[key])
            out[key] = {"used": u, "budget": int(cap), "fraction": u / cap if cap else float("inf"),
                        "fits": u <= cap}
        return out

    def platform(self):
        """The amaranth-boards platform instance (imports amaranth; only for bitstreams)."""
        if not self.amaranth_platform:
            raise UserError(f"board '{self.id}' has no amaranth-boards platform; bitstreams need one")
        import importlib

        mod, cls = self.amaranth_platform.split(":")
        return getattr(importlib.import_module(mod), cls)()


def validate_board_doc(doc: dict, where: str) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise UserError(f"{where}: board file lacks keys {missing}; every board needs {list(REQUIRED_KEYS)}")
    if doc["family"] not in FAMILIES:
        raise UserError(f"{where}: family '{doc['family']}' is not one of {sorted(FAMILIES)}")
    bmissing = [k for k in BUDGET_KEYS if k not in doc["budget"]]
    if bmissing:
        raise UserError(f"{where}: budget lacks {bmissing}; a budget has {list(BUDGET_KEYS)}")
    for k in BUDGET_KEYS:
        v = doc["budget"][k]
        if not isinstance(v, int) or v < 0:
            raise UserError(f"{where}: budget.{k} must be a non-negative integer, got {v!r}")
    if not (isinstance(doc["clock_mhz"], (int, float)) and doc["clock_mhz"] > 0):
        raise UserError(f"{where}: clock_mhz must be a positive number, got {doc['clock_mhz']!r}")


def load_board(board: str | Path) -> Board:
    """A board by id (``icebreaker``, ``ulx3s-85f``, ``arty-a7-35t``) or by path to a JSON file."""
    p = Path(board)
    if p.suffix == ".json" and p.exists():
        where = str(p)
        text = p.read_text()
    else:
        if str(board) not in board_ids():
            raise UserError(f"unknown board '{board}': choose one of {', '.join(board_ids())} "
                            "or pass the path of a board JSON file")
        where = f"boards/data/{board}.json"
        text = _data_dir().joinpath(f"{board}.json").read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc})") from None
    validate_board_doc(doc, where)
    return Board(
        id=doc["id"], name=doc.get("name", doc["id"]), family=doc["family"], part=doc["part"],
        package=doc["package"], speed=doc.get("speed"), clock_mhz=float(doc["clock_mhz"]),
        lut_kind=doc.get("lut_kind", "LUT4"), budget=dict(doc["budget"]), toolchain=dict(doc["toolchain"]),
        uart=dict(doc.get("uart") or {}), amaranth_platform=doc.get("amaranth_platform"), doc=doc,
    )
