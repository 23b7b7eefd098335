"""quant/precision.py and `accumulus precision` (Sakr & Shanbhag per-tensor precision).

The noise gains are checked against central finite differences computed here (plain
forward passes with one element perturbed, no autograd); the fixed-point forward that
measures the mismatch is written out here layer by layer, separately from the hook-based
one in quant/precision.py.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import require_module

torch = require_module("torch")
require_module("brevitas")

import torch.nn.functional as F  # noqa: E402

from accumulus.cli import main  # noqa: E402
from accumulus.errors import UserError  # noqa: E402
from accumulus.quant import precision as P  # noqa: E402
from accumulus.quant.models import make_config, preset  # noqa: E402
from accumulus.quant.train import TrainOptions, train  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A float MLP 64-12-10-10 trained for a few steps on 200 digits."""
    out = tmp_path_factory.mktemp("tiny_float")
    cfg = make_config(model="mlp", dataset="digits", quant="float", hidden=(12, 10))
    opts = TrainOptions(epochs=2, seed=1, limit=200, progress=False, float_baseline=False)
    model, _ = train(cfg, out, opts)
    _, _, ds, _ = P.load_float_project(out)
    return out, model, ds


def _pow2_above(v):
    return 2.0 ** (math.floor(math.log2(v)) + 1)


def _weight_perturber(m, xt, w):
    """``perturb(j, e)``: the model's output on ``xt`` with element ``j`` of weight ``w`` moved by ``e``."""
    def perturb(j, e):
        flat = w.data.view(-1)
        old = float(flat[j])
        flat[j] = old + e
        out = m(xt)
        flat[j] = old
        return out
    return perturb


def _act_fd_gain(m, xt, module, n_elems):
    """_fd_gain of ``module``'s output (one activation per sample and element), perturbed by a
    forward hook."""
    state = {}

    def hook(mod, inp, out):
        if "j" in state:
            out = out.clone()
            out[:, state["j"]] += state["e"]
        return out

    h = module.register_forward_hook(hook)
    try:
        def perturb(j, e):
            state.update(j=j, e=e)
            out = m(xt)
            state.clear()
            return out

        return _fd_gain(m, xt, perturb, n_elems)
    finally:
        h.remove()


def _fd_gain(model, x, perturb, n_elems, eps=1e-6):
    """mean_n sum_{i != y} ||d(z_y - z_i)/dh||^2 / (24 (z_y - z_i)^2), by central differences."""
    with torch.no_grad():
        z = model(x)
        y = z.argmax(1)
        grads = []
        for j in range(n_elems):
            zp = perturb(j, +eps)
            zm = perturb(j, -eps)
            grads.append((zp - zm) / (2 * eps))               # (n, K) = dz/dh_j
        g = torch.stack(grads, -1)                            # (n, K, elems)
        idx = torch.arange(len(x))
        gd = g[idx, y][:, None, :] - g                        # d(z_y - z_i)/dh_j
        dz = z[idx, y][:, None] - z
        mask = torch.ones_like(dz, dtype=torch.bool)
        mask[idx, y] = False
        term = torch.where(mask, (gd ** 2).sum(-1) / (24 * torch.where(mask, dz, torch.ones_like(dz)) ** 2),
                           torch.zeros_like(dz))
        return float(term.sum(1).mean())


def test_gains_agree_with_finite_differences(tiny):
    _, model, ds = tiny
    x = ds.x_test[:40]
    infos = P.tensor_infos(model, ds.x_train)
    P.noise_gains(model, infos, x)
    by = {t.name: t for t in infos}
    assert [t.name for t in infos] == ["input_quant", "layers.0.weight", "acts.0", "layers.1.weight",
                                       "acts.1", "layers.2.weight"]

    m = P._float64_copy(model)
    xt = torch.from_numpy(x.astype(np.float64))

    # weight tensor: layers.1.weight (10 x 12), one element at a time
    w = m.layers[1].weight
    fd_w = _fd_gain(m, xt, _weight_perturber(m, xt, w), w.numel())
    r_w = _pow2_above(float(model.layers[1].weight.detach().abs().max()))
    assert by["layers.1.weight"].range == r_w
    assert by["layers.1.weight"].E / r_w ** 2 == pytest.approx(fd_w, rel=1e-5)

    # activation tensor: the first ReLU's output (12 per sample)
    fd_a = _act_fd_gain(m, xt, m.acts[0], 12)
    with torch.no_grad():
        act_max = float(torch.relu(model.layers[0](torch.from_numpy(ds.x_train).flatten(1))).max())
    r_a = _pow2_above(act_max)
    assert by["acts.0"].range == r_a
    assert by["acts.0"].E / r_a ** 2 == pytest.approx(fd_a, rel=1e-5)
    assert fd_w > 0 and fd_a > 0


