"""cnnlab report: the page of a run, its numbers against evaluate and metrics.json, the images it shows, bounded
reading, Grad-CAM's layer for every zoo model and timm CNNs, and the command's errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, run_cli
from PIL import Image
from report_runs import caption_probability, parse_page, quadrant_run


@pytest.fixture(scope="module")
def quad(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("report")
    return quadrant_run(root)


def page_of(run) -> Path:
    return Path(run.dir) / "report" / "index.html"


def test_train_with_report_writes_a_page_whose_every_image_is_a_local_png(quad):
    page = page_of(quad)
    parsed = parse_page(page)
    assert parsed.section_ids == ["run", "curves", "classes", "confusion", "top-losses", "calibration", "looks",
                                  "augment"]
    assert not [u for u in parsed.urls if "://" in u or u.startswith("//")]  # nothing from the network
    assert len(parsed.images) > 10
    for img in parsed.images:
        with Image.open(page.parent / img["src"]) as im:
            assert im.format == "PNG" and im.width > 0
    text = page.read_text(encoding="utf-8")
    assert "Grad-CAM target layer, chosen automatically: <b>features (Sequential, output 64x4x4)" in text
    assert "First-layer filters: features.0, 16 kernels of 3x3x3" in text
    assert "light: hflip=0.5, translate=0.1" in text
    assert "<td>validation</td><td>0.2 of train held out (val_split, seed 0)</td>" in text


def test_the_confusion_matrix_is_the_one_evaluate_and_metrics_json_give(quad):
    import cnnlab

    parsed = parse_page(page_of(quad))
    k = len(quad.class_names)
    from_page = np.zeros((k, k), dtype=int)
    for panel in parsed.panels:
        from_page[int(panel["data-true"]), int(panel["data-pred"])] = int(panel["data-count"])
    result = cnnlab.evaluate(cnnlab.load_run(quad.dir), split="val")
    assert from_page.tolist() == result["confusion_matrix"] == quad.metrics["val"]["confusion_matrix"]
    linked = {(int(a["data-true"]), int(a["data-pred"])) for a in parsed.cells}
    assert linked == {(t, p) for t in range(k) for p in range(k) if from_page[t, p]}
    assert f"accuracy {result['accuracy']:.4f}" in page_of(quad).read_text(encoding="utf-8")
    summary = json.loads((page_of(quad).parent / "summary.json").read_text(encoding="utf-8"))
    assert summary["confusion_matrix"] == result["confusion_matrix"] and summary["count"] == result["count"]
    assert summary["accuracy"] == pytest.approx(result["accuracy"]) and summary["target_layer"] == "features"


def test_each_cell_panel_shows_exactly_its_images_most_confident_first(quad):
    parsed = parse_page(page_of(quad))
    assert parsed.panels
    for panel in parsed.panels:
        figures = panel["figures"]
        assert len(figures) == min(24, int(panel["data-count"])) == int(panel["data-shown"])
        assert {(f["data-true"], f["data-pred"]) for f in figures} == {(panel["data-true"], panel["data-pred"])}
        probs = [caption_probability(f["caption"]) for f in figures]
        assert probs == sorted(probs, reverse=True)


def test_per_cell_caps_the_images_and_a_second_report_replaces_the_first(quad, tmp_path):
    from cnnlab.report import write_report

    out = tmp_path / "small"
    write_report(quad.dir, out=out, per_cell=2)
    (out / "img" / "stale.png").write_bytes(b"old")
    page = write_report(quad.dir, out=out, per_cell=1)
    parsed = parse_page(page)
    assert all(len(p["figures"]) == 1 for p in parsed.panels)
    assert not (out / "img" / "stale.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_folder_holding_an_earlier_report_and_files_of_the_users_is_refused(quad, tmp_path):
    """--out is replaced as a whole: a file of the user's beside an earlier report would be deleted with it."""
    from cnnlab.errors import CnnlabError
    from cnnlab.report import write_report

    out = tmp_path / "shared"
    write_report(quad.dir, out=out, per_cell=1)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CnnlabError, match=r"holds an earlier cnnlab report and files that are not part of it "
                                          r"\(notes.txt\)") as e:
        write_report(quad.dir, out=out, per_cell=1)
    assert "\n" not in str(e.value)
    assert (out / "notes.txt").read_text() == "mine" and (out / "index.html").is_file()
    (out / "notes.txt").unlink()
    write_report(quad.dir, out=out, per_cell=1)  # only the earlier report: replaced
    from cnnlab.report.build import not_report_files

    assert not_report_files(out) == [] and not_report_files(page_of(quad).parent) == []  # every file it writes


