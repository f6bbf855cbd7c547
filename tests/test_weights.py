"""Third-party checkpoints: the two real ones in shared/datasets/weights, and the safety / reporting rules."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dataset_path
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.weights import load_weights, read_state_dict

WEIGHTS = ("weights",)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors run fastest on one thread


def test_resnet20_checkpoint_loads_strictly_and_scores_80_percent_on_cifar10():
    ckpt = dataset_path(*WEIGHTS, "resnet20-12fca82f.th")
    data = np.load(dataset_path("cifar10", "test.npz"))
    model = create_model("resnet20", num_classes=10, shortcut="A")
    report = load_weights(model, ckpt)
    assert report.complete and len(report.loaded) > 0
    model.eval()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)  # RGB, NCHW
    y = torch.from_numpy(data["y"]).long()
    start = time.perf_counter()
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb in x.split(500)])
    accuracy = (pred == y).float().mean().item()
    print(f"resnet20 on cifar10/test.npz: {accuracy:.2%} of {len(y)} in {time.perf_counter() - start:.1f}s")
    assert 0.79 <= accuracy <= 0.81  # 80.35% per weights/SOURCE.md (JPEG re-encoded CIFAR-10 test subset)


def test_mobilenet_v1_quarter_width_checkpoint_loads_strictly():
    ckpt = dataset_path(*WEIGHTS, "mobilenetV1X0.25_pretrain.tar")
    model = create_model(
        "mobilenet_v1",
        num_classes=1000,
        input_size=(224, 224),
        width=0.25,
        activation="leaky_relu",
        slope=0.1,
    )
    report = load_weights(model, ckpt)
    assert report.complete
    state = read_state_dict(ckpt)
    assert len(state) == 164 and sum(v.numel() for v in state.values() if v.is_floating_point()) == 475_544
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # its pooled "bottleneck features" are the 256-d input of the 1000-way fc
    model.eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(torch.randn(2, 3, 160, 160)), pre_logits=True)
    assert feats.shape == (2, 256)


def test_mobilenet_checkpoint_into_two_classes_needs_skip_head():
    ckpt = dataset_path(*WEIGHTS, "mobilenetV1X0.25_pretrain.tar")
    model = create_model("mobilenet_v1", num_classes=2, width=0.25, activation="leaky_relu:0.1")
    with pytest.raises(CnnlabError, match="(?s)fc.weight.*skip_head"):
        load_weights(model, ckpt)
    fresh = model.fc.weight.detach().clone()
    report = load_weights(model, ckpt, skip_head=True)
    assert report.skipped_head == ["fc.bias", "fc.weight"] and not report.missing and not report.mismatched
    assert torch.equal(model.fc.weight, fresh)


def _tiny() -> nn.Module:
    return create_model("resnet20", num_classes=10)


def test_module_prefix_is_stripped_and_nested_dicts_unwrapped(tmp_path):
    src = _tiny()
    wrapped = {"epoch": 3, "model": {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    dst = _tiny()
    report = load_weights(dst, tmp_path / "ckpt.pth")
    assert report.complete
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_safetensors_and_head_name_mapping(tmp_path):
    from safetensors.torch import save_file

    src = _tiny()
    state = {k.replace("linear.", "fc."): v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    dst = _tiny()
    report = load_weights(dst, tmp_path / "w.safetensors")
    assert report.renamed == {"fc.weight": "linear.weight", "fc.bias": "linear.bias"}
    assert torch.equal(dst.linear.weight, src.linear.weight)


def test_mismatched_keys_are_reported_and_partial_load_refused(tmp_path):
    src = create_model("resnet20", num_classes=10, shortcut="B")  # has shortcut convs that option A lacks
    state = src.state_dict()
    state["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    del state["bn1.weight"]
    torch.save(state, tmp_path / "bad.pt")
    dst = _tiny()
    before = dst.conv1.weight.detach().clone()
    with pytest.raises(CnnlabError) as err:
        load_weights(dst, tmp_path / "bad.pt")
    msg = str(err.value)
    assert "missing in file (1): bn1.weight" in msg
    assert "unexpected in file" in msg and "layer2.0.shortcut.0.weight" in msg
    assert "conv1.weight: file (8, 3, 3, 3) vs model (16, 3, 3, 3)" in msg
    assert torch.equal(dst.conv1.weight, before)  # nothing loaded
    report = load_weights(dst, tmp_path / "bad.pt", allow_partial=True)
    assert report.missing == ["bn1.weight"] and "conv1.weight" not in report.loaded
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_rgb_checkpoint_adapts_its_input_conv_to_other_channel_counts(tmp_path, in_chans):
    src = _tiny()
    torch.save(src.state_dict(), tmp_path / "rgb.pt")
    dst = create_model("resnet20", num_classes=10, in_chans=in_chans)
    report = load_weights(dst, tmp_path / "rgb.pt")
    assert report.adapted == [f"conv1.weight: 3 -> {in_chans} channels"] and not report.mismatched
    assert "input channels adapted (1)" in str(report)
    w = src.conv1.weight.detach()
    if in_chans == 1:  # a gray image x gives the response the RGB filters would give to (x, x, x)
        torch.testing.assert_close(dst.conv1.weight, w.sum(1, keepdim=True))
    else:  # channels repeat, scaled by 3/4 so the response keeps its size
        torch.testing.assert_close(dst.conv1.weight[:, :3], w * 3 / 4)
    torch.testing.assert_close(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(CnnlabError, match="refused"):
        load_weights(_tiny(), tmp_path / "evil.pth")
    assert not marker.exists()


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CnnlabError, match="not found"):
        load_weights(_tiny(), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CnnlabError):
        load_weights(_tiny(), tmp_path / "junk.pth")
