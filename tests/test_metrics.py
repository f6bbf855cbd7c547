"""The two-class ranking metrics are computed in torch (scikit-learn costs 1-2 s to import per run); they must equal
scikit-learn's definitions exactly, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from cnnlab.tasks.classification.metrics import average_precision, binary_scores, roc_auc


@pytest.mark.parametrize("ties", ["none", "rounded", "all equal"])
def test_roc_auc_and_average_precision_equal_sklearn(ties):
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(2, 400))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1  # both classes present
        p = rng.random(n).astype(np.float32)
        if ties == "rounded":
            p = np.round(p, 1)
        elif ties == "all equal":
            p[:] = 0.5
        assert roc_auc(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert average_precision(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(
            average_precision_score(y, p), abs=1e-12)


def test_binary_scores_by_hand_and_one_class_missing():
    y = torch.tensor([0, 0, 1, 1])
    p = torch.tensor([0.1, 0.4, 0.35, 0.8])
    # positives outrank negatives in 3 of 4 pairs; AP = 1/2 * 1 + 1/2 * 2/3
    assert binary_scores(y, p, "val_") == pytest.approx({"val_roc_auc": 0.75, "val_pr_auc": 0.5 + 1 / 3})
    assert binary_scores(torch.tensor([1, 1]), torch.tensor([0.2, 0.9])) == {}
    assert binary_scores(torch.tensor([], dtype=torch.long), torch.tensor([])) == {}