def test_offsets_bound_and_b_min(tiny):
    _, model, ds = tiny
    res = P.precision_assignment(model, ds.x_train, ds.x_test, ds.x_test, 0.02, y_test=ds.y_test)
    E = np.array([t["E"] for t in res["tensors"]])
    B = np.array([t["B"] for t in res["tensors"]])
    assert np.all(E > 0)
    e_min = E.min()
    v = np.log2(np.sqrt(E / e_min))
    assert np.all(np.abs(v - np.floor(v) - 0.5) > 1e-9), "a round-half tie: pick another seed"
    assert np.array_equal(B - res["B_min"], np.round(v).astype(int))
    assert res["E_min"] == e_min
    bound = float(np.sum(E * 4.0 ** (1 - B)))
    assert res["mismatch_bound"] == pytest.approx(bound, rel=1e-12)
    assert bound <= 0.02
    # one bit less everywhere is 4x the bound: B_min is the smallest that meets the target
    assert float(np.sum(E * 4.0 ** (2 - B))) > 0.02
    # the cost model, recomputed from its definition
    fa = 0
    for layer in res["cost_layers"]:
        d, ba, bw = layer["D"], layer["B_A"], layer["B_W"]
        fa += layer["dot_products"] * (d * ba * bw + (d - 1) * (ba + bw + math.ceil(math.log2(d)) - 1))
    assert res["cost_full_adders"] == fa
    assert [layer["D"] for layer in res["cost_layers"]] == [64, 12, 10]


def test_capped_bound(tiny):
    """The per-sample capped bound: its terms average to E, it is the mean of per-sample
    minima, never above Sakr's, equal to it where no sample reaches 1, and it chooses a
    B_min no larger."""
    _, model, ds = tiny
    infos = P.tensor_infos(model, ds.x_train)
    P.noise_gains(model, infos, ds.x_test)
    S = P.per_sample_matrix(infos)
    assert S.shape == (len(ds.x_test), len(infos)) and np.all(S >= 0)
    gains = [t.E for t in infos]
    assert np.allclose(S.mean(0), gains, rtol=1e-12)
    for bits in ([2] * len(infos), [4, 3, 5, 2, 6, 3][:len(infos)], [12] * len(infos)):
        per = [min(1.0, sum(S[s, h] * 4.0 ** (1 - bits[h]) for h in range(len(infos)))) for s in range(len(S))]
        capped = P.capped_bound(S, bits)
        assert capped == pytest.approx(sum(per) / len(per), rel=1e-12)
        assert capped <= P.mismatch_bound(gains, bits) * (1 + 1e-12)
    assert P.capped_bound(S, [2] * len(infos)) < P.mismatch_bound(gains, [2] * len(infos)), "the cap never bit"
    # wide enough that no sample reaches 1: the two bounds are the same sum
    assert P.capped_bound(S, [16] * len(infos)) == pytest.approx(P.mismatch_bound(gains, [16] * len(infos)), rel=1e-9)
    for target in (0.3, 0.05, 0.01):
        assert P.choose_b_min(gains, target, "capped", S) <= P.choose_b_min(gains, target)
    res = P.precision_assignment(model, ds.x_train, ds.x_test, ds.x_test, 0.05, bound="capped")
    assert res["bound"] == "capped" and res["mismatch_bound"] == res["bounds"]["capped"] <= 0.05
    assert res["bounds"]["sakr"] >= res["bounds"]["capped"]
    with pytest.raises(UserError, match="--bound"):
        P.precision_assignment(model, ds.x_train, ds.x_test, ds.x_test, 0.05, bound="tight")


