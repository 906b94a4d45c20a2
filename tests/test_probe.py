import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from jepa.probe import collapse_metrics, knn_accuracy, linear_probe, probe_accuracy_plain


def separable(n_per_class=60, dim=20, classes=4, seed=0, noise_seed=None):
    """Gaussian clusters around centres fixed by `seed`; `noise_seed` draws new points."""
    centers = np.random.default_rng(seed).normal(scale=6.0, size=(classes, dim))
    rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    x = np.concatenate([c + rng.normal(size=(n_per_class, dim)) for c in centers])
    y = np.repeat(np.arange(classes), n_per_class)
    return x.astype(np.float32), y


def _blobs_split():
    x, y = separable(seed=0)
    xe, ye = separable(seed=0, noise_seed=1)
    return x, y, xe, ye


def test_probe_scores_above_0_9_on_linearly_separable_data():
    x, y = separable(seed=0)
    xe, ye = separable(seed=0, noise_seed=1)  # same classes, unseen points
    result = linear_probe(x, y, xe, ye)
    assert result.accuracy > 0.9


def test_probe_is_at_chance_on_random_labels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 10)).astype(np.float32)
    y = rng.integers(0, 4, 400)
    ye = rng.integers(0, 4, 400)
    assert linear_probe(x, y, rng.normal(size=(400, 10)), ye).accuracy < 0.4


def test_knn_accuracy_on_clusters():
    x, y = separable(seed=2)
    xe, ye = separable(seed=2, noise_seed=3)
    assert knn_accuracy(torch.tensor(x), torch.tensor(y), torch.tensor(xe), torch.tensor(ye)) > 0.95


def test_collapse_metrics_tell_spread_from_collapsed():
    spread = torch.randn(500, 64)
    std, rank = collapse_metrics(spread)
    assert std == pytest.approx(1 / 8, rel=0.1) and rank > 40
    # Complete collapse: every output (nearly) the same vector. The std sees it; the
    # centred rank only sees the shape of the tiny remainder, so it is not asserted.
    collapsed = torch.ones(500, 64) + 1e-6 * torch.randn(500, 64)
    std_c, _ = collapse_metrics(collapsed)
    assert std_c < 1e-4
    # Dimensional collapse: the outputs vary along one direction only.
    line = torch.randn(500, 1) * torch.randn(1, 64) + 1e-4 * torch.randn(500, 64)
    _, rank_d = collapse_metrics(line)
    assert rank_d < 1.5


def test_effective_rank_ignores_a_shared_mean_direction():
    # Anisotropic features (a large common mean, as the demo's random ViT gives) vary
    # along as many directions as the same features without the mean.
    spread = torch.randn(500, 64)
    _, rank = collapse_metrics(spread)
    _, rank_shifted = collapse_metrics(spread + 20.0)
    assert rank_shifted == pytest.approx(rank, rel=0.2)


def test_validation_score_is_the_validation_splits_not_the_heldout_slices():
    """The probe scores the validation split it is given: labels that disagree with
    the features there give chance, whatever the held-out slice of train says."""
    x, y, xe, ye = _blobs_split()
    rng = np.random.default_rng(5)
    shuffled = rng.permutation(ye)
    result = linear_probe(x, y, xe, ye, val_x=xe, val_y=shuffled)
    assert result.accuracy > 0.9 and result.heldout_accuracy > 0.9
    assert result.val_accuracy < 0.5
    assert linear_probe(x, y, xe, ye, val_x=xe, val_y=ye).val_accuracy == result.accuracy


def test_plain_probe_is_scikit_learns_on_raw_features():
    x, y, xe, ye = _blobs_split()
    seed_probe = LogisticRegression(max_iter=1000).fit(x, y).score(xe, ye)
    assert probe_accuracy_plain(x, y, xe, ye) == pytest.approx(seed_probe)
