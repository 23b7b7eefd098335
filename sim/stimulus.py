"""Stimulus for co-simulation: test images, a user's ``.npy``, and worst-case vectors.

Everything returned is integer codes in stream order (docs/plan.md), ``(frames, *shape)``.

* :func:`test_codes`: images of the dataset the plan was made for
  (:mod:`accumulus.quant.data`, numpy only), quantized exactly as the plan's input step;
* :func:`npy_codes`: a user's ``.npy`` of float inputs (ONNX layout) or integer codes;
* :func:`worst_case_codes`: inputs that drive a MAC layer's accumulators to both ends of
  their exact range (``compiler.accumulators.worst_case_inputs``, from the weight signs):
  per channel, one vector reaching the top of the range and one reaching the bottom. For
  a convolution the per-channel window is tiled over the image, so every window aligned
  with the tiling sees exactly that pattern.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from accumulus.compiler import golden
from accumulus.compiler.accumulators import worst_case_inputs
from accumulus.compiler.plan import MAC_KINDS, Plan
from accumulus.compiler.types import IntType
from accumulus.errors import UserError

__all__ = ["dataset_for_plan", "test_codes", "random_codes", "npy_codes", "worst_case_codes", "first_mac_layer"]

# Input element count of each built-in dataset's images (DESIGN.md, canonical models).
_DATASET_BY_SIZE = {64: "digits", 784: "mnist5k"}


def dataset_for_plan(plan: Plan) -> str | None:
    """The built-in dataset a plan's input matches: its metadata first, then its input size."""
    meta = (plan.doc.get("source") or {}).get("metadata") or {}
    for key in ("dataset", "data"):
        name = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(name, str) and name:
            return name
    size = int(np.prod(plan.tensor_shape(plan.input_name)))
    return _DATASET_BY_SIZE.get(size)


def _check_codes(plan: Plan, codes: np.ndarray, what: str) -> np.ndarray:
    itype = plan.tensor_type(plan.input_name)
    if codes.size and (codes.min() < itype.min or codes.max() > itype.max):
        raise UserError(
            f"{what}: input codes span [{codes.min()}, {codes.max()}], outside the plan's input type {itype} "
            f"[{itype.min}, {itype.max}]"
        )
    return codes


def test_codes(plan: Plan, frames: int, seed: int = 0, dataset: str | None = None) -> np.ndarray:
    """``frames`` test-split images of the plan's dataset as input codes (wrapping if fewer)."""
    from accumulus.quant.data import input_codes, load_dataset

    name = dataset or dataset_for_plan(plan)
    if name is None:
        raise UserError(
            f"no built-in dataset has {int(np.prod(plan.tensor_shape(plan.input_name)))} input elements: "
            "pass --stimulus FILE.npy with inputs for this model"
        )
    ds = load_dataset(name, seed=seed)
    idx = np.resize(np.arange(len(ds.x_test)), frames)
    x = ds.x_test[idx]
    spec = plan.doc["input"]
    # a bipolar input (BipolarQuant) takes the float images through the graph's own step,
    # sign after any float ops before it: its scale only dequantizes
    if spec.get("bipolar") or np.isclose(float(np.ravel(spec["scale"])[0]), ds.input_quant.scale, rtol=1e-6):
        return golden.quantize_input(plan, x)      # the plan's own float step
    # A plan with another input scale (synthetic plans use 1.0): feed the dataset's pixel codes.
    codes = input_codes(x, ds.input_quant)
    shape = plan.tensor_shape(plan.input_name)
    if int(np.prod(codes.shape[1:])) != int(np.prod(shape)):
        raise UserError(f"dataset '{name}' images have shape {codes.shape[1:]}, the plan's input is {shape}")
    return _check_codes(plan, golden.codes_to_stream(plan, codes), f"dataset '{name}'")


def random_codes(plan: Plan, frames: int, seed: int = 0) -> np.ndarray:
    """Uniform random codes over the plan's input type (for plans without a dataset)."""
    itype = plan.tensor_type(plan.input_name)
    shape = plan.tensor_shape(plan.input_name)
    return np.random.default_rng(seed).integers(itype.min, itype.max + 1, size=(frames,) + shape)