def _mlp_fixed_point(model, tensors, x):
    """Top-1 of a float QuantMLP with every tensor quantized as precision.json says."""
    t = {d["name"]: d for d in tensors}

    def q(v, name):
        step = t[name]["range"] * 2.0 ** (1 - t[name]["B"])
        lo, hi = -(2 ** (t[name]["B"] - 1)), 2 ** (t[name]["B"] - 1) - 1
        return torch.clamp(torch.round(v / step), lo, hi) * step

    n = len(model.layers)
    with torch.no_grad():
        h = q(torch.from_numpy(x), "input_quant").flatten(1)
        for i in range(n):
            h = F.linear(h, q(model.layers[i].weight, f"layers.{i}.weight"))
            if i < n - 1:
                h = q(torch.relu(h), f"acts.{i}")
    return h.argmax(1).numpy()


def test_fixed_point_measurement_agrees_and_can_fail(tiny):
    _, model, ds = tiny
    infos = P.tensor_infos(model, ds.x_train)
    ref = P.float_predictions(model, ds.x_test)
    for bits in (2, 3, 16):
        tensors = [{"name": i.name, "range": i.range, "B": bits} for i in infos]
        mine = _mlp_fixed_point(model, tensors, ds.x_test)
        assert np.array_equal(mine, P.fixed_point_predictions(model, infos, [bits] * len(infos), ds.x_test))
        if bits == 2:
            assert np.mean(mine != ref) > 0.2
        if bits == 16:
            assert np.mean(mine != ref) == 0.0


