"""Every reader: folder trees, zip archives in place, CSV + images, npz, IDX, builtins, splits."""

from __future__ import annotations

import csv
import gzip
import shutil

import numpy as np
import pytest
from conftest import dataset_path, make_image_folder, pattern_image, write_idx, zip_folder

from cnnlab.data.dataset import decode_split, infer_geometry
from cnnlab.data.readers import base, list_images, load_source, read_idx, register_reader, stratified_split
from cnnlab.errors import CnnlabError


def test_folder_of_classes_gets_a_stratified_val_split(image_folder):
    src = load_source(str(image_folder), val_split=0.25, seed=0)
    assert src.kind == "folder" and src.class_names == ["cat", "dog", "fox"]
    assert src.counts("train") == [9, 9, 9] and src.counts("val") == [3, 3, 3]
    assert not set(src.splits["train"].ids) & set(src.splits["val"].ids)


def test_split_is_seeded_and_reproducible(image_folder):
    a = load_source(str(image_folder), seed=1).splits["val"].ids
    b = load_source(str(image_folder), seed=1).splits["val"].ids
    c = load_source(str(image_folder), seed=2).splits["val"].ids
    assert a == b and a != c


def test_folder_with_split_folders_and_validation_alias(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=4, splits=("train", "validation", "test"))
    src = load_source(str(root))
    assert set(src.splits) == {"train", "val", "test"}
    assert src.counts("val") == [4, 4] and src.counts("test") == [4, 4]


def test_upper_case_extensions_and_non_images_are_handled(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=3, ext=".JPG")
    (root / "cat" / "notes.txt").write_text("hello")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0")
    src = load_source(str(root), val_split=0)
    assert src.counts("train") == [3, 3]
    reasons = {name: reason for name, reason in src.skipped}
    assert "cat/notes.txt" in reasons and "cat/.DS_Store" in reasons


