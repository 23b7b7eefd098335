"""quant/models.py, brevitas_config.py, train.py and the train CLI (tiny, fast)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_module

torch = require_module("torch")
require_module("brevitas")

from accumulus.cli import main  # noqa: E402
from accumulus.compiler.accumulators import a2q_plus_l1_budget  # noqa: E402
from accumulus.compiler.types import IntType  # noqa: E402
from accumulus.errors import UserError  # noqa: E402
from accumulus.quant import brevitas_config as bc  # noqa: E402
from accumulus.quant.export import quant_weights  # noqa: E402
from accumulus.quant.models import PRESETS, build_model, make_config, preset, quant_layers  # noqa: E402
from accumulus.quant.train import TrainOptions, load_checkpoint, train  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_run(name):
    cfg = preset(name)
    model = build_model(cfg)
    x = torch.rand(3, *cfg.in_shape)
    if cfg.quant in ("a2q", "a2q+"):
        assert bc.apply_ep_init(model, x) == (len(cfg.hidden) if cfg.model == "mlp" else 3)
    assert model(x).shape == (3, 10)


def test_canonical_sizes():
    def n_weights(name):
        return sum(m.weight.numel() for _, m in quant_layers(build_model(preset(name))))

    assert n_weights("digits-mlp") == 8832
    assert n_weights("mnist-tfc") == 59008
    assert 8000 <= n_weights("digits-cnn") <= 8600
    assert n_weights("digits-rescnn") == n_weights("digits-cnn")


def test_a2q_layers_get_quant_tensors_and_first_layer_is_int():
    cfg = preset("mnist-tfc")
    model = build_model(cfg)
    layers = quant_weights(model, cfg, torch.rand(2, *cfg.in_shape))
    assert [le.quant for le in layers] == ["int", "a2q+", "a2q+", "a2q+"]
    assert layers[0].input_type == IntType(8, False)
    assert all(le.input_type == IntType(4, False) for le in layers[1:])
    cfg2 = preset("mnist-tfc", constrain_first=True, acc_bits=20)
    assert quant_weights(build_model(cfg2), cfg2, torch.rand(2, *cfg2.in_shape))[0].quant == "a2q+"


def test_ep_init_starts_inside_the_l1_ball_and_not_at_zero():
    cfg = preset("mnist-tfc")
    model = build_model(cfg)
    x = torch.rand(16, *cfg.in_shape)
    bc.apply_ep_init(model, x)
    for le in quant_weights(model, cfg, x)[1:]:
        l1 = np.abs(le.weight_int).sum(axis=1)
        assert (l1 <= a2q_plus_l1_budget(12, le.input_type)).all()
        assert (l1 > 0).all()


def test_project_l1_ball():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 30))
    r = np.array([0.5, 1.0, 2.0, 100.0, 3.0])
    p = bc.project_l1_ball(w, r)
    l1 = np.abs(p).sum(axis=1)
    np.testing.assert_allclose(l1[[0, 1, 2, 4]], r[[0, 1, 2, 4]], rtol=1e-9)
    np.testing.assert_array_equal(p[3], w[3])          # already inside: unchanged
    assert (np.sign(p) * np.sign(w) >= 0).all()        # signs kept


def test_width_mult_and_highway():
    cfg = preset("digits-mlp", width_mult=2.0)
    assert [m.weight.shape[0] for _, m in quant_layers(build_model(cfg))] == [128, 128, 10]
    r = preset("digits-rescnn", highway_bits=8, quant="a2q+", acc_bits=16)
    layers = quant_weights(build_model(r), r, torch.rand(2, *r.in_shape))
    # Precision Highway: conv3 reads the 4-bit copy of the 8-bit residual stream
    assert layers[2].input_type == IntType(4, False)


@pytest.mark.parametrize("kw,match", [
    (dict(model="transformer"), "unknown model"),
    (dict(quant="a3q"), "unknown quant"),
    (dict(quant="a2q+", acc_bits=4, act_bits=4), "L1 budget"),
    (dict(quant="a2q", acc_bits=5, act_bits=4), "L1 budget"),
])
def test_bad_options_are_user_errors(kw, match):
    with pytest.raises(UserError, match=match):
        make_config(**kw)
    with pytest.raises(UserError, match="unknown preset"):
        preset("digits-transformer")


def test_train_checkpoint_resume(tmp_path):
    cfg = preset("digits-mlp")
    opts = TrainOptions(epochs=1, limit=200, progress=False, float_baseline=False)
    model, res = train(cfg, tmp_path, opts)
    ck = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["config"]["quant"] == "a2q+"
    hist = json.loads((tmp_path / "train.json").read_text())
    assert hist["history"][0]["epoch"] == 1 and "test_accuracy" in hist
    m2, cfg2, _ = load_checkpoint(tmp_path)
    x = torch.rand(4, *cfg.in_shape)
    model.eval(), m2.eval()
    torch.testing.assert_close(model(x), m2(x), rtol=0, atol=0)
    _, res2 = train(cfg, tmp_path, TrainOptions(epochs=2, limit=200, progress=False, float_baseline=False, resume=True))
    assert [h["epoch"] for h in res2["history"]] == [1, 2]


def _cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def test_cli_train_user_errors(tmp_path, capsys):
    for argv in (["--model", "transformer"], ["--dataset", "cifar-11"], ["--preset", "nope"],
                 ["--quant", "a2q+", "--acc-bits", "3"], ["--dataset", str(tmp_path / "missing.npz")]):
        code, out = _cli(capsys, "train", *argv, "--epochs", "1", "--out", str(tmp_path / "o"))
        assert code == 2, argv
        assert out.err.count("\n") == 1 and "Traceback" not in out.err, out.err


def test_cli_train_unreadable_checkpoint(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"garbage")
    code, out = _cli(capsys, "export", str(tmp_path))
    assert code == 2 and "checkpoint" in out.err and "Traceback" not in out.err
    code, out = _cli(capsys, "export", str(tmp_path / "nothing-here"))
    assert code == 2 and "no such project" in out.err and "nothing-here" in out.err


def test_cli_train_tiny_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (80, 6, 6)).astype(np.uint8), y=np.repeat(np.arange(4), 20))
    code, out = _cli(capsys, "train", "--dataset", str(tmp_path / "d.npz"), "--hidden", "8", "--epochs", "1",
                     "--acc-bits", "12", "--quiet", "--no-float-baseline", "--out", str(tmp_path / "run"))
    assert code == 0, out.err
    for name in ("model.pt", "train.json", "model.onnx"):
        assert (tmp_path / "run" / name).is_file()
