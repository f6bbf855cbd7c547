"""cnnlab doctor: each planted fault gets its verdict (not just a run), a healthy model gets all ok."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import dataset_path, make_image_folder
from PIL import Image
from torch import nn

import cnnlab
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model

FAST = {"verbose": 0, "quick": True}


def diagnose(data="digits", **kwargs):
    return cnnlab.doctor(data, **{**FAST, **kwargs})


def test_zero_init_breaks_symmetry():
    report = diagnose(model="seed_cnn", model_kwargs={"init": "zeros"})
    assert report.status("init: symmetry") == "fail"
    assert "symmetry never breaks" in report.get("init: symmetry").advice
    assert report.exit_code == 1


def test_small_normal_init_on_a_deep_plain_net_vanishes():
    report = diagnose(model="mlp", model_kwargs={"depth": 8, "init": "normal:0.01"})
    check = report.get("init: activations")
    assert check.status == "fail" and "vanish" in check.advice


def test_large_normal_init_with_tanh_saturates():
    report = diagnose(model="mlp", model_kwargs={"depth": 6, "activation": "tanh", "init": "normal:1.0"})
    check = report.get("init: saturation")
    assert check.status == "fail" and "saturated" in check.advice


def test_sigmoid_in_a_deep_net_vanishes_the_gradients():
    report = diagnose(model="mlp", model_kwargs={"depth": 10, "activation": "sigmoid"})
    check = report.get("gradients")
    assert check.status == "fail" and "vanishing gradients" in check.advice


def test_a_softmax_inside_the_model_puts_the_initial_loss_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))
    check = diagnose(module=model).get("initial loss")
    assert check.status == "fail" and "softmax" in check.advice


def test_lr_10_diverges():
    report = diagnose(model="seed_cnn", lr=10.0)
    assert report.status("training probe") == "fail"
    assert "lr is too high" in report.get("training probe").advice
    assert report.status("updates") in ("warn", "fail")


def test_shuffled_labels_overfit_the_tiny_subset_but_val_stays_at_chance(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    y = np.random.default_rng(0).permutation(d.target)
    np.savez(tmp_path / "shuffled.npz", x=np.clip(d.images * 16, 0, 255).astype(np.uint8), y=y)
    report = diagnose(str(tmp_path / "shuffled.npz"), model="seed_cnn")
    assert report.status("overfit tiny") == "ok"
    probe = report.get("training probe")
    assert probe.status == "warn" and "labels" in probe.advice
    assert report.details["probe"]["val_accuracy"] < 0.2


def test_a_frozen_model_without_a_trainable_head_cannot_overfit():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model.requires_grad_(False)
    report = diagnose(module=model)
    assert report.status("overfit tiny") == "fail"
    assert report.exit_code == 1


@pytest.mark.parametrize("dropout", [nn.AlphaDropout, nn.Dropout2d])
def test_the_overfit_check_turns_off_every_kind_of_dropout(dropout):
    """Dropout that drops everything (p=1) leaves nothing to learn from: the check must switch it off, whatever its
    class (AlphaDropout in SELU nets, Dropout2d after convolutions), or a healthy model fails it."""
    from sklearn.datasets import load_digits

    from cnnlab.doctor.training import overfit_check

    d = load_digits()
    x = torch.tensor(d.images[:64], dtype=torch.float32)[:, None] / 16
    y = torch.tensor(d.target[:64])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SELU(), dropout(1.0), nn.Flatten(), nn.Linear(512, 10))
    checks, _ = overfit_check(model, nn.CrossEntropyLoss(), lambda net: torch.optim.Adam(net.parameters(), 1e-2), x, y)
    assert checks[0].status == "ok", checks[0].value
    assert model[2].p == 1.0  # on a copy: the model itself is unchanged


def test_duplicates_are_a_share_of_the_images_hashed_not_of_the_whole_split(monkeypatch):
    """Only the first MAX_HASHED training images are hashed: 2 duplicates among 100 hashed are 2%, a warning, though
    they are under 1% of the 300 images of the split."""
    from types import SimpleNamespace

    from cnnlab.data.dataset import DecodedSplit
    from cnnlab.doctor import data

    monkeypatch.setattr(data, "MAX_HASHED", 100)
    x = torch.randint(0, 256, (300, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[10], x[20] = x[0], x[1]
    train = DecodedSplit(x, torch.zeros(300, dtype=torch.int64), [str(i) for i in range(300)])
    (check,) = data.duplicate_checks(SimpleNamespace(splits={"train": train}))
    assert check.status == "warn" and check.value.startswith("2 duplicates in train")


def test_the_lr_check_warns_outside_10x_of_the_suggestion_on_both_sides():
    from cnnlab.doctor.training import lr_check

    found = {"suggested": 1e-2, "low": 8e-3, "high": 1.2e-2, "sweeps": [{"lr": [1e-6, 1e-3], "fell": True}]}
    verdicts = {lr: lr_check(found, lr)[0] for lr in (5e-4, 2e-3, 1e-2, 5e-2, 2e-1)}
    assert {lr: c.status for lr, c in verdicts.items()} == {5e-4: "warn", 2e-3: "ok", 1e-2: "ok", 5e-2: "ok",
                                                            2e-1: "warn"}
    assert "the lr is low" in verdicts[5e-4].advice and "the lr is high" in verdicts[2e-1].advice
    assert all(c.expected == "set lr within 10x of the suggestion" for c in verdicts.values())


def test_few_photos_on_a_large_model_from_scratch_get_the_data_advice(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=100, size=16)
    report = diagnose(str(folder), model="mlp", model_kwargs={"hidden": [4096]})
    check = report.get("data: size vs model")
    assert check.status == "warn" and "from scratch" in check.value
    assert "expect heavy overfitting" in check.advice and "feature-extract" in check.advice
    n_images = check.value.split(" images")[0]
    assert f"{n_images} images" not in check.advice  # the measurement is said once, in its own cell


def test_far_too_few_images_for_the_model_fail_first_with_the_command_to_run_instead(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=20, size=16)
    report = diagnose(str(folder), model="mlp", model_kwargs={"hidden": [4096]})
    first = report.checks[0]
    assert first.name == "data: size vs model" and first.status == "fail" and report.exit_code == 1
    assert f"cnnlab train {folder} --model timm:resnet18 --pretrained --strategy auto" in first.advice


def test_a_transfer_run_under_the_models_own_normalization_gets_no_centring_warning(tmp_path, capsys):
    """Inputs normalised with a pretrained model's mean / std are off-centre on dark photos, as the model expects:
    the check reports them and tells nobody to switch to --normalize standardize."""
    folder = tmp_path / "dark"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(12):
            arr = np.random.default_rng(i).integers(0, 40, (16, 16, 3), dtype=np.uint8)
            arr[:8, :8] += 60 if label == "a" else 0
            Image.fromarray(arr).save(folder / label / f"{i}.png")
    weights = tmp_path / "mnv1.pt"
    torch.save(create_model("mobilenet_v1", 1000, width=0.25).state_dict(), weights)
    cnnlab.fit(str(folder), model="mobilenet_v1", model_kwargs={"width": 0.25}, weights=str(weights),
               strategy="feature-extract", epochs=1, out=str(tmp_path / "run"), quiet=True, tensorboard=False)
    out = capsys.readouterr().out
    assert "input statistics" not in out and "zero-centre" not in out
    report = diagnose(str(folder), model="mobilenet_v1", model_kwargs={"width": 0.25}, weights=str(weights),
                      strategy="feature-extract")
    check = report.get("data: input statistics")
    assert check.status == "ok" and "pretrained model's mean / std" in check.value


def test_a_healthy_seed_cnn_on_mnist_is_all_ok_and_exits_0(tmp_path, capsys):
    mnist = dataset_path("mnist")
    out = tmp_path / "doc"
    rc = main(["doctor", str(mnist), "--out", str(out)])
    rows = json.loads((out / "doctor.json").read_text())
    assert [r for r in rows if r["status"] != "ok"] == [] and rc == 0
    assert {"layers.png", "lr_find.png", "training.png"} <= {p.name for p in out.iterdir()}
    assert "all ok" in capsys.readouterr().out


def test_cli_exits_1_on_zero_init_and_refuses_a_non_empty_out(tmp_path, capsys):
    out = tmp_path / "doc"
    assert main(["doctor", "digits", "--quick", "--model-arg", "init=zeros", "--out", str(out)]) == 1
    assert "symmetry" in capsys.readouterr().out
    rows = json.loads((out / "doctor.json").read_text())
    assert {"name", "status", "value", "expected", "advice"} == set(rows[0])
    assert main(["doctor", "digits", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_init_option_default_unchanged_and_unknown_values_one_line_errors():
    torch.manual_seed(0)
    a = create_model("seed_cnn", 10).state_dict()
    torch.manual_seed(0)
    b = create_model("seed_cnn", 10, init=None).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CnnlabError, match="unknown init 'gauss'"):
        create_model("mlp", 10, init="gauss")
    zeros = create_model("lenet5", 10, init="zeros")
    assert all(float(p.detach().abs().sum()) == 0 for p in zeros.parameters())


def test_train_runs_the_cheap_checks_without_changing_the_weights(tmp_path, capsys):
    from safetensors.torch import load_file

    runs = {}
    for checks in (True, False):
        run = cnnlab.fit("digits", epochs=1, normalize="scale", checks=checks, out=str(tmp_path / str(checks)),
                         quiet=True)
        runs[checks] = load_file(str(tmp_path / str(checks) / "last.safetensors"))
        out = capsys.readouterr().out
        assert ("check warn: data: input statistics" in out) == checks
        assert ("zero-centre the inputs" in out) == checks
    assert all(torch.equal(runs[True][k], runs[False][k]) for k in runs[True])
    assert run.config.train.checks is False


def test_lr_find_resolves_to_a_number_and_saves_the_sweep(tmp_path):
    run = cnnlab.fit("digits", epochs=1, lr="find", out=str(tmp_path / "run"), quiet=True)
    assert isinstance(run.config.train.lr, float) and 1e-5 < run.config.train.lr < 1e-1
    found = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    assert len(found["sweeps"]) == 3
    for sweep in found["sweeps"]:  # a tenth of the lr at the lowest smoothed loss of each seed's sweep
        assert sweep["suggested"] == pytest.approx(sweep["lr"][int(np.argmin(sweep["loss"]))] / 10)
    per_seed = [sweep["suggested"] for sweep in found["sweeps"]]
    assert found["suggested"] == pytest.approx(math.prod(per_seed) ** (1 / 3))  # their geometric mean
    assert (found["low"], found["high"]) == pytest.approx((min(per_seed), max(per_seed)))
    assert found["low"] > 0 and math.isfinite(found["high"] / found["low"])  # a finite, positive spread
    assert found["lr"] == run.config.train.lr == float(f"{found['suggested']:.2g}")
    assert "lr: " + str(run.config.train.lr) in (tmp_path / "run" / "config.yaml").read_text()
    assert (tmp_path / "run" / "lr_find.png").is_file()
    with pytest.raises(CnnlabError, match="must be positive, or find"):
        cnnlab.fit("digits", lr="fast")


def test_the_probed_images_mix_the_classes_of_a_class_ordered_folder(tmp_path):
    """A folder lists its images class by class; the overfit check's 64 rows must not be one class."""
    from cnnlab.config import build_config
    from cnnlab.doctor.run import subset
    from cnnlab.prepare import prepare_data

    folder = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=80, size=8)
    data = prepare_data(build_config(str(folder), cache=False), log=lambda m: None)
    x, y = subset(data, "train", 2000, lambda t: t)
    assert len(y) == len(data.splits["train"].y) and 20 <= int(y[:64].sum()) <= 44
    assert torch.equal(torch.sort(y).values, torch.sort(data.splits["train"].y).values)  # the same images, shuffled


def test_rows_come_as_each_check_is_done_and_a_shortened_check_says_so(tmp_path, monkeypatch, capsys):
    """The doctor talks while it works: a row per check as soon as it is done (before the final table), the plan
    of the training checks with its estimate, and a check shortened to fit the time budget says so in its row."""
    from cnnlab.doctor import run as doctor_run

    monkeypatch.setattr(doctor_run, "QUICK_BUDGET_S", 0.0)  # no time left: the shortest plan
    assert main(["doctor", "digits", "--quick", "--out", str(tmp_path / "doc")]) == 0
    out = capsys.readouterr().out
    table = out.index("┏")
    assert out.index("  ok  data: counts:") < out.index("doctor: training checks:") < table
    assert out.index("  ok  training probe:") < table
    for name in ("overfit tiny", "lr range test", "training probe"):
        row = next(line for line in out.splitlines() if line.startswith(f"  ok  {name}:"))
        assert "shortened to fit the time budget" in row
