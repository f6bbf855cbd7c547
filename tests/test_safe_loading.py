"""Files from the internet must never run code: a crafted pickle (whose unpickling would create a marker file) and
a YAML config with a Python tag are refused with a message, and the marker is never created."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import cnnlab
from cnnlab.cli import main
from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.train.checkpoint import load_state


class MakesMarker:
    """Unpickling this calls exec(...), which creates the marker file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "optimizer": {}, "payload": MakesMarker(marker)}, path)
    return path, marker


def test_the_crafted_file_really_runs_code_when_loaded_unsafely(evil):
    path, marker = evil
    with open(path, "rb") as f:  # the zip inside holds a pickle; plain torch.load(weights_only=False) would run it
        torch.load(f, weights_only=False)
    assert marker.exists()  # so the tests below would notice a loader that executes it


@pytest.mark.parametrize("name", ["evil.pt", "model.pth", "last_state.pt"])
def test_load_state_refuses_a_pickle_that_runs_code(evil, tmp_path, name):
    path, marker = evil
    target = tmp_path / name
    if target != path:
        target.write_bytes(path.read_bytes())
    with pytest.raises(CnnlabError, match="refusing to load .* would run code"):
        load_state(target)
    assert not marker.exists()


def test_resume_refuses_a_crafted_last_state(evil, tmp_path, capsys):
    path, marker = evil
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 255, (40, 8, 8)).astype(np.uint8), y=np.arange(40) % 2)
    run_dir = tmp_path / "run"
    cnnlab.fit(str(data), out=str(run_dir), model="mlp", epochs=1, quiet=True, tensorboard=False)
    (run_dir / "last_state.pt").write_bytes(path.read_bytes())
    (run_dir / "metrics.json").unlink()
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to load" in err
    assert not marker.exists()


def test_a_state_without_weights_or_of_another_format_is_refused(tmp_path):
    from cnnlab.train.state import check_state

    path = tmp_path / "old.pt"
    torch.save({"epoch": 3, "optimizer": {}}, path)
    with pytest.raises(CnnlabError, match="older cnnlab"):
        check_state(load_state(path), str(path))
    with pytest.raises(CnnlabError, match="not a cnnlab training state"):
        check_state([1, 2], "x")


def test_initial_weights_that_would_run_code_are_refused(evil, tmp_path):
    path, marker = evil
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 255, (40, 8, 8)).astype(np.uint8), y=np.arange(40) % 2)
    with pytest.raises(CnnlabError):
        cnnlab.fit(str(data), out=str(tmp_path / "run"), model="mlp", epochs=1, quiet=True, weights=str(path))
    assert not marker.exists()


def test_yaml_config_with_a_python_tag_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"train:\n  epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(CnnlabError, match="not valid YAML"):
        load_config(cfg)
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(cfg.read_text())
    (tmp_path / "last_state.pt").write_bytes(b"")
    with pytest.raises(CnnlabError, match="not valid YAML"):
        cnnlab.resume(tmp_path)
    assert not marker.exists()


def test_pickle_module_is_not_used_to_read_checkpoints():
    import inspect

    import cnnlab.api
    import cnnlab.runs
    import cnnlab.train.checkpoint
    import cnnlab.train.state

    for module in (cnnlab.train.checkpoint, cnnlab.train.state, cnnlab.api, cnnlab.runs):
        source = inspect.getsource(module)
        assert "pickle.load" not in source and "weights_only=False" not in source