def test_only_the_shown_rows_are_read_again(quad, monkeypatch, tmp_path):
    from cnnlab.report import build
    from cnnlab.report.collect import choose_images
    from cnnlab.report.split import SplitView

    taken: list[int] = []
    original = SplitView.take
    monkeypatch.setattr(SplitView, "take", lambda self, rows: taken.extend(rows) or original(self, rows))
    picked = {}
    monkeypatch.setattr(build, "choose_images", lambda preds, n: picked.setdefault("p", choose_images(preds, n)))
    build.write_report(quad.dir, out=tmp_path / "r", per_cell=1)
    shown = picked["p"].all_rows()
    assert sorted(set(taken)) == shown and len(taken) <= len(shown) + 1  # + the image the model is traced on


def test_what_is_kept_is_bounded_by_what_is_shown_not_by_the_split():
    from cnnlab.report.collect import Predictions, choose_images

    rng = np.random.default_rng(0)
    n, k = 10_000, 10
    probs = rng.dirichlet(np.ones(k) * 0.3, size=n).astype(np.float32)
    labels = rng.integers(0, k, n)
    preds = Predictions(probs, probs.argmax(1), labels, [str(i) for i in range(n)])
    picks = choose_images(preds, per_cell=24)
    assert len(picks.all_rows()) <= 24 * k * k + 16 + 4 * k + 1 < n
    for (t, p), rows in picks.cells.items():
        in_cell = np.flatnonzero((labels == t) & (preds.pred == p))
        best = in_cell[np.argsort(-preds.confidence[in_cell], kind="stable")][:24]
        assert rows == best.tolist()
    assert len(picks.top_losses) == 16 and all(labels[r] != preds.pred[r] for r in picks.top_losses)


def test_a_split_is_read_in_chunks_and_bad_files_are_listed(tmp_path):
    from cnnlab.data.dataset import ImageGeometry, decode_split
    from cnnlab.data.readers import load_source
    from cnnlab.report.split import SplitView

    root = make_image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=9)
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    src = load_source(str(root), val_split=0.0)
    geom = ImageGeometry((12, 12), 3)
    view = SplitView(src, "train", geom, "crop", np.array([0, 1]), use_cache=False)
    chunks = list(view.batches(4))
    assert max(len(c) for c in chunks) <= 4 and sum(len(c) for c in chunks) == 18 == len(view)
    assert [name for name, _ in view.skipped] == ["cat/broken.png"]
    whole = decode_split(src, src.splits["train"], geom)
    assert torch.equal(torch.cat(chunks), whole.x) and view.ids == whole.ids
    assert torch.equal(view.take(np.array([17, 0, 5])), whole.x[[17, 0, 5]])


def test_expected_calibration_error_by_hand():
    from cnnlab.report.collect import calibration

    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.58, 0.42], [0.42, 0.58]], dtype=np.float32)
    labels = np.array([0, 1, 0, 0])
    cal = calibration(probs, labels, bins=10)
    # bin (0.9, 1.0]: 2 images, confidence 0.95, accuracy 0.5; bin (0.5, 0.6]: 2 images, confidence 0.58, accuracy 0.5
    assert cal["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.08)
    assert cal["mce"] == pytest.approx(0.45)
    assert [b["count"] for b in cal["bins"]] == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]


