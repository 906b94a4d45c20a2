"""The linear probe is scikit-learn's logistic regression, solved faster."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from jepa.probe import _ScaledLogReg, linear_probe


def blobs(n_per_class=40, dim=30, classes=5, seed=0, spread=2.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_same_model_as_scikit_learn(c):
    x, y = blobs(spread=0.4)  # overlapping classes: the regularisation matters
    ours = _ScaledLogReg(x, y, n_classes=5, c=c)
    scaler = StandardScaler().fit(x)
    theirs = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(scaler.transform(x), y)
    weight, bias = ours.params
    assert torch.allclose(weight.T, torch.tensor(theirs.coef_, dtype=torch.float32), atol=1e-2)
    # Both stop at a gradient tolerance (ours 1e-4), hence atol; intercepts of a
    # multinomial model are defined up to a constant.
    ours_b = bias - bias.mean()
    theirs_b = torch.tensor(theirs.intercept_ - theirs.intercept_.mean(), dtype=torch.float32)
    assert torch.allclose(ours_b, theirs_b, atol=1e-2)
    xt, yt = blobs(spread=0.4, seed=1)
    assert ours.score(xt, yt) == pytest.approx(theirs.score(scaler.transform(xt), yt), abs=0.01)


def test_warm_start_reaches_the_cold_solution():
    x, y = blobs(spread=0.4)
    cold = _ScaledLogReg(x, y, n_classes=5, c=1.0)
    warm = _ScaledLogReg(x, y, n_classes=5, c=1.0, init=_ScaledLogReg(x, y, 5, 0.1).params)
    assert torch.allclose(cold.params[0], warm.params[0], atol=1e-2)


def test_probe_runs_on_a_few_images_per_class():
    # 3 images of each of 10 classes: a 20% held-out slice cannot hold every class.
    x, y = blobs(n_per_class=3, classes=10, seed=2)
    result = linear_probe(x, y, x, y)
    assert 0 <= result.accuracy <= 1 and result.C > 0
