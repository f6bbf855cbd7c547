"""Zoo models through the training core: a layer-spec file, GoogLeNet's aux heads, and --weights."""

from __future__ import annotations

import pytest
import torch
from conftest import make_image_folder

import cnnlab
from cnnlab.models import create_model

FAST = {"epochs": 1, "verbose": 0, "tensorboard": False, "seed": 0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(
        tmp_path_factory.mktemp("data") / "pets", classes=("cat", "dog", "fox"), per_class=8, size=16
    )


def test_train_a_layer_spec_yaml(tmp_path):
    """A layer list trains like a zoo model: on 3 classes of 30 pattern images it learns (chance is 1/3)."""
    folder = make_image_folder(tmp_path / "pets", classes=("cat", "dog", "fox"), per_class=30, size=16)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "defaults: {padding: same, activation: relu}\n"
        "layers: [conv 8 3, maxpool 2, conv 16 3 bn, gap, dense 16 elu, dense classes]\n"
    )
    run = cnnlab.fit(str(folder), model=str(spec), out=str(tmp_path / "run"), **{**FAST, "epochs": 6}, batch_size=16)
    assert "Total params" in (run.dir / "summary.txt").read_text()
    assert run.metrics["val"]["accuracy"] >= 0.8 and run.history[-1]["loss"] < run.history[0]["loss"]


def test_train_googlenet_with_aux_heads(folder, tmp_path):
    """In training the two auxiliary classifiers add 0.3 x their cross-entropy to the main head's."""
    run = cnnlab.fit(str(folder), model="googlenet", out=str(tmp_path / "run"), batch_size=8, **FAST)
    model = run.model.train()
    assert model.aux_logits and run.metrics["epochs_run"] == 1
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    torch.manual_seed(1)  # the same dropout masks in both forward passes
    main, aux1, aux2 = (o.float() for o in model(x))
    torch.manual_seed(1)
    loss, logits = run.task.forward_loss(model, x, y)
    ce = [torch.nn.functional.cross_entropy(o, y) for o in (main, aux1, aux2)]
    assert torch.allclose(logits.float(), main) and float(ce[1] + ce[2]) > 0
    assert float(loss) == pytest.approx(float(ce[0] + 0.3 * (ce[1] + ce[2])), rel=1e-5)


def test_train_from_weights_file(folder, tmp_path):
    src = create_model("resnet20", 3, input_size=(16, 16))
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "r20.th")
    weights = str(tmp_path / "r20.th")
    # a learning rate too small to move the loaded weights
    run = cnnlab.fit(str(folder), model="resnet20", weights=weights, out=str(tmp_path / "run"), **FAST, lr=1e-9)
    assert torch.allclose(run.model.conv1.weight.cpu().float(), src.conv1.weight, atol=1e-5)