def test_macro_f1_averages_over_the_classes_present_as_training_and_evaluate_do():
    """A class with no image in the split and none predicted does not count (metrics_from_confusion's rule, which
    val_f1 in metrics.json and evaluate's f1 use)."""
    from cnnlab.report.collect import Predictions, split_scores
    from cnnlab.tasks.classification.metrics import metrics_from_confusion

    labels = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 1])
    probs = np.eye(3, dtype=np.float32)[pred] * 0.8 + 0.2 / 3
    scores = split_scores(Predictions(probs, pred, labels, [str(i) for i in range(5)]), ["a", "b", "c"])
    expected = metrics_from_confusion(torch.tensor(scores["confusion_matrix"]))["f1"]
    assert scores["macro_f1"] == pytest.approx(expected) == pytest.approx((2 / 3 + 6 / 7) / 2)


def test_two_classes_show_roc_and_pr_with_the_threshold_the_run_uses(tmp_path, one_thread):
    import cnnlab
    from cnnlab.report import write_report

    data = make_image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=24, size=12)
    run = cnnlab.fit(str(data), model="seed_cnn", epochs=2, balance="threshold", verbose=0, out=str(tmp_path / "r"))
    page = write_report(run.dir)
    text = page.read_text(encoding="utf-8")
    threshold = run.metrics["threshold"]["value"]
    assert f"P(dog) &ge; {threshold:.4g} (the run&#x27;s decision threshold)" in text
    assert (page.parent / "roc_pr.png").is_file()
    assert f"ROC AUC {run.metrics['val']['roc_auc']:.4f}" in text


def test_a_val_folder_of_the_data_is_named_as_the_validation(tmp_path, one_thread):
    import cnnlab
    from cnnlab.report import write_report

    data = make_image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=6, size=12, splits=("train", "val"))
    run = cnnlab.fit(str(data), model="mlp", epochs=1, verbose=0, out=str(tmp_path / "r"))
    text = write_report(run.dir).read_text(encoding="utf-8")
    assert "<td>validation</td><td>the data&#x27;s own val split (12 images)</td>" in text


def test_an_mlp_gets_no_grad_cam_and_its_first_layer_as_images(tmp_path, one_thread):
    import cnnlab
    from cnnlab.report import write_report

    data = make_image_folder(tmp_path / "pets", classes=("cat", "dog", "fox"), per_class=10, size=12)
    run = cnnlab.fit(str(data), model="mlp", epochs=1, verbose=0, out=str(tmp_path / "r"))
    text = write_report(run.dir).read_text(encoding="utf-8")
    assert "the model has no convolutional feature map (an MLP)" in text
    assert "First-layer filters: head.0, 256 units of the first dense layer, each 3x12x12 (the first 64 shown)" in text


def test_report_on_other_data_uses_all_its_images(quad, tmp_path):
    from cnnlab.report import write_report

    other = make_image_folder(tmp_path / "more", classes=("north", "south"), per_class=5, size=16)
    page = write_report(quad.dir, str(other), out=tmp_path / "other")
    text = page.read_text(encoding="utf-8")
    assert "[train], 10 images" in text


def test_a_run_whose_training_data_is_gone_reports_on_other_data_without_the_preview(quad, tmp_path):
    import shutil

    import yaml

    from cnnlab.report import write_report

    run_dir = Path(shutil.copytree(quad.dir, tmp_path / "run"))
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["data"]["source"] = str(tmp_path / "moved-away")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    other = make_image_folder(tmp_path / "more", classes=("north", "south"), per_class=5, size=16)
    text = write_report(run_dir, str(other), out=tmp_path / "page").read_text(encoding="utf-8")
    assert "(no preview: " in text and "moved-away" in text and not (tmp_path / "page" / "augment.png").exists()


