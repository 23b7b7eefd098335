"""quant/data.py: built-in datasets, splits, input codes, user .npz files (numpy only)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from accumulus.errors import UserError
from accumulus.quant import data


def test_digits_shapes_and_codes_are_raw_pixels():
    ds = data.load_dataset("digits", seed=0)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_train.dtype == np.float32
    assert len(ds.x_train) + len(ds.x_test) == 1797
    iq = data.input_quant("digits")
    assert (iq.bits, iq.scale, iq.signed) == (5, 1 / 16, False)
    codes = data.input_codes(ds.x_test, iq)
    assert codes.min() == 0 and codes.max() == 16
    np.testing.assert_array_equal(codes, np.round(ds.x_test * 16))   # code == raw pixel 0..16
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_mnist5k_stratified_shuffled_split():
    ds = data.load_dataset("mnist5k", seed=3)
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert np.bincount(ds.y_test).tolist() == [100] * 10       # stratified: the file is sorted by class
    assert len(set(ds.y_train[:20].tolist())) > 3              # shuffled
    iq = data.input_quant("mnist5k")
    assert (iq.bits, iq.signed) == (8, False) and iq.max_value == pytest.approx(1.0)
    codes = data.input_codes(ds.x_train[:200], iq)
    assert codes.max() == 255
    np.testing.assert_array_equal(codes, np.round(ds.x_train[:200].astype(np.float64) * 255))


def test_split_is_deterministic_by_seed_and_disjoint():
    y = np.repeat(np.arange(5), 20)
    a = data.stratified_split(y, 0.2, seed=1)
    b = data.stratified_split(y, 0.2, seed=1)
    c = data.stratified_split(y, 0.2, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])
    assert not set(a[0]) & set(a[1]) and len(a[0]) + len(a[1]) == 100
    assert np.bincount(y[a[1]]).tolist() == [4] * 5


def test_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 12, 12), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    ds = data.load_dataset(str(path), seed=0)
    assert ds.image_shape == (1, 12, 12) and ds.num_classes == 3
    assert ds.input_quant.bits == 8
    assert data.input_codes(ds.x_train, ds.input_quant).max() <= 255


@pytest.mark.parametrize("case", ["corrupt", "no_y", "bad_shape", "bad_labels", "out_of_range", "missing"])
def test_bad_npz_is_a_user_error(tmp_path, case):
    path = tmp_path / "bad.npz"
    if case == "corrupt":
        path.write_bytes(b"this is not a zip file")
    elif case == "no_y":
        np.savez(path, x=np.zeros((4, 8, 8)))
    elif case == "bad_shape":
        np.savez(path, x=np.zeros((4, 2, 2, 2, 2)), y=np.zeros(4, dtype=int))
    elif case == "bad_labels":
        np.savez(path, x=np.zeros((4, 8, 8)), y=np.zeros(5, dtype=int))
    elif case == "out_of_range":
        np.savez(path, x=np.full((4, 8, 8), 3.0, dtype=np.float32), y=np.zeros(4, dtype=int))
    with pytest.raises(UserError) as exc:
        data.load_dataset(str(path))
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset"):
        data.load_dataset("cifar-11")
    with pytest.raises(UserError):
        data.input_quant("cifar-11")


def test_data_module_does_not_import_torch():
    script = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] in ('torch', 'brevitas', 'onnx'): raise ImportError(n)\n"
        "sys.meta_path.insert(0, B())\n"
        "from accumulus.quant.data import load_dataset\n"
        "print(load_dataset('digits').x_test.shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
