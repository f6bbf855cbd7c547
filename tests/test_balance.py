"""Imbalanced data: samplers' class frequencies, class weights and the focal loss against hand computations,
double-correction refusal, threshold selection, SMOTE wrappers, and ROC AUC / threshold in a real (tiny) run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import Config, apply_overrides
from cnnlab.data.balance import (
    compute_class_weights,
    parse_methods,
    plan_balance,
    resample_features,
    resample_pixels,
    select_threshold,
)
from cnnlab.data.loader import TensorBatches
from cnnlab.data.samplers import OversampleSampler, UndersampleSampler
from cnnlab.errors import CnnlabError
from cnnlab.tasks.classification.losses import create_loss

ROOT = Path(__file__).resolve().parents[1]


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])


# -- samplers ----------------------------------------------------------------------------------------------


def test_oversample_gives_uniform_class_frequency_and_is_a_pure_function_of_seed_epoch():
    y = _labels([2700, 270, 30])
    sampler = OversampleSampler(y, 3)
    assert len(sampler) == len(y)  # default epoch length N
    order = sampler.order(seed=0, epoch=0)
    freq = torch.bincount(y[order], minlength=3).double() / len(order)
    assert torch.allclose(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03)  # was 0.9 / 0.09 / 0.01
    assert torch.equal(order, sampler.order(seed=0, epoch=0))
    assert not torch.equal(order, sampler.order(seed=0, epoch=1))
    assert not torch.equal(order, sampler.order(seed=1, epoch=0))
    assert len(OversampleSampler(y, 3, num_samples=500).order(0, 0)) == 500


def test_undersample_epochs_are_exactly_balanced_and_cover_all_majority_samples():
    y = _labels([50, 23, 7])
    sampler = UndersampleSampler(y, 3)
    assert len(sampler) == 21
    seen = set()
    for epoch in range(8):  # ceil(50 / 7) = 8 epochs cover the largest class
        order = sampler.order(seed=3, epoch=epoch)
        assert torch.bincount(y[order], minlength=3).tolist() == [7, 7, 7]
        seen.update(order.tolist())
        assert torch.equal(order, sampler.order(seed=3, epoch=epoch))
    assert seen == set(range(len(y)))


def test_tensor_batches_follow_the_sampler():
    y = _labels([40, 8])
    x = torch.arange(len(y), dtype=torch.uint8).view(-1, 1, 1, 1)
    sampler = UndersampleSampler(y, 2)
    batches = TensorBatches(x, y, 5, True, seed=1, sampler=sampler)
    assert len(batches) == 3  # 16 per epoch in batches of 5: 5, 5, 5 (a last batch of one is dropped)
    got = torch.cat([xb.flatten().long() for xb, _ in batches.batches(epoch=2)])
    assert torch.equal(got, sampler.order(1, 2)[:15])


# -- class weights and losses ------------------------------------------------------------------------------


def test_inverse_class_weights_by_hand():
    # raw 1/90, 1/10; scaled to average 1: 2 * (1/90) / (1/90 + 1/10) = 0.2, and 1.8
    assert compute_class_weights(np.array([90, 10]), "inverse").tolist() == pytest.approx([0.2, 1.8])


def test_effective_number_class_weights_by_hand():
    # beta 0.9: (1 - 0.9) / (1 - 0.9**2) = 0.526316 and (1 - 0.9) / (1 - 0.9) = 1; scaled to average 1
    raw = [0.1 / (1 - 0.81), 1.0]
    expected = [2 * r / sum(raw) for r in raw]
    assert compute_class_weights(np.array([2, 1]), "effective", beta=0.9).tolist() == pytest.approx(expected)
    assert compute_class_weights(np.array([500, 5]), "effective", beta=0.0).tolist() == pytest.approx([1, 1])


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([0, 0, 1])
    p_t = [math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e), 0.5]
    per = [-(1 - p) ** 2 * math.log(p) for p in p_t]
    assert float(create_loss("focal", 2, gamma=2.0)(logits, target)) == pytest.approx(sum(per) / 3, rel=1e-5)
    w = torch.tensor([0.25, 0.75])
    weighted = (0.25 * per[0] + 0.25 * per[1] + 0.75 * per[2]) / (0.25 + 0.25 + 0.75)
    assert float(create_loss("focal", 2, gamma=2.0, weight=w)(logits, target)) == pytest.approx(weighted, rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    w = torch.rand(5) + 0.1
    assert torch.allclose(create_loss("focal", 5, gamma=0.0)(logits, target), F.cross_entropy(logits, target))
    assert torch.allclose(create_loss("focal", 5, gamma=0.0, weight=w)(logits, target),
                          F.cross_entropy(logits, target, weight=w))
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    create_loss("focal", 5, gamma=0.0, weight=w)(a, target).backward()
    F.cross_entropy(b, target, weight=w).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


# -- the plan --------------------------------------------------------------------------------------------


def _cfg(*overrides: str) -> Config:
    cfg = Config()
    apply_overrides(cfg, list(overrides))
    return cfg


def test_balance_methods_parse_from_a_comma_list():
    cfg = _cfg("balance.methods=oversample,threshold")
    assert cfg.balance.methods == ["oversample", "threshold"]
    with pytest.raises(CnnlabError, match="unknown --balance method 'smotte'"):
        parse_methods("smotte")


@pytest.mark.parametrize("methods", ["oversample,class_weights", "smote,class_weights", "undersample,class_weights"])
def test_double_correction_is_refused(methods):
    y = _labels([90, 10])
    with pytest.raises(CnnlabError, match="twice"):
        plan_balance(_cfg(f"balance.methods={methods}"), y, 2, True, log=lambda m: None)


def test_double_correction_applies_with_allow_double_and_says_so():
    lines: list[str] = []
    cfg = _cfg("balance.methods=oversample,class_weights", "balance.allow_double=true")
    plan = plan_balance(cfg, _labels([90, 10]), 2, True, log=lines.append)
    assert plan.sampler == "oversample" and plan.weights == pytest.approx([0.2, 1.8])
    assert any("double correction" in line for line in lines)


def test_contradictions_are_refused():
    y = _labels([90, 10, 5])
    with pytest.raises(CnnlabError, match="contradict"):
        plan_balance(_cfg("balance.methods=oversample,undersample"), y, 3, True, log=lambda m: None)
    with pytest.raises(CnnlabError, match="two-class"):
        plan_balance(_cfg("balance.methods=threshold"), y, 3, True, log=lambda m: None)


def test_imbalanced_split_switches_the_monitor_and_warns():
    lines: list[str] = []
    cfg = _cfg()
    plan = plan_balance(cfg, _labels([90, 10, 30]), 3, True, log=lines.append)
    assert plan.imbalanced and plan.ratio == 9.0
    assert plan.monitor == "val_balanced_accuracy"
    assert any("warning" in line and "imbalanced" in line for line in lines)
    plan = plan_balance(_cfg(), _labels([90, 10]), 2, True, log=lambda m: None)
    assert plan.monitor == "val_roc_auc"
    plan = plan_balance(_cfg(), _labels([50, 45]), 2, True, log=lambda m: None)
    assert plan.monitor == "auto"  # balanced: the plain accuracy stays


# -- threshold, SMOTE ------------------------------------------------------------------------------------


def test_select_threshold_on_a_toy_example():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.15, 0.2, 0.3])  # at 0.5 everything is class 0: balanced accuracy 0.5
    t, score = select_threshold(y, p)
    assert t == pytest.approx(0.175) and score == 1.0
    assert ((p >= t).astype(int) == y).all()


def test_resample_pixels_balances_and_interpolates_within_a_class():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 100, (60, 1, 4, 4), dtype=np.uint8))
    x[50:] += 150  # the minority class lives in [150, 250)
    y = _labels([50, 10])
    xs, ys = resample_pixels(x, y, "smote", k=3, seed=0)
    assert xs.dtype == torch.uint8 and xs.shape == (100, 1, 4, 4)
    assert torch.bincount(ys).tolist() == [50, 50]
    assert torch.equal(xs[:60], x)  # originals first, unchanged
    synthetic = xs[60:]
    assert int(synthetic.min()) >= int(x[50:].min()) and int(synthetic.max()) <= int(x[50:].max())


@pytest.mark.parametrize("method", ["borderline_smote", "adasyn"])
def test_resample_features_other_methods(method):
    rng = np.random.default_rng(1)
    f = np.concatenate([rng.normal(0, 1, (80, 3)), rng.normal(1.0, 1, (12, 3))])
    y = np.array([0] * 80 + [1] * 12)
    fr, yr = resample_features(f, y, method, k=5, seed=0)
    assert (yr == 1).sum() > 12 and len(fr) == len(yr)


def test_smote_needs_two_samples_per_class():
    with pytest.raises(CnnlabError, match="at least 2 samples"):
        resample_features(np.zeros((5, 2)), np.array([0, 0, 0, 0, 1]), "smote")


# -- a real run ------------------------------------------------------------------------------------------


def _write_binary(tmp_path: Path) -> Path:
    """12x12 images: class 1 (the 20% minority) has a bright square; both classes noisy."""
    rng = np.random.default_rng(0)
    n = 250
    y = (np.arange(n) % 5 == 0).astype(np.int64)
    x = rng.integers(0, 120, (n, 12, 12), dtype=np.uint8)
    x[y == 1, 3:9, 3:9] += 100
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y, x_test=x[:60], y_test=y[:60])
    return path


def test_binary_run_reports_roc_auc_and_moves_the_threshold(tmp_path):
    import cnnlab
    from cnnlab.inference import load_run

    data = _write_binary(tmp_path)
    run = cnnlab.fit(str(data), model="mlp", epochs=2, batch_size=32, out=str(tmp_path / "run"), verbose=0,
                     tensorboard=False, balance="oversample,threshold", precision="fp32")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["monitor"] == "val_roc_auc"
    assert m["val"]["roc_auc"] > 0.95 and m["test"]["pr_auc"] > 0.9  # the minority's square separates it
    assert "val_roc_auc" in run.history[-1]
    assert m["balance"]["applied"] == ["oversample", "threshold"] and m["balance"]["imbalance_ratio"] == 4.0
    t = m["threshold"]["value"]
    assert 0.0 < t < 1.0
    loaded = load_run(tmp_path / "run")
    assert loaded.task.decision_threshold == t
    probs = torch.tensor([[1 - t - 1e-3, t + 1e-3], [1 - t + 1e-3, t - 1e-3]])
    assert loaded.predictor.decide(probs).tolist() == [1, 0]  # predict's decision follows the threshold
    result = loaded.evaluate()
    assert result["decision_threshold"] == t
    assert result["balanced_accuracy"] == pytest.approx(m["test"]["balanced_accuracy"])


def test_cli_refuses_double_correction(tmp_path):
    data = _write_binary(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", str(data), "--model", "mlp", "--epochs", "1",
                           "--balance", "oversample,class_weights", "--out", str(tmp_path / "r"), "--quiet"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 2
    assert "corrects the class frequencies twice" in proc.stderr and "allow_double" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_the_threshold_of_a_streamed_run_equals_the_in_memory_one(tmp_path, one_thread):
    """Over data.memory_budget_mb the val split is streamed (no .x in memory); the threshold is picked all the same."""
    from conftest import make_image_folder

    import cnnlab

    data = make_image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=24, size=12)
    picked = []
    for budget in (4096, 0):
        run = cnnlab.fit(str(data), model="mlp", epochs=2, balance="threshold", precision="fp32", verbose=0,
                         tensorboard=False, out=str(tmp_path / f"run{budget}"), overrides=[
                             f"data.memory_budget_mb={budget}", "data.cache=false", "data.workers=0"])
        picked.append(run.metrics["threshold"]["value"])
    assert picked[0] == picked[1] and 0.0 < picked[0] < 1.0


def test_an_imbalanced_train_split_is_announced_once(tmp_path, capsys):
    """One message per fact: the counts line, then one warning that says it is imbalanced, what the run does about
    it (the monitor) and what the user can do (was three lines in three wordings: plan, plan note, cheap check)."""
    import cnnlab

    data = _write_binary(tmp_path)  # ratio 4
    cnnlab.fit(str(data), model="mlp", epochs=1, batch_size=32, out=str(tmp_path / "run"), quiet=True,
               tensorboard=False, precision="fp32")
    out = capsys.readouterr().out.replace(str(tmp_path), "TMP")  # its name holds the word too
    lines = [line for line in out.splitlines() if "imbalanced" in line]
    assert len(lines) == 1, lines
    assert "ratio 4.0" in lines[0] and "val_roc_auc" in lines[0] and "--balance" in lines[0]
