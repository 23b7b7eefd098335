"""Shared test fixtures and guards.

* Run tests as ``pytest`` (not ``python -m pytest``): the repository root on sys.path
  would let ``import hw`` shadow the installed ``accumulus.hw``. The guard below fails
  the session if that happens.
* ``require_tool("iverilog")`` fails a test when a tool is missing; a developer may set
  ``ACCUMULUS_ALLOW_SKIP=1`` to skip instead. CI never sets it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("quant", "compiler", "hw", "sim", "boards")


def pytest_sessionstart(session):
    for name in FOLDERS:
        spec = importlib.util.find_spec(name)
        if spec is not None:
            raise pytest.UsageError(
                f"bare 'import {name}' resolves to {spec.origin}: the repository root is on sys.path "
                f"and would shadow accumulus.{name}. Run 'pytest' (or 'make test'), not 'python -m pytest'."
            )


def allow_skip() -> bool:
    return os.environ.get("ACCUMULUS_ALLOW_SKIP") == "1"


def require_tool(name: str) -> str:
    """Path of executable ``name``; fails (or skips under ACCUMULUS_ALLOW_SKIP=1) when missing."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path:
        return path
    msg = f"required tool '{name}' not found on PATH (run 'make install')"
    if allow_skip():
        pytest.skip(msg)
    pytest.fail(msg)


def require_module(name: str):
    """Import ``name``; fails (or skips under ACCUMULUS_ALLOW_SKIP=1) when not installed."""
    try:
        return __import__(name)
    except ImportError as exc:
        msg = f"required Python package '{name}' not installed ({exc}); run 'make install'"
        if allow_skip():
            pytest.skip(msg)
        pytest.fail(msg)


@pytest.fixture
def tool():
    return require_tool


# -- corpus counts: each differential-corpus case records its family; the totals are printed at
# the end of the run (summed over xdist workers through files in the cache folder)
CORPUS_DIR = REPO / ".pytest_cache" / "corpus"


def record_corpus(family: str) -> None:
    import json
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(CORPUS_DIR / f"{worker}.jsonl", "a") as f:
        f.write(json.dumps(family) + "\n")


def pytest_configure(config):
    if not hasattr(config, "workerinput"):       # the controller (or a run without xdist)
        import shutil as _sh
        _sh.rmtree(CORPUS_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    import collections
    import json
    if not CORPUS_DIR.is_dir():
        return
    counts = collections.Counter()
    for p in CORPUS_DIR.glob("*.jsonl"):
        counts.update(json.loads(line) for line in p.read_text().splitlines() if line)
    if counts:
        terminalreporter.section("differential corpus: graphs checked against a reference executor")
        for fam, n in sorted(counts.items()):
            terminalreporter.write_line(f"{fam:<40} {n:>5}")
        terminalreporter.write_line(f"{'total':<40} {sum(counts.values()):>5}")