def test_cli_writes_precision_json(tiny, tmp_path, capsys):
    out_dir = tiny[0]
    out = tmp_path / "p.json"
    assert main(["precision", str(out_dir), "--mismatch", "0.05", "--samples", "50", "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["mismatch_target"] == 0.05 and res["mismatch_bound"] <= 0.05
    assert res["dataset"]["gain_samples"] == 50 and res["dataset"]["name"] == "digits"
    assert res["gains"]["samples"] == 50
    assert {t["kind"] for t in res["tensors"]} == {"weight", "activation"}
    for t in res["tensors"]:
        assert set(t) >= {"name", "kind", "layer", "E", "B", "range"}
    assert "B_min" in capsys.readouterr().out


def test_cli_errors(tiny, tmp_path, capsys):
    def err(argv):
        code = main(["precision"] + argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        return lines[0]

    assert "does not exist" in err([str(tmp_path / "nope"), "--mismatch", "0.01"])
    for bad in ("0", "1", "1.5", "-0.1"):
        assert "(0, 1)" in err([str(tiny[0]), "--mismatch", bad])
    qdir = tmp_path / "q"
    train(preset("digits-mlp"), qdir, TrainOptions(epochs=1, limit=32, progress=False, float_baseline=False))
    assert "--quant a2q+" in err([str(qdir), "--mismatch", "0.01"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "model.pt" in err([str(empty), "--mismatch", "0.01"])


def test_cnn_tensors_and_gains(tmp_path):
    """Residual CNN: the residual sum is a tensor of its own; a conv weight's gain matches FD."""
    cfg = make_config(model="resnet", dataset="digits", quant="float", hidden=(4, 4, 4))
    model, _ = train(cfg, tmp_path, TrainOptions(epochs=1, limit=64, progress=False, float_baseline=False))
    _, _, ds, _ = P.load_float_project(tmp_path)
    infos = P.tensor_infos(model, ds.x_train)
    names = [t.name for t in infos]
    assert names == ["input_quant", "conv1.weight", "act1", "conv2.weight", "act2", "add_quant",
                     "conv3.weight", "act3", "fc.weight"]
    inputs = {t.name: t.extra["input"] for t in infos if t.kind == "weight"}
    assert inputs == {"conv1.weight": "input_quant", "conv2.weight": "act1", "conv3.weight": "add_quant",
                      "fc.weight": "act3"}
    x = ds.x_test[:6]
    P.noise_gains(model, infos, x)
    m = P._float64_copy(model)
    xt = torch.from_numpy(x.astype(np.float64))
    w = m.conv2.weight
    conv2 = next(t for t in infos if t.name == "conv2.weight")
    assert conv2.E / conv2.range ** 2 == pytest.approx(_fd_gain(m, xt, _weight_perturber(m, xt, w), w.numel()),
                                                       rel=1e-5)


@pytest.mark.slow
def test_digits_mlp_measured_mismatch_within_bound(tmp_path):
    """digits-mlp, float-trained: for B_min = 2..8 the measured mismatch is <= the capped
    bound <= Sakr's bound."""
    cfg = preset("digits-mlp", quant="float")
    model, _ = train(cfg, tmp_path, TrainOptions(epochs=5, seed=0, progress=False, float_baseline=False))
    assert main(["precision", str(tmp_path), "--mismatch", "0.01", "--quiet"]) == 0
    res = json.loads((tmp_path / "precision.json").read_text())
    _, _, ds, _ = P.load_float_project(tmp_path)
    ref = P.float_predictions(model, ds.x_test)
    E = np.array([t["E"] for t in res["tensors"]])
    v = np.log2(np.sqrt(E / E.min()))
    assert np.all(np.abs(v - np.floor(v) - 0.5) > 1e-9), "a round-half tie: pick another seed"
    assert [t["offset"] for t in res["tensors"]] == np.round(v).astype(int).tolist()
    assert [t["B"] for t in res["tensors"]] == (res["B_min"] + np.round(v).astype(int)).tolist()
    rows = []
    for b_min in range(2, 9):
        B = b_min + np.round(v).astype(int)
        tensors = [dict(t, B=int(b)) for t, b in zip(res["tensors"], B)]
        measured = float(np.mean(_mlp_fixed_point(model, tensors, ds.x_test) != ref))
        bound = float(np.sum(E * 4.0 ** (1 - B)))
        capped = next(r["capped_bound"] for r in res["b_min_sweep"] if r["B_min"] == b_min)
        rows.append((b_min, measured, bound, capped))
        assert measured <= capped <= bound * (1 + 1e-12), rows
    # the chosen assignment: its own bound meets the target and its measurement does too
    tensors = res["tensors"]
    measured = float(np.mean(_mlp_fixed_point(model, tensors, ds.x_test) != ref))
    assert measured == res["measured"]["mismatch"]
    assert measured <= res["mismatch_bound"] <= 0.01
    print("B_min, measured, bound:", rows)


@pytest.mark.slow
def test_digits_mlp_gains_agree_with_finite_differences(tmp_path):
    """digits-mlp, float-trained: autograd gains of a hidden weight (64x64) and the second
    ReLU output (64 per sample) equal central finite differences."""
    cfg = preset("digits-mlp", quant="float")
    model, _ = train(cfg, tmp_path, TrainOptions(epochs=5, seed=0, progress=False, float_baseline=False))
    _, _, ds, _ = P.load_float_project(tmp_path)
    x = ds.x_test[:24]
    infos = P.tensor_infos(model, ds.x_train)
    P.noise_gains(model, infos, x)
    by = {t.name: t for t in infos}
    m = P._float64_copy(model)
    xt = torch.from_numpy(x.astype(np.float64))
    w = m.layers[1].weight
    fd_w = _fd_gain(m, xt, _weight_perturber(m, xt, w), w.numel())
    t_w = by["layers.1.weight"]
    assert t_w.range == _pow2_above(float(model.layers[1].weight.detach().abs().max()))
    assert t_w.E / t_w.range ** 2 == pytest.approx(fd_w, rel=1e-5)

    fd_a = _act_fd_gain(m, xt, m.acts[1], 64)
    t_a = by["acts.1"]
    assert t_a.E / t_a.range ** 2 == pytest.approx(fd_a, rel=1e-5)
    assert fd_w > 0 and fd_a > 0
