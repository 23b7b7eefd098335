"""DESIGN.md's layering: each package imports with the libraries it must never use blocked."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# package -> top-level modules it must never import (DESIGN.md, "Layering")
FORBIDDEN = {
    "compiler": ["torch", "brevitas", "amaranth", "cocotb"],
    "hw": ["torch", "brevitas", "onnx", "cocotb"],
    "boards": ["torch", "brevitas", "onnx"],
    "sim": ["torch", "brevitas"],
    "quant": ["amaranth", "cocotb"],
}

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    blocked = set(sys.argv[2].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"blocked by layering test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    pkg = importlib.import_module("accumulus." + sys.argv[1])
    names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            failed.append(f"{name}: {exc}")
    print("\\n".join(failed))
    sys.exit(1 if failed else 0)
    """
)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_without_forbidden_libraries(package):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, package, ",".join(FORBIDDEN[package])],
        capture_output=True, text=True, cwd="/",
    )
    assert proc.returncode == 0, f"accumulus.{package} imports a forbidden library:\n{proc.stdout}{proc.stderr}"


def test_cli_help_without_torch():
    script = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] in ('torch', 'brevitas', 'amaranth', 'onnx', 'cocotb'): raise ImportError(n)\n"
        "sys.meta_path.insert(0, B())\n"
        "from accumulus.cli import main\n"
        "sys.argv = ['accumulus', '--help']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "COMMAND" in proc.stdout
