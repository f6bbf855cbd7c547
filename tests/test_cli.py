"""The CLI: commands work, and every user mistake is one line on stderr, exit code 2, nothing overwritten."""

from __future__ import annotations

import csv

import pytest
from conftest import make_image_folder, pattern_image, run_cli, zip_folder


def assert_user_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_path(tmp_path):
    assert_user_error(run_cli("train", str(tmp_path / "nope")), "no such file or folder")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("train", str(tmp_path / "empty")), "no images found")


def test_single_class(tmp_path):
    make_image_folder(tmp_path / "d", classes=("cats",), per_class=4)
    assert_user_error(run_cli("train", str(tmp_path / "d")), "only one class", "cats")


def test_unknown_model_suggests_close_names(tmp_path):
    make_image_folder(tmp_path / "d", per_class=4)
    r = run_cli("train", str(tmp_path / "d"), "--model", "seed_cn", "--out", str(tmp_path / "r"))
    assert_user_error(r, "unknown model 'seed_cn'", "did you mean seed_cnn", "timm:NAME")
    assert not (tmp_path / "r").exists()


def _cactus_like(tmp_path, header=("id", "has_cactus"), extra_row=None):
    (tmp_path / "train").mkdir()
    rows = []
    for i in range(8):
        pattern_image(i % 2, i).save(tmp_path / "train" / f"{i}.jpg")
        rows.append((f"{i}.jpg", i % 2))
    if extra_row:
        rows.append(extra_row)
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    zip_folder(tmp_path / "train", tmp_path / "train.zip", prefix="train/")
    return tmp_path / "train.csv"


def test_csv_without_the_named_column(tmp_path):
    csv_path = _cactus_like(tmp_path)
    assert_user_error(run_cli("train", str(csv_path), "--label-col", "label"), "no column 'label'",
                      "id, has_cactus")


def test_csv_ids_missing_from_the_images(tmp_path):
    csv_path = _cactus_like(tmp_path, extra_row=("missing.jpg", 1))
    assert_user_error(run_cli("train", str(csv_path)), "have no image", "missing.jpg")


def test_out_folder_with_another_run_is_not_overwritten(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=6)
    out = tmp_path / "run"
    ok = run_cli("train", str(data), "--epochs", "1", "--out", str(out), "--quiet", "--no-tensorboard")
    assert ok.returncode == 0, ok.stderr
    assert "Epoch 1/1" in ok.stdout and f"Run folder: {out}" in ok.stdout
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = run_cli("train", str(data), "--epochs", "1", "--out", str(out))
    assert_user_error(again, "already holds a run", "--resume")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_bad_config_key_and_bad_value(tmp_path):
    assert_user_error(run_cli("train", "digits", "--set", "train.lrr=1"), "unknown config key 'train.lrr'")
    assert_user_error(run_cli("train", "digits", "--epochs", "1", "--batch-size", "lots"), "batch")


@pytest.mark.parametrize("args,needle", [
    (["summary", "seed_cnn", "--input", "1x28x28"], "Total params: 474,618"),
    (["models"], "seed_cnn"),
    (["inspect", "digits"], "imbalance ratio"),
])
def test_info_commands(args, needle):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert needle in r.stdout


def test_evaluate_and_predict_commands(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=6)
    out = tmp_path / "run"
    assert run_cli("train", str(data), "--epochs", "1", "--out", str(out), "--quiet").returncode == 0
    ev = run_cli("evaluate", str(out), str(data))
    assert ev.returncode == 0 and "confusion matrix" in ev.stdout and "accuracy" in ev.stdout
    pred = run_cli("predict", str(out), str(data / "cat"), "--csv", str(tmp_path / "p.csv"))
    assert pred.returncode == 0, pred.stderr
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "id,label,prob_cat,prob_dog"
    assert_user_error(run_cli("evaluate", str(tmp_path / "d")), "not a cnnlab run folder")
    assert_user_error(run_cli("evaluate", str(out), "--json", str(tmp_path / "no" / "r.json")), "--json", "folder")
    assert_user_error(run_cli("predict", str(out), str(data / "cat"), "--csv", str(tmp_path / "no" / "p.csv")),
                      "--csv", "its folder does not exist")


def test_skip_missing_trains_on_the_ids_that_have_images(tmp_path):
    csv_path = _cactus_like(tmp_path, extra_row=("missing.jpg", 1))
    out = tmp_path / "run"
    r = run_cli("train", str(csv_path), "--skip-missing", "--epochs", "1", "--out", str(out), "--quiet",
                "--no-tensorboard")
    assert r.returncode == 0, r.stderr
    assert "missing.jpg\tid in the CSV without an image" in (out / "skipped.txt").read_text()


def test_a_misspelt_option_value_is_one_line_before_any_data_is_read(tmp_path):
    assert_user_error(run_cli("train", str(tmp_path / "not-read"), "--optimizer", "adamm"),
                      "unknown --optimizer 'adamm': did you mean adam")
    assert_user_error(run_cli("train", "digits", "--epochs"), "expected one argument", "cnnlab train --help")
