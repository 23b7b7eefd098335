"""Checks of the files and folders a user names on the command line.

Every command prepares its output folder with :func:`output_dir`, names its output files
through :func:`output_file`, reads ``.npy`` inputs with :func:`load_array` and project
folders with :func:`load_plan`. Each raises :class:`~accumulus.errors.UserError` whose
message names the option, the path and what to do, so that the CLI prints one line and
exits with code 2 instead of a traceback deep inside numpy or pathlib.
"""
from __future__ import annotations

import os
from pathlib import Path

from accumulus.errors import UserError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path(".")


def _not_a_folder(option: str, path: Path, blocker: Path) -> UserError:
    if blocker == path:
        return UserError(f"{option} {path} is a file, not a folder; give a folder path")
    return UserError(f"{option} {path}: {blocker} is a file, not a folder; give a folder path")


def _named(option: str, path) -> str:
    """``--input x.npy``; an option ending in '=' (``--bind NAME=``) is joined to its path."""
    return f"{option}{path}" if option.endswith("=") else f"{option} {path}"


def output_dir(path: str | Path, option: str = "--out", children: tuple[str, ...] = (), create: bool = True) -> Path:
    """Create the output folder ``path`` (and its parents); ``children`` are subfolders the
    command will create inside it, which must not be files either. ``create=False`` only
    checks, for a command that writes nothing when it fails later."""
    path = Path(path)
    blocker = _nearest_existing(path)
    if not blocker.is_dir():
        raise _not_a_folder(option, path, blocker)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise UserError(f"{option} {path}: permission denied creating the folder; choose a folder you can "
                            "write to") from None
        except OSError as exc:
            raise UserError(f"{option} {path}: cannot create the folder ({exc.strerror or exc}); give another "
                            "folder path") from None
        blocker = path
    if not os.access(blocker, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: permission denied ({blocker} is not writable); choose a folder "
                        "you can write to")
    for child in children:
        sub = path / child
        blocker = _nearest_existing(sub)
        if not blocker.is_dir():
            raise UserError(f"{option} {path}: {blocker} is a file, not a folder; remove it or give another "
                            f"{option}")
    return path


def output_file(path: str | Path, option: str, suffix: str | None = None) -> Path:
    """Check that the file ``path`` can be written (its folder exists and is writable).

    ``suffix``: the extension numpy appends when the name lacks it (``np.save`` adds
    ``.npy``, ``np.savez`` ``.npz``); the returned path is the file actually written.
    """
    path = Path(path)
    if suffix and path.suffix != suffix:
        path = path.with_name(path.name + suffix)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file path such as {path / ('out' + (suffix or ''))}")
    parent = path.parent
    blocker = _nearest_existing(parent)
    if blocker != parent:
        if not blocker.is_dir():
            raise UserError(f"{option} {path}: {blocker} is a file, not a folder; give a path inside a folder")
        raise UserError(f"{option} {path}: folder {parent} does not exist; create it first or write elsewhere")
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder; give a path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{option} {path}: permission denied; write to a folder you can write to")
    return path


def input_file(path: str | Path, option: str, what: str = "file") -> Path:
    """An existing regular file, or a UserError naming the option."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{_named(option, path)} is a folder; give the path of the {what}")
    if not path.exists():
        raise UserError(f"{_named(option, path)}: no such file; check the path")
    if not os.access(path, os.R_OK):
        raise UserError(f"{_named(option, path)}: permission denied reading the file")
    return path


def load_array(path: str | Path, option: str, plan=None, batch: bool = True, numeric: bool = True):
    """A ``.npy`` array (never pickled objects); ``numeric``: of integers or floats, without
    NaN; ``batch``: non-empty, batch first. With ``plan``, the shape after the batch axis
    must be the plan's ONNX input shape.
    """
    import numpy as np

    path = input_file(path, option, ".npy file")
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head.startswith(ZIP_MAGIC):
        raise UserError(f"{_named(option, path)} is an .npz archive; pass one array saved with numpy.save (.npy)")
    if head != NPY_MAGIC:
        raise UserError(f"{_named(option, path)} is not a .npy file (no NumPy header); save the array with numpy.save")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"{_named(option, path)} holds Python objects (dtype object), which are never unpickled; "
                            "save a numeric array") from None
        raise UserError(f"{_named(option, path)}: not a readable .npy array ({exc}); save it again with "
                        "numpy.save") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{_named(option, path)}: not a readable .npy array ({exc}); save it again with "
                        "numpy.save") from None
    if not numeric:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UserError(f"{_named(option, path)} has dtype {x.dtype} (shape {x.shape}); expected an integer or float "
                        "array")
    if batch and (x.ndim == 0 or x.shape[0] == 0 or x.size == 0):
        raise UserError(f"{_named(option, path)} is empty (shape {x.shape}); expected at least one input, batch first")
    if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
        first = tuple(int(i) for i in np.argwhere(np.isnan(x))[0])
        raise UserError(f"{_named(option, path)} contains NaN (first at index {first}); inputs must be numbers")
    if plan is not None:
        want = tuple(plan.doc["input"].get("onnx_shape") or ())[1:]
        if want and tuple(x.shape[1:]) != want:
            raise UserError(f"{_named(option, path)} has shape {x.shape}; the model expects "
                            f"(B, {', '.join(map(str, want))}), batch first in the ONNX layout")
    return x


def check_binds(items) -> None:
    """Each ``--bind NAME=FILE.npy`` names a readable .npy array (read again by the compiler)."""
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--bind '{item}': expected NAME=FILE.npy")
        name, path = item.split("=", 1)
        if not name:
            raise UserError(f"--bind '{item}': the graph input's NAME is empty; expected NAME=FILE.npy")
        load_array(path, f"--bind {name}=", batch=False, numeric=False)


def project_dir(path: str | Path, option: str = "DIR", needs: str = "plan.json", made_by: str | None = None) -> Path:
    """An existing project folder (not a file)."""
    path = Path(path)
    hint = made_by or f"make it with 'accumulus compile MODEL.onnx --out {path}'"
    if not path.exists():
        raise UserError(f"{option} {path}: no such project folder; {hint}")
    if not path.is_dir():
        if path.suffix == ".onnx":
            raise UserError(f"{option} {path} is an ONNX model, not a project folder; compile it first: "
                            f"'accumulus compile {path} --out FOLDER', then pass FOLDER")
        raise UserError(f"{option} {path} is a file, not a project folder; pass the folder holding {needs}")
    return path


def load_plan(path: str | Path, option: str = "DIR"):
    """The plan of a project folder (``plan.json`` + ``plan.npz``), any read error as one line."""
    import zipfile

    from accumulus.compiler.plan import Plan

    path = Path(path)
    if not (path.is_file() and path.suffix == ".json"):
        project_dir(path, option)
        if (path / "plan.json").is_dir():
            raise UserError(f"{path / 'plan.json'} is a folder, not a plan; re-run 'accumulus compile MODEL.onnx "
                            f"--out {path}'")
    npz = (path if path.is_file() else path / "plan.json").with_suffix(".npz")
    if npz.is_file():
        with open(npz, "rb") as f:
            if not f.read(len(ZIP_MAGIC)).startswith(ZIP_MAGIC):
                raise UserError(f"{npz} is not an .npz archive (damaged or replaced); re-run 'accumulus compile "
                                f"MODEL.onnx --out {npz.parent}'")
    try:
        return Plan.load(path)
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        where = path if path.is_file() else path / "plan.json"
        raise UserError(f"{where}: not a readable plan ({type(exc).__name__}: {exc}); re-run "
                        f"'accumulus compile MODEL.onnx --out {where.parent}'") from None
