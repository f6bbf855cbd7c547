"""Export: one model of every zoo family, a timm model, a feature-extract and a fine-tuned run pass the parity gate
in ONNX with the preprocessing inside; whitening runs; TorchScript and ExportedProgram; int8; predict with ONNX
Runtime equals PyTorch; a wrong graph and an unexportable option fail with one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import dataset_path, make_image_folder
from PIL import Image

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.export import export_run, parity
from cnnlab.inference import load_images
from cnnlab.runs import RunDir
from cnnlab.tasks.classification.outputs import MAX_PROB_DIFF

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 1, "verbose": 0, "tensorboard": False, "precision": "fp32", "batch_size": 16}


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("export") / "pets", classes=("cat", "dog", "fox"),
                             per_class=10, size=32)


SPEC = "layers:\n  - conv 8 3 same relu\n  - maxpool 2\n  - conv 16 3 same relu\n  - gap\n  - dense classes\n"
FAMILIES = {  # one model of every family, at 32 px (small-input stems where the model has them)
    "simple": ("seed_cnn", {}), "classic": ("vgg11", {}), "googlenet": ("googlenet", {}),
    "resnet": ("resnet20", {}), "densenet": ("densenet_bc_100", {"depth": 16}), "selu": ("selu_cnn", {}),
    "mobilenet": ("mobilenet_v1", {"width": 0.25}), "spec": ("SPEC", {}), "timm": ("timm:resnet10t", {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_with_the_preprocessing_inside_and_matches_pytorch(family, rgb, tmp_path):
    name, kwargs = FAMILIES[family]
    if name == "SPEC":
        (tmp_path / "net.yaml").write_text(SPEC)
        name = str(tmp_path / "net.yaml")
    run = cnnlab.fit(str(rgb), model=name, model_kwargs=kwargs, out=str(tmp_path / "run"), **FAST)
    result = export_run(run.dir, raw_input=True, softmax=True)
    assert result.parity["top1_agreement"] == 1.0 and result.parity["max_abs_prob_diff"] < 1e-4
    spec = json.loads((run.dir / RunDir.EXPORT / "model.json").read_text())
    assert spec["input"] == {**spec["input"], "layout": "NHWC", "dtype": "uint8", "shape": [None, 32, 32, 3]}
    session = ort.InferenceSession(str(result.path))
    assert json.loads(session.get_modelmeta().custom_metadata_map["cnnlab.classes"]) == ["cat", "dog", "fox"]
    for batch in (1, 7):  # dynamic batch
        out = session.run(None, {"images": np.zeros((batch, 32, 32, 3), np.uint8)})[0]
        assert out.shape == (batch, 3) and np.allclose(out.sum(1), 1, atol=1e-5)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return cnnlab.fit("digits", out=str(tmp_path_factory.mktemp("export") / "digits"), epochs=3, verbose=0,
                      tensorboard=False, precision="fp32")


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program", "onnx"])
def test_formats_and_input_kinds_pass_the_gate(digits_run, fmt):
    for raw in (False, True):
        result = export_run(digits_run.dir, fmt, raw_input=raw)
        assert result.parity["images"] == 256 and result.parity["top1_agreement"] == 1.0
        assert result.path.name == {"onnx": "model.onnx", "torchscript": "model.torchscript.pt",
                                    "exported-program": "model.pt2"}[fmt]


def test_a_whitened_run_exports_its_whitening_inside_the_graph(tmp_path):
    run = cnnlab.fit("digits", normalize="zca", out=str(tmp_path / "zca"), **FAST)
    result = export_run(run.dir, raw_input=True, check=100)
    assert result.parity["top1_agreement"] == 1.0 and result.parity["max_abs_prob_diff"] < 1e-4


def test_onnxruntime_alone_reproduces_cnnlab_evaluate(digits_run):
    """What a client that knows nothing about cnnlab does: uint8 images in, the class out."""
    export_run(digits_run.dir, raw_input=True)
    images = load_images(digits_run)
    session = ort.InferenceSession(str(digits_run.dir / "export" / "model.onnx"))
    logits = session.run(None, {"images": images.x.permute(0, 2, 3, 1).numpy()})[0]
    accuracy = float((logits.argmax(1) == images.y.numpy()).mean())
    assert accuracy == pytest.approx(cnnlab.load_run(digits_run.dir).evaluate()["accuracy"], abs=1e-9)


def test_predict_with_onnx_runtime_equals_pytorch(digits_run, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(40):
        Image.fromarray(np.clip(d.images[i] * 16, 0, 255).astype(np.uint8), "L").save(tmp_path / f"d{i:02d}.png")
    export_run(digits_run.dir)  # normalized float input: predict normalizes for it
    run = cnnlab.load_run(digits_run.dir)
    torch_rows = run.predict([str(tmp_path)])
    onnx_rows = cnnlab.predict(run, [str(tmp_path)], backend="onnx")
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    worst = max(abs(a["probabilities"][c] - b["probabilities"][c]) for a, b in zip(torch_rows, onnx_rows)
                for c in run.class_names)
    assert worst <= MAX_PROB_DIFF


def test_int8_is_reported_not_gated(digits_run):
    for mode in ("int8", "int8-dynamic"):
        result = export_run(digits_run.dir, raw_input=True, quantize_mode=mode)
        q = result.int8
        assert q["mode"] == mode and q["images"] == 359 and q["top1_agreement"] > 0.9
        assert abs(q["accuracy_change"]) < 0.05
        saved = json.loads((digits_run.dir / "export" / "model.json").read_text())["int8"]
        assert saved["file"] == "model.int8.onnx" and (digits_run.dir / "export" / "model.int8.onnx").is_file()


def test_a_graph_that_disagrees_fails_the_gate_with_exit_1(digits_run, monkeypatch, capsys):
    from cnnlab.cli import main
    from cnnlab.export import graph

    monkeypatch.setattr(graph.InputNormalize, "forward", lambda self, x: x.permute(0, 3, 1, 2).float())  # no mean/std
    with pytest.raises(parity.ParityError, match="does not match PyTorch"):
        export_run(digits_run.dir, raw_input=True)
    assert main(["export", str(digits_run.dir), "--raw-input"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "top-1 agreement" in err[0] and "disagreeing:" in err[0]


def test_an_export_that_fails_the_gate_leaves_the_earlier_export_in_place(digits_run, monkeypatch):
    """The files are checked under temporary names and moved in only after the gate: `predict --backend onnx`
    never gets a graph that failed parity."""
    from cnnlab.export import graph

    export_run(digits_run.dir, raw_input=True)
    folder = digits_run.dir / RunDir.EXPORT
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(graph.InputNormalize, "forward", lambda self, x: x.permute(0, 3, 1, 2).float())  # no mean/std
    with pytest.raises(parity.ParityError, match="does not match PyTorch"):
        export_run(digits_run.dir, raw_input=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing overwritten, nothing left over
    assert json.loads(before["model.json"])["parity"]["top1_agreement"] == 1.0


def test_what_cannot_be_exported_is_one_line(digits_run):
    with pytest.raises(CnnlabError, match="cannot export this model to onnx with --dynamic-size: .*drop"):
        export_run(digits_run.dir, dynamic_size=True)  # seed_cnn's dense layer fixes the image size
    with pytest.raises(CnnlabError, match="--quantize works on ONNX"):
        export_run(digits_run.dir, "torchscript", quantize_mode="int8")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["feature-extract", "fine-tune"])
def test_transfer_runs_export(strategy, tmp_path):
    weights = dataset_path("weights", "resnet20-12fca82f.th")
    data = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=12, size=32)
    run = cnnlab.fit(str(data), model="resnet20", weights=str(weights), strategy=strategy, out=str(tmp_path / "r"),
                     **{**FAST, "epochs": 2})
    result = export_run(run.dir, raw_input=True, softmax=True)
    assert result.parity["top1_agreement"] == 1.0 and result.parity["max_abs_prob_diff"] < 1e-4
    assert result.parity["images"] == 4  # the whole val split (20% of each class of 12)


def test_predict_and_export_say_which_precision_each_computes_in(tmp_path, capsys):
    """A bf16 run predicts in bf16 while its export computes in fp32: both outputs say so, and the export measures
    how often `cnnlab predict` agrees with it (flowers12: 3 of 240 labels differed, while parity said 100%)."""
    from sklearn.datasets import load_digits

    from cnnlab.cli import main

    run = cnnlab.fit("digits", epochs=1, precision="bf16", out=str(tmp_path / "run"), quiet=True, tensorboard=False)
    result = export_run(run.dir)
    p = result.parity
    assert p["torch_precision"] == "fp32" and p["predict_precision"] == "bf16"
    assert 0.9 <= p["predict_top1_agreement"] <= 1.0
    assert main(["export", str(run.dir), "--check", "64"]) == 0
    assert "cnnlab predict computes in bf16 here" in capsys.readouterr().out
    images = tmp_path / "imgs"
    images.mkdir()
    d = load_digits()
    for i in range(3):
        Image.fromarray(np.clip(d.images[i] * 16, 0, 255).astype(np.uint8), "L").save(images / f"d{i}.png")
    said = {}
    for extra in ([], ["--precision", "fp32"], ["--backend", "onnx"]):
        assert main(["predict", str(run.dir), str(images), *extra]) == 0
        said[" ".join(extra)] = capsys.readouterr().out.strip().splitlines()[-1]
    assert said[""] == "3 images predicted in bf16 by PyTorch on cpu"
    assert said["--precision fp32"] == "3 images predicted in fp32 by PyTorch on cpu"
    assert said["--backend onnx"] == "3 images predicted in fp32 by ONNX Runtime (the export)"