@pytest.mark.parametrize("prefix", ["", "dataset/"])
def test_zip_is_read_in_place_with_either_layout(tmp_path, prefix):
    folder = make_image_folder(tmp_path / "src", per_class=5, splits=("train", "val"))
    archive = zip_folder(folder, tmp_path / "data.zip", prefix)
    before = sorted(p.name for p in tmp_path.iterdir())
    src = load_source(str(archive))
    assert src.kind == "zip" and src.counts("train") == [5, 5] and src.counts("val") == [5, 5]
    decoded = decode_split(src, src.splits["train"], infer_geometry(src, None, None))
    assert decoded.x.shape == (10, 3, 12, 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing extracted


def test_zip_junk_and_escaping_names_are_skipped(tmp_path):
    import zipfile

    folder = make_image_folder(tmp_path / "src", per_class=3)
    archive = zip_folder(folder, tmp_path / "data.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/cat/._cat_0.png", b"junk")
        zf.writestr("../evil.png", b"junk")
        zf.writestr("cat/", b"")
    src = load_source(str(archive), val_split=0)
    assert src.counts("train") == [3, 3]
    assert any("unsafe" in reason for _, reason in src.skipped)


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def kaggle(tmp_path):
    """train.csv (id,has_cactus; ids with extension) beside train.zip holding train/<id>.png."""
    imgs = tmp_path / "imgs" / "train"
    imgs.mkdir(parents=True)
    rows = []
    for i in range(20):
        label = i % 2
        pattern_image(label, i).save(imgs / f"img{i:03d}.png")
        rows.append((f"img{i:03d}.png", label))
    _write_csv(tmp_path / "train.csv", ["id", "has_cactus"], rows)
    zip_folder(tmp_path / "imgs", tmp_path / "train.zip")
    return tmp_path


def test_csv_with_zip_beside_it_detects_columns(kaggle):
    src = load_source(str(kaggle / "train.csv"), val_split=0.2)
    assert src.kind == "csv" and src.class_names == ["0", "1"]
    assert src.id_col == "id" and src.label_col == "has_cactus"
    assert len(src.splits["train"]) == 16 and len(src.splits["val"]) == 4


def test_csv_ids_without_extension_and_named_columns(kaggle):
    _write_csv(kaggle / "labels.csv", ["image_name", "extra", "kind"],
               [(f"img{i:03d}", "x", "a" if i % 2 else "b") for i in range(20)])
    src = load_source(str(kaggle / "labels.csv"), images=str(kaggle / "train.zip"), id_col="image_name",
                      label_col="kind", val_split=0)
    assert src.class_names == ["a", "b"] and src.counts("train") == [10, 10]


def test_csv_missing_named_column_is_a_clear_error(kaggle):
    with pytest.raises(CnnlabError, match="no column 'label'.*columns: id, has_cactus"):
        load_source(str(kaggle / "train.csv"), label_col="label")


def test_csv_ids_without_images_stop_unless_skipped(kaggle):
    with open(kaggle / "train.csv", "a") as f:
        f.write("ghost.png,1\n")
    with pytest.raises(CnnlabError, match="1 ids in train.csv have no image.*--skip-missing"):
        load_source(str(kaggle / "train.csv"))
    src = load_source(str(kaggle / "train.csv"), skip_missing=True, val_split=0)
    assert len(src.splits["train"]) == 20 and ("ghost.png", "id in the CSV without an image") in src.skipped


def test_npz_gray_and_rgb_with_class_names(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (30, 10, 10), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "g.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    src = load_source(str(tmp_path / "g.npz"), val_split=0.2)
    assert src.class_names == ["a", "b", "c"] and src.splits["train"].array.shape[-1] == 1
    np.savez(tmp_path / "c.npz", x=np.repeat(x[..., None], 3, -1), y=y)
    src = load_source(str(tmp_path / "c.npz"), val_split=0)
    assert src.class_names == ["0", "1", "2"] and src.splits["train"].array.shape == (30, 10, 10, 3)


def test_npz_without_x_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(CnnlabError, match="needs arrays 'x' and 'y'"):
        load_source(str(tmp_path / "bad.npz"))


def test_folder_of_train_and_test_npz(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        np.savez(tmp_path / f"{split}.npz", x=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
                 y=np.arange(n) % 2, class_names=np.array(["no", "yes"]))
    src = load_source(str(tmp_path), val_split=0.25)
    assert set(src.splits) == {"train", "val", "test"} and src.class_names == ["no", "yes"]
    assert len(src.splits["test"]) == 10 and len(src.splits["val"]) == 10


def test_class_names_come_from_the_npz_that_holds_them(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 2)
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 255, (9, 8, 8), dtype=np.uint8), y=np.arange(9) % 3,
             class_names=np.array(["ant", "bee", "cat"]))
    assert load_source(str(tmp_path), val_split=0.0).class_names == ["ant", "bee", "cat"]


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_gz_and_raw(tmp_path, compress):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8),
                  compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), compress)
    src = load_source(str(tmp_path), val_split=0.2)
    assert src.kind == "idx" and len(src.class_names) == 10
    assert len(src.splits["test"]) == 20 and len(src.splits["train"]) + len(src.splits["val"]) == 50


