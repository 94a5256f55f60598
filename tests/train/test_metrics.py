import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from ondevice.train.metrics import log_loss, recall_ndcg_at_k, roc_auc, sampled_hr_ndcg


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=2000)
    scores = np.round(rng.random(2000) + 0.3 * labels, 2)  # rounding creates many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 500), rng.random(500)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-9)


def test_recall_ndcg_by_hand():
    top = np.array([[5, 3, 9], [1, 2, 4]])
    relevant = [np.array([3, 7]), np.array([8])]
    recall, ndcg = recall_ndcg_at_k(top, relevant, 3)
    # user 0: one hit of two at rank 2; user 1: no hit
    assert recall == pytest.approx((0.5 + 0.0) / 2)
    idcg0 = 1 + 1 / np.log2(3)
    assert ndcg == pytest.approx(((1 / np.log2(3)) / idcg0 + 0) / 2)


def test_sampled_protocol_ties_are_not_optimistic():
    hr, _ = sampled_hr_ndcg(np.zeros(10), np.zeros((10, 99)), k=10)
    assert hr == 0.0  # constant scores put the positive in the middle, not first
    hr, ndcg = sampled_hr_ndcg(np.ones(4), np.zeros((4, 99)), k=1)
    assert hr == 1.0 and ndcg == 1.0
