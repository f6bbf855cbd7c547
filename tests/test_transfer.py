"""Transfer learning: layer groups and discriminative LRs, freezing (weights and batch-norm statistics), the
bottleneck-feature cache, feature-extract runs that reload from their folder, auto's recorded reasoning,
head-skipping checkpoint loads and the offline --pretrained message.

Real data: the ImageNet MobileNetV1 x0.25 checkpoint on a small subset of cats_vs_dogs (40 + 20 images per class,
96 px) keeps each run to seconds; the full-size acceptance run is the slow test at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnlab
import cnnlab.transfer as transfer
from cnnlab.api import fit
from cnnlab.errors import CnnlabError
from cnnlab.inference import load_run
from cnnlab.models import create_model
from cnnlab.models.weights import load_weights, read_state_dict
from tests.conftest import REPO, dataset_path, run_cli

MNV1 = {"width": 0.25, "activation": "leaky_relu:0.1"}


@pytest.fixture(scope="module")
def weights() -> Path:
    return dataset_path("weights", "mobilenetV1X0.25_pretrain.tar")


@pytest.fixture(scope="module")
def small_cats(tmp_path_factory) -> Path:
    """40 train + 20 val images per class of cats_vs_dogs, as symlinks (the data is never copied)."""
    src = dataset_path("cats_vs_dogs")
    root = tmp_path_factory.mktemp("cats_small")
    for split, n in (("train", 40), ("val", 20)):
        for cls in ("cats", "dogs"):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:n]:
                (root / split / cls / f.name).symlink_to(f)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


def _fit(data: Path, weights: Path, out: Path, **kw):
    args = {"model": "mobilenet_v1", "model_kwargs": MNV1, "weights": str(weights), "image_size": 96, "epochs": 3,
            "batch_size": 32, "verbose": 0, "tensorboard": False, "out": str(out), "precision": "fp32"}
    args.update(kw)
    return fit(str(data), **args)


# -- layer groups and learning rates -------------------------------------------------------------------------


def test_layer_groups_follow_group_matcher_and_lrs_decrease_towards_the_input():
    model = create_model("mobilenet_v1", 2, input_size=(96, 96), **MNV1)
    groups = transfer.layer_groups(model)
    assert len(groups) == 1 + 13 + 1  # stem, 13 depthwise-separable blocks, head
    assert all(n.startswith("stage1.0.") for n in groups[0])
    assert all(n.startswith("stage1.1.") for n in groups[1])
    assert all(n.startswith("stage3.1.") for n in groups[-2])
    assert sorted(groups[-1]) == ["fc.bias", "fc.weight"]
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    pg = transfer.discriminative_param_groups(model, groups, 5, lr=1e-3, decay=0.5)
    lrs = [g["lr"] for g in pg]
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5])
    assert pg[0]["params"][0] is model.fc.weight or pg[0]["params"][0] is model.fc.bias


def test_cifar_resnet_groups_put_the_linear_classifier_last():
    model = create_model("resnet20", 2)
    groups = transfer.layer_groups(model)
    assert {n.split(".")[0] for n in groups[0]} == {"conv1", "bn1"}
    assert len(groups) == 1 + 9 + 1
    assert sorted(groups[-1]) == ["linear.bias", "linear.weight"]


def test_model_without_group_matcher_is_refused_clearly():
    with pytest.raises(CnnlabError, match="group_matcher"):
        transfer.layer_groups(torch.nn.Linear(2, 2))


# -- loading a 1000-class checkpoint into a 2-class model ---------------------------------------------------


def test_skip_head_loads_imagenet_checkpoint_into_two_classes_and_strict_fails(weights):
    model = create_model("mobilenet_v1", 2, input_size=(96, 96), **MNV1)
    with pytest.raises(CnnlabError, match="skip-head"):
        load_weights(model, weights)
    report = load_weights(model, weights, skip_head=True)
    assert report.skipped_head == ["fc.bias", "fc.weight"] and not report.missing
    state = read_state_dict(weights)
    assert torch.equal(model.stage2[3][0].weight, state["stage2.3.0.weight"])


def test_cli_weights_without_strategy_fails_with_the_skip_head_hint(small_cats, weights, tmp_path):
    r = run_cli("train", str(small_cats), "--model", "mobilenet_v1", "--model-arg", "width=0.25",
                "--model-arg", "activation=leaky_relu:0.1", "--weights", str(weights), "--image-size", "64",
                "--epochs", "1", "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert "--skip-head" in r.stderr and "Traceback" not in r.stderr


def test_transfer_strategy_needs_weights(small_cats, tmp_path):
    with pytest.raises(CnnlabError, match="--weights FILE"):
        fit(str(small_cats), model="mobilenet_v1", strategy="fine-tune", verbose=0, out=str(tmp_path / "r"))


def test_pretrained_offline_fails_fast_naming_the_cache_and_weights_flag(tmp_path):
    code = ("from cnnlab.models import create_model\n"
            "try:\n    create_model('timm:resnet18', 2, pretrained=True)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.startswith("CnnlabError"), r.stdout + r.stderr
    assert str(tmp_path / "hf" / "hub") in r.stdout and "--weights FILE" in r.stdout


# -- freezing --------------------------------------------------------------------------------------------------


def test_fine_tune_leaves_frozen_weights_and_batchnorm_statistics_unchanged(small_cats, weights, tmp_path, cache):
    run = _fit(small_cats, weights, tmp_path / "ft", strategy="fine-tune", unfreeze=2, epochs=1, lr=1e-2)
    ckpt = read_state_dict(weights)
    state = run.model.state_dict()
    frozen = [k for k in state if k.startswith(("stage1.", "stage2.")) and k in ckpt]
    assert any("running_mean" in k for k in frozen)
    for k in frozen:
        assert torch.equal(state[k].cpu(), ckpt[k]), k
    trained = [k for k in state if k.startswith("stage3.") and k.endswith("weight")]
    assert any(not torch.equal(state[k].cpu(), ckpt[k]) for k in trained)
    # batch norm inside the trained blocks learns (batch 32 >= 16): its running statistics move
    assert not torch.equal(state["stage3.1.4.running_mean"].cpu(), ckpt["stage3.1.4.running_mean"])
    record = json.loads((run.dir / "transfer.json").read_text())
    assert record["strategy"] == "fine-tune" and record["trainable_groups"] == 3
    assert record["group_lrs"] == sorted(record["group_lrs"], reverse=True)


def test_freeze_bn_true_keeps_every_running_statistic(small_cats, weights, tmp_path, cache):
    run = _fit(small_cats, weights, tmp_path / "ft", strategy="full", epochs=1, lr=1e-3,
               transfer__freeze_bn="true")
    ckpt = read_state_dict(weights)
    state = run.model.state_dict()
    for k in (k for k in state if "running_" in k):
        assert torch.equal(state[k].cpu(), ckpt[k]), k
    assert not torch.equal(state["stage1.0.0.weight"].cpu(), ckpt["stage1.0.0.weight"])  # full: the stem trains


def test_gradual_unfreezing_opens_one_group_per_epoch():
    model = create_model("mobilenet_v1", 2, input_size=(64, 64), **MNV1)
    groups = transfer.layer_groups(model)
    cb = transfer.GradualUnfreeze(model, list(reversed(groups[-3:])), {})
    cb.trainer = type("T", (), {"log": staticmethod(lambda m: None)})()

    def trainable() -> set[str]:
        return {n for n, p in model.named_parameters() if p.requires_grad}

    cb.on_epoch_begin(0, {})
    assert trainable() == set(groups[-1])
    cb.on_epoch_begin(1, {})
    assert trainable() == set(groups[-1]) | set(groups[-2])
    cb.on_epoch_begin(5, {})
    assert trainable() == set(groups[-1]) | set(groups[-2]) | set(groups[-3])


# -- feature extraction and its cache -------------------------------------------------------------------------


def test_feature_cache_is_reused_by_a_second_run_with_another_head(small_cats, weights, tmp_path, cache,
                                                                   monkeypatch):
    calls = []
    original = transfer.pooled_features
    monkeypatch.setattr(transfer.features, "pooled_features", lambda m, x: calls.append(len(x)) or original(m, x))
    first = _fit(small_cats, weights, tmp_path / "a", strategy="feature-extract", epochs=5)
    assert sum(calls) == 80 + 40  # every train and val image once
    files = list(cache.iterdir())
    assert len(files) == 1
    calls.clear()
    second = _fit(small_cats, weights, tmp_path / "b", strategy="feature-extract", head="mlp", epochs=5)
    assert calls == []  # the backbone never ran
    rec = json.loads((second.dir / "transfer.json").read_text())
    assert rec["features"]["cache_hit"] is True and rec["features"]["file"] == str(files[0])
    assert not json.loads((first.dir / "transfer.json").read_text())["features"]["cache_hit"]
    # the mlp head is part of the saved model, and the run folder alone rebuilds it
    again = load_run(second.dir)
    assert isinstance(again.model.fc, torch.nn.Sequential)
    assert again.evaluate()["accuracy"] == pytest.approx(second.metrics["val"]["accuracy"], abs=1 / 40 + 1e-9)


def test_feature_cache_key_changes_with_the_number_of_views(small_cats, weights, tmp_path, cache):
    _fit(small_cats, weights, tmp_path / "a", strategy="feature-extract", head="logreg")
    run = _fit(small_cats, weights, tmp_path / "b", strategy="feature-extract", head="logreg",
               transfer__views=2)
    rec = json.loads((run.dir / "transfer.json").read_text())
    assert rec["features"]["cache_hit"] is False and len(list(cache.iterdir())) == 2
    assert rec["trainable_parameters"] == 2 * 256 + 2


def test_feature_extract_run_folder_holds_the_full_model(small_cats, weights, tmp_path, cache):
    run = _fit(small_cats, weights, tmp_path / "fe", strategy="feature-extract", head="logreg")
    ckpt = read_state_dict(weights)
    from cnnlab.train.checkpoint import load_weights_file

    saved = load_weights_file(run.dir / "best.safetensors")
    assert torch.equal(saved["stage2.0.0.weight"], ckpt["stage2.0.0.weight"])  # the backbone is in it, unchanged
    assert saved["fc.weight"].abs().sum() > 0  # and the trained head
    result = load_run(run.dir).evaluate()
    assert result["split"] == "val" and result["count"] == 40
    assert result["accuracy"] == pytest.approx(run.metrics["val"]["accuracy"], abs=1 / 40 + 1e-9)
    assert run.metrics["val"]["accuracy"] >= 0.7  # ImageNet features separate cats from dogs even at 96 px


def test_extracted_features_are_usable_outside_fit(small_cats, weights, cache):
    fs = cnnlab.compute_features(str(small_cats), model="mobilenet_v1", model_kwargs=MNV1, weights=str(weights),
                                   image_size=96, precision="fp32", verbose=0)
    assert fs.x["train"].shape == (80, 256) and fs.y["val"].shape == (40,)
    w, b = transfer.fit_logreg_head(fs.x["train"], fs.y["train"], 2)
    acc = ((fs.x["val"] @ w.T + b).argmax(1) == fs.y["val"]).float().mean()
    assert acc >= 0.7
    assert cnnlab.compute_features(str(small_cats), model="mobilenet_v1", model_kwargs=MNV1,
                                     weights=str(weights), image_size=96, precision="fp32").hit


# -- auto ---------------------------------------------------------------------------------------------------------


def test_choose_strategy_rules():
    probe = {"balanced_accuracy": 0.9, "on": "val"}
    assert transfer.choose_strategy([40, 40], probe, 4)[0] == "feature-extract"
    assert transfer.choose_strategy([1000, 1000], probe, 4)[0] == "fine-tune"
    assert transfer.choose_strategy([1000, 900], {**probe, "balanced_accuracy": 0.97}, 4)[0] == "feature-extract"
    assert transfer.choose_strategy([8000, 6000], probe, 4)[0] == "full"


def test_budget_defaults_depend_on_the_strategy():
    from cnnlab.train.optim import resolve_batch_size, resolve_epochs

    assert resolve_batch_size("auto", None) == 128 and resolve_batch_size("auto", "feature-extract") == 128
    assert resolve_batch_size("auto", "fine-tune") == 32 and resolve_batch_size("auto", "full") == 32
    assert resolve_batch_size(64, "fine-tune") == 64 and resolve_batch_size("full", "full") == "full"
    # cats_vs_dogs: 2,000 images at batch 32 = 63 steps -> 3 fine-tuning epochs; from scratch 1200 steps -> clamp 30
    assert resolve_epochs("auto", 63, "fine-tune") == 3 and resolve_epochs("auto", 16, None) == 30
    assert resolve_epochs("auto", 3, "full") == 10 and resolve_epochs(7, 3, "full") == 7


def test_fine_tune_resolves_auto_batch_size_into_the_run_config(small_cats, weights, tmp_path, cache):
    run = _fit(small_cats, weights, tmp_path / "ft", strategy="fine-tune", unfreeze=1, epochs=1, batch_size="auto")
    assert run.config.train.batch_size == 32
    assert "batch_size: 32" in (run.dir / "config.yaml").read_text()


def test_auto_strategy_records_its_reasoning(small_cats, weights, tmp_path, cache):
    run = _fit(small_cats, weights, tmp_path / "auto", strategy="auto", epochs=3)
    rec = json.loads((run.dir / "transfer.json").read_text())
    assert rec["requested"] == "auto" and rec["strategy"] == "feature-extract"
    auto = rec["auto"]
    assert auto["images_per_class"] == {"cats": 40, "dogs": 40}
    assert 0.5 <= auto["probe"]["balanced_accuracy"] <= 1 and auto["probe"]["on"] == "val"
    assert any("40 training images" in line for line in auto["reasoning"])


# -- acceptance (slow) ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_feature_extract_reaches_90_percent_on_cats_vs_dogs(weights, tmp_path, cache):
    data = dataset_path("cats_vs_dogs")
    run = fit(str(data), model="mobilenet_v1", model_kwargs=MNV1, weights=str(weights), strategy="feature-extract",
              verbose=0, tensorboard=False, out=str(tmp_path / "run"))
    assert run.config.data.image_size == 160 and run.config.data.normalize == "model"
    assert run.metrics["val"]["accuracy"] >= 0.90


@pytest.mark.slow
def test_fine_tune_with_its_default_budget_reaches_92_5_percent_on_cats_vs_dogs(weights, tmp_path, cache):
    data = dataset_path("cats_vs_dogs")
    run = fit(str(data), model="mobilenet_v1", model_kwargs=MNV1, weights=str(weights), strategy="fine-tune",
              verbose=0, tensorboard=False, out=str(tmp_path / "run"))
    assert (run.config.train.batch_size, run.config.train.epochs) == (32, 3)
    assert run.metrics["val"]["accuracy"] >= 0.925


def test_pretrained_without_network_uses_offline_mode_instead_of_retrying(monkeypatch):
    import huggingface_hub.constants as hub

    from cnnlab.models import weights_hint

    monkeypatch.setattr(weights_hint, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(Path("/nonexistent/hub-cache")))
    with pytest.raises(CnnlabError, match="--weights FILE"):
        create_model("timm:resnet18", 2, pretrained=True)
    assert hub.HF_HUB_OFFLINE is False  # restored