def test_grad_cam_finds_a_blob_where_it_is(tmp_path, one_thread):
    """A network with global pooling trained to tell images with a bright square from noise: the Grad-CAM of the
    'blob' class is at least twice as strong on the square as on average, for every blob image of the val split."""
    import cnnlab
    from cnnlab.inference import load_run
    from cnnlab.report.gradcam import grad_cams
    from cnnlab.report.layers import trace_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 80, size=(160, 24, 24, 1), dtype=np.uint8)
    y = np.arange(160) % 2
    corners = rng.integers(0, 19, size=(160, 2))
    for i in np.flatnonzero(y):
        r, c = corners[i]
        x[i, r : r + 5, c : c + 5] = 250
    np.savez(tmp_path / "blobs.npz", x=x, y=y, class_names=np.array(["empty", "blob"]))
    spec = tmp_path / "gap.yaml"
    spec.write_text("layers:\n- conv 16 3 same relu\n- conv 32 3 same relu\n- maxpool 2\n- conv 32 3 same relu\n"
                    "- gap\n- dense classes\n")
    cnnlab.fit(str(tmp_path / "blobs.npz"), model=str(spec), epochs=20, verbose=0, out=str(tmp_path / "r"))
    run = load_run(tmp_path / "r")
    val = cnnlab.evaluate(run, split="val")
    assert val["accuracy"] == 1.0
    from cnnlab.report.split import open_split

    view = open_split(run, split="val")
    blobs = [i for i, ident in enumerate(view.ids) if y[int(ident)]]
    xb = run.predictor.preprocess(view.take(np.array(blobs)))
    trace = trace_model(run.model, xb[:1])
    cams = grad_cams(run.model, trace.target, xb, torch.ones(len(blobs), dtype=torch.long))
    for name in ("gradcam", "gradcam++"):
        for cam, i in zip(cams[name], blobs):
            r, c = corners[int(view.ids[i])]
            assert cam[r : r + 5, c : c + 5].mean() > 2 * cam.mean(), name


def _zoo_model(name: str, size: int):
    from cnnlab.models import create_model

    torch.manual_seed(0)
    return create_model(name, 10, 3, (size, size)).eval()


def _zoo_names() -> list[str]:
    from cnnlab.models import list_models

    return list_models()


@pytest.mark.parametrize("name", _zoo_names())
def test_every_zoo_model_gets_a_target_layer_and_finite_maps(name, one_thread):
    from cnnlab.models.rewrite import as_written
    from cnnlab.report.gradcam import grad_cams
    from cnnlab.report.layers import trace_model

    model = _zoo_model(name, 32)
    as_written(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    trace = trace_model(model, x[:1])
    if name in ("mlp", "selu_mlp"):
        assert trace.target is None and "no convolutional feature map" in trace.note
        assert trace.first_layer == "head.0"
        return
    assert trace.target is not None and trace.first_layer is not None
    c, h, w = trace.target.shape
    assert h * w > 1 and trace.stages and trace.stages[-1] is trace.target
    cams = grad_cams(model, trace.target, x, torch.tensor([1, 2]))
    for cam in cams.values():
        assert cam.shape == (2, 32, 32) and torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


@pytest.mark.parametrize("name,target", [("resnet18", "layer4"), ("vgg11", "features"), ("mobilenet_v1", "stage3"),
                                         ("densenet121", "final_act"), ("googlenet", "inception5b"),
                                         ("seed_cnn", "features")])
def test_the_zoo_target_is_the_last_convolutional_block(name, target, one_thread):
    from cnnlab.report.layers import trace_model

    trace = trace_model(_zoo_model(name, 64), torch.zeros(1, 3, 64, 64))
    assert trace.target.name == target and trace.note == ""


@pytest.mark.parametrize("name,target", [("resnet18", "layer4"), ("efficientnet_b0", "bn2"),
                                         ("convnext_atto", "stages"), ("mobilenetv3_small_100", "blocks"),
                                         ("regnetx_002", "s4")])
def test_timm_cnns_get_their_last_stage_and_the_stages_timm_names(name, target, one_thread):
    import timm

    from cnnlab.report.layers import trace_model

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3).eval()
    trace = trace_model(model, torch.zeros(1, 3, 64, 64))
    assert trace.target.name == target
    stages = [s.name for s in trace.stages]
    assert {f["module"] for f in model.feature_info[:-1]} <= set(stages), stages