def test_idx_with_wrong_magic_is_refused(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x08\x09" + b"\x00" * 40)
    with pytest.raises(CnnlabError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00")
    with pytest.raises(CnnlabError, match="data bytes but its header"):
        read_idx(tmp_path / "y")


def test_real_mnist_idx_files():
    src = load_source(str(dataset_path("mnist")), val_split=0.2)
    assert src.counts("test") == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert len(src.splits["train"]) + len(src.splits["val"]) == 60_000
    assert src.splits["train"].array.shape[1:] == (28, 28, 1)


def test_builtin_digits_needs_no_download():
    src = load_source("digits", val_split=0.2)
    assert src.num_classes == 10 and len(src.splits["train"]) + len(src.splits["val"]) == 1797


def test_builtin_mnist_reads_torchvision_layout_from_the_cache(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in dataset_path("mnist").glob("*.gz"):
        with gzip.open(gz) as f_in, open(raw / gz.stem, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
    monkeypatch.setenv("CNNLAB_DATA_HOME", str(tmp_path))
    src = load_source("mnist", val_split=0.1)
    assert len(src.splits["test"]) == 10_000 and src.class_names[0].startswith("0")


def test_builtin_download_failure_says_to_pass_a_local_path(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)
    monkeypatch.setenv("CNNLAB_DATA_HOME", str(tmp_path))
    with pytest.raises(CnnlabError, match="could not download cifar10.*pass a local path"):
        load_source("cifar10")


def test_missing_path_empty_folder_and_single_class(tmp_path):
    with pytest.raises(CnnlabError, match="no such file or folder"):
        load_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="no images found"):
        load_source(str(tmp_path / "empty"))
    make_image_folder(tmp_path / "one", classes=("only",), per_class=3)
    with pytest.raises(CnnlabError, match="only one class"):
        load_source(str(tmp_path / "one"))


def test_stratified_split_keeps_class_proportions():
    labels = np.array([0] * 80 + [1] * 20)
    tr, va = stratified_split(labels, 0.25, seed=0)
    assert np.bincount(labels[va]).tolist() == [20, 5]
    assert len(set(tr) | set(va)) == 100


def test_readers_are_tried_in_the_declared_order():
    assert [r.name for r in base.readers_in_order()] == ["builtin", "idx", "npz_folder", "folder", "zip", "csv",
                                                         "npz"]
    with pytest.raises(ValueError, match="already taken by 'zip'"):
        register_reader("another", order=50, accepts=lambda req: False)(lambda req: None)


def test_a_registered_reader_is_picked_by_load_source(tmp_path, monkeypatch):
    from cnnlab.data.readers.arrays import array_split
    from cnnlab.registry import Registry

    readers = Registry("reader")
    for r in base.readers_in_order():
        readers.register(r.name, doc=r.name)(r)
    monkeypatch.setattr(base, "READERS", readers)  # the new reader lives only for this test

    @register_reader("fake", order=65, accepts=lambda req: req.is_file_with(".fake"))
    def read_fake(req):
        """A made-up format: four blank images."""
        x = np.zeros((4, 2, 2), np.uint8)
        return base.DataSource(req.path.stem, "fake", ["a", "b"], {"train": array_split(x, [0, 1, 0, 1], "f")})

    (tmp_path / "data.fake").write_text("")
    assert load_source(str(tmp_path / "data.fake"), val_split=0.5).kind == "fake"
    assert readers.doc("fake") == "A made-up format: four blank images."
    (tmp_path / "data.other").write_text("")
    with pytest.raises(CnnlabError, match="cannot read .*expected a folder"):
        load_source(str(tmp_path / "data.other"))


def _folder_with_junk(root):
    make_image_folder(root, per_class=2)
    (root / "__MACOSX" / "cat").mkdir(parents=True)  # names without a dot: only the __MACOSX rule skips them
    pattern_image(0, 5).save(root / "__MACOSX" / "cat" / "cat_0.png")
    (root / ".hidden").mkdir()
    pattern_image(1, 5).save(root / ".hidden" / "dog_9.png")
    (root / "cat" / "Thumbs.db").write_bytes(b"\0")
    (root / "cat" / "notes.txt").write_text("not an image")
    pattern_image(1, 6).save(root / "loose.png")
    return root


def test_predict_listing_leaves_out_what_training_leaves_out(tmp_path):
    root = _folder_with_junk(tmp_path / "d")
    items = list_images([str(root)])
    ids = [i for i, _ in items]
    assert ids == ["cat/cat_0.png", "cat/cat_1.png", "dog/dog_0.png", "dog/dog_1.png", "loose.png"]
    assert items[0][1]() == (root / "cat" / "cat_0.png").read_bytes()
    trained = load_source(str(root), val_split=0).splits["train"].ids
    assert trained == [i for i in ids if "/" in i]  # training also skips the top-level image (no class)
    archive = zip_folder(root, tmp_path / "d.zip")
    zipped = list_images([str(archive)])
    assert [i for i, _ in zipped] == ids and zipped[-1][1]() == (root / "loose.png").read_bytes()
    assert [i for i, _ in list_images([str(root / "cat" / "notes.txt")])] == ["notes.txt"]  # named: always read
    with pytest.raises(CnnlabError, match="no such file or folder: "):
        list_images([str(tmp_path / "nope")])
    (tmp_path / "empty" / "__MACOSX").mkdir(parents=True)
    pattern_image(0, 0).save(tmp_path / "empty" / "__MACOSX" / "a.png")
    with pytest.raises(CnnlabError, match="no images found in "):
        list_images([str(tmp_path / "empty")])


def test_predict_skips_macosx_and_hidden_files(tmp_path):
    import cnnlab

    root = _folder_with_junk(tmp_path / "d")
    run = cnnlab.fit(str(root), model="mlp", epochs=1, batch_size=8, verbose=0,
                     tensorboard=False, precision="fp32", device="cpu", out=str(tmp_path / "run"))
    rows = run.predict([str(root)])
    assert [r["id"] for r in rows] == ["cat_0.png", "cat_1.png", "dog_0.png", "dog_1.png", "loose.png"]