def npy_codes(plan: Plan, path: str | Path, frames: int | None = None) -> np.ndarray:
    """A user's ``.npy``: floats in the ONNX layout (quantized by the plan) or integer codes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"stimulus file {path} not found: pass an .npy of inputs (N, ...) in the model's ONNX layout")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several kinds for a bad file
        raise UserError(f"stimulus file {path} is not a readable .npy ({type(exc).__name__}: {exc})") from None
    shape = plan.tensor_shape(plan.input_name)
    onnx_shape = tuple(plan.doc["input"].get("onnx_shape") or ())
    if x.ndim >= 1 and x.shape[1:] not in (tuple(onnx_shape[1:]), shape) and int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise UserError(
            f"stimulus file {path} has shape {x.shape}; expected (N, {', '.join(map(str, onnx_shape[1:]))}) "
            f"floats in the ONNX layout or integer codes"
        )
    if frames is not None:
        x = x[np.resize(np.arange(len(x)), frames)]
    if np.issubdtype(x.dtype, np.integer):
        if x.ndim == 4 or x.shape[1:] == tuple(onnx_shape[1:]):
            codes = golden.codes_to_stream(plan, x)
        else:
            codes = x.reshape((len(x),) + shape)
        return _check_codes(plan, codes.astype(np.int64), f"stimulus file {path}")
    if x.shape[1:] != tuple(onnx_shape[1:]):
        x = x.reshape((len(x),) + tuple(onnx_shape[1:]))
    return golden.quantize_input(plan, x)


def first_mac_layer(plan: Plan) -> dict:
    for layer in plan.layers:
        if layer["kind"] in MAC_KINDS:
            return layer
    raise UserError("the plan has no matvec/conv layer: worst-case vectors need one")


def _window_vectors(layer: dict, weight: np.ndarray) -> np.ndarray:
    """(2N, K): per channel the window/vector reaching hi, then the one reaching lo."""
    itype = IntType.from_json(layer["input_type"])
    x_hi, x_lo = worst_case_inputs(weight, itype)
    return np.concatenate([x_hi, x_lo])


def worst_case_codes(plan: Plan, layer: dict | None = None, as_windows: bool = False) -> np.ndarray:
    """Inputs of ``layer`` (default: the first MAC layer) that reach its accumulator bounds.

    Returns ``(2N, *input_shape)``: for a matvec the vectors themselves; for a conv the
    per-channel window tiled over the layer's input image, or (``as_windows``) the bare
    ``(2N, K)`` windows for an engine fed im2col vectors.
    """
    layer = layer or first_mac_layer(plan)
    if layer["kind"] not in MAC_KINDS:
        raise UserError(f"layer '{layer['name']}' is a {layer['kind']}: worst-case vectors are for matvec/conv layers")
    w = plan.array(layer["weight"]).astype(np.int64)
    vec = _window_vectors(layer, w)
    in_shape = plan.tensor_shape(layer["inputs"][0])
    if layer["kind"] == "matvec" or as_windows:
        return vec if as_windows else vec.reshape((len(vec),) + in_shape)
    conv = layer["conv"]
    if conv["groups"] != 1:
        raise UserError(f"layer '{layer['name']}': worst-case tiling supports groups=1, got {conv['groups']}")
    kh, kw = conv["kernel"]
    sh, sw = conv["stride"]
    h, wd, c = conv["in_shape"]
    top, left = conv["pads"][0], conv["pads"][1]
    if tuple(conv.get("dilation", [1, 1])) != (1, 1):
        raise UserError(f"layer '{layer['name']}': worst-case tiling supports dilation 1")
    # The first output pixel whose window lies wholly inside the image (no padding) starts at
    # input row r0 / column c0; tiling from there gives that window exactly the pattern.
    r0 = -(-top // sh) * sh - top
    c0 = -(-left // sw) * sw - left
    if r0 + kh > h or c0 + kw > wd:
        raise UserError(f"layer '{layer['name']}': the {h}x{wd} input has no window free of padding")
    pattern = vec.reshape(len(vec), kh, kw, c)
    ys = (np.arange(h) - r0) % kh
    xs = (np.arange(wd) - c0) % kw
    return pattern[:, ys][:, :, xs]