def test_a_vision_transformer_is_refused_with_the_reason(one_thread):
    import timm

    from cnnlab.report.layers import trace_model

    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8).eval()
    trace = trace_model(model, torch.zeros(1, 3, 32, 32))
    assert trace.target is None and "token sequence" in trace.note


class _ReluAfterTheTarget(torch.nn.Module):
    """torchvision's DenseNet pattern: the traced target (`features`, ending in batch norm) is followed by an
    in-place ReLU in forward, which rewrites the target's output tensor (negative values to 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.classifier = torch.nn.Linear(8, 10)
        self.inplace = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.relu(self.features(x), inplace=self.inplace)
        return self.classifier(torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1))


@pytest.mark.parametrize("name", ["resnet18", "relu_after_the_target"])
def test_in_place_activations_after_the_target_do_not_change_grad_cam(name, one_thread):
    from cnnlab.report.gradcam import grad_cams
    from cnnlab.report.layers import trace_model

    if name == "resnet18":
        model = _zoo_model("resnet18", 32)
    else:
        torch.manual_seed(0)
        model = _ReluAfterTheTarget().eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    trace = trace_model(model, x[:1])
    if name != "resnet18":
        assert trace.target.name == "features"
    cams = grad_cams(model, trace.target, x, torch.tensor([0, 4, 9]))
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    ref = grad_cams(reference, trace.target, x, torch.tensor([0, 4, 9]))
    assert torch.allclose(cams["gradcam"], ref["gradcam"], atol=1e-5)
    assert torch.allclose(cams["gradcam++"], ref["gradcam++"], atol=1e-5)


def test_a_frozen_backbone_still_has_gradients(one_thread):
    from cnnlab.report.gradcam import grad_cams
    from cnnlab.report.layers import trace_model

    model = _zoo_model("seed_cnn", 16)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    cams = grad_cams(model, trace_model(model, x[:1]).target, x, torch.tensor([1, 2]))
    assert cams["gradcam++"].amax(dim=(1, 2)).tolist() == [1.0, 1.0]


def test_the_command_and_its_mistakes(quad, tmp_path, capsys):
    from cnnlab.cli import main

    out = run_cli("report", str(quad.dir), "--out", str(tmp_path / "cli"), "--per-cell", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"report: {tmp_path / 'cli' / 'index.html'} (val split, 24 images")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for args, message in [(["report", str(tmp_path)], "is not a cnnlab run folder"),
                          (["report", str(quad.dir), "--out", str(foreign)], "holds no cnnlab report"),
                          (["report", str(quad.dir), "--split", "test"], "has no 'test' split"),
                          (["report", str(quad.dir), "--per-cell", "0"], "--per-cell must be at least 1")]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("cnnlab: error: "), err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_the_report_option_round_trips_through_config_yaml(quad):
    import yaml

    raw = yaml.safe_load((Path(quad.dir) / "config.yaml").read_text(encoding="utf-8"))
    assert raw["callbacks"]["report"] is True


def test_a_run_passed_in_keeps_its_model_as_it_was(quad, tmp_path):
    from cnnlab.inference import load_run
    from cnnlab.report import write_report

    run = load_run(quad.dir)
    before = [type(m).__name__ for m in run.model.modules()]
    write_report(run, out=tmp_path / "r")
    assert [type(m).__name__ for m in run.model.modules()] == before
