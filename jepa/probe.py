"""Evaluation of a representation: linear probe, kNN accuracy, collapse metrics.

Inputs are embeddings [N, D] with integer labels [N]; nothing here trains the predictor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)
HELDOUT_FRACTION = 0.2
# L-BFGS stopping rule, as scikit-learn's lbfgs solver: max |gradient| of the mean loss
# below PROBE_TOL, or PROBE_MAX_ITER iterations.
PROBE_TOL = 1e-4
PROBE_MAX_ITER = 300
# The seed's probe (evaluate_embeddings.py): scikit-learn's LogisticRegression on the
# raw features, its defaults (C=1, lbfgs) with room to converge.
PLAIN_MAX_ITER = 1000


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    """Accuracy on the evaluation (test) split, 0..1."""
    C: float
    """Inverse regularisation strength chosen on the held-out slice."""
    heldout_accuracy: float
    val_accuracy: float | None = None
    """Accuracy on the validation split, when one was given."""


def linear_probe(
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    eval_x: np.ndarray | torch.Tensor,
    eval_y: np.ndarray | torch.Tensor,
    seed: int = 0,
    c_grid: tuple[float, ...] = PROBE_C_GRID,
    val_x: np.ndarray | torch.Tensor | None = None,
    val_y: np.ndarray | torch.Tensor | None = None,
) -> ProbeResult:
    """Multinomial logistic regression on standardised features.

    train_x: [N, D], eval_x: [M, D], val_x: [K, D]; labels int [N] / [M] / [K]. The
    regularisation C is chosen on a held-out 20% slice of the training split (`seed`
    draws the slice); the probe is then refit on the whole training split and scored on
    the evaluation split and, when given, the validation split: neither influences a
    choice. The model and its objective are scikit-learn's
    `LogisticRegression(C=C)` (mean cross-entropy + ||W||^2 / (2 C N), intercept not
    penalised); it is solved here with torch's L-BFGS in float32, each C warm-started
    from the previous one (C ascending), which is several times faster on 1,280-d
    features and 200 classes.
    """
    # Inputs may live on any device (a GPU trial's embeddings, say): the probe runs on
    # the CPU, like scikit-learn's.
    train_x, eval_x = _as_numpy(train_x), _as_numpy(eval_x)
    train_y, eval_y = _as_numpy(train_y), _as_numpy(eval_y)
    counts = np.bincount(train_y)
    present = counts[counts > 0]
    # A stratified slice needs two images of every class and room for each in the slice.
    can_stratify = present.min() >= 2 and HELDOUT_FRACTION * len(train_y) >= len(present)
    stratify = train_y if can_stratify else None
    fit_x, held_x, fit_y, held_y = train_test_split(
        train_x, train_y, test_size=HELDOUT_FRACTION, random_state=seed, stratify=stratify
    )
    n_classes = int(max(train_y.max(), eval_y.max())) + 1
    if val_y is not None:
        val_y = np.asarray(val_y)
        n_classes = max(n_classes, int(val_y.max()) + 1)
    best_c, best_held, best_init = c_grid[0], -1.0, None
    init = None
    for c in sorted(c_grid):
        model = _ScaledLogReg(fit_x, fit_y, n_classes, c, init)
        init = model.params
        held = model.score(held_x, held_y)
        if held > best_held:
            best_c, best_held, best_init = c, held, model.params
    final = _ScaledLogReg(train_x, train_y, n_classes, best_c, best_init)
    accuracy = final.score(eval_x, eval_y)
    val_accuracy = None if val_x is None else final.score(_as_numpy(val_x), val_y)
    return ProbeResult(
        accuracy=float(accuracy),
        C=best_c,
        heldout_accuracy=float(best_held),
        val_accuracy=val_accuracy,
    )


def probe_accuracy_plain(
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    eval_x: np.ndarray | torch.Tensor,
    eval_y: np.ndarray | torch.Tensor,
) -> float:
    """The seed's probe: scikit-learn `LogisticRegression` (C=1, lbfgs) fitted on the
    raw, unstandardised features of the training split, scored on the evaluation split.

    train_x: [N, D], eval_x: [M, D]; labels int. Returns accuracy in 0..1. Kept beside
    `linear_probe` so that a result can be set against the seed's 5-6%: on features of
    very unequal scale (a ViT's, a few large dimensions) C=1 without standardising
    under-fits, so the two probes can disagree by tens of points (README, "The science").
    """
    with warnings.catch_warnings():
        # The seed's settings, as it ran them; lbfgs stopping at max_iter is part of that.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=PLAIN_MAX_ITER)
        model.fit(_as_numpy(train_x), np.asarray(train_y))
    return float(model.score(_as_numpy(eval_x), np.asarray(eval_y)))


class _ScaledLogReg:
    """Standardise (training mean and std), then multinomial logistic regression."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        c: float,
        init: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        x_t = torch.as_tensor(x, dtype=torch.float32)
        self.mean = x_t.mean(dim=0)
        std = x_t.std(dim=0, unbiased=False)
        self.std = torch.where(std > 0, std, torch.ones_like(std))  # as StandardScaler
        self.params = _fit_logreg(self._scale(x_t), torch.as_tensor(y), n_classes, c, init)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        weight, bias = self.params
        logits = self._scale(torch.as_tensor(x, dtype=torch.float32)) @ weight + bias
        return float((logits.argmax(dim=1) == torch.as_tensor(y)).float().mean())


def _fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    c: float,
    init: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean CE(x W + b, y) + ||W||^2 / (2 C N) with L-BFGS.

    x: [N, D] float32, y: [N] int64. Returns (W [D, K], b [K]), detached.
    """
    n, d = x.shape
    weight = torch.zeros(d, n_classes) if init is None else init[0].clone()
    bias = torch.zeros(n_classes) if init is None else init[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    y = y.long()
    l2 = 0.5 / (c * n)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=PROBE_MAX_ITER,
        tolerance_grad=PROBE_TOL,
        tolerance_change=1e-9,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Weighted cosine kNN (as in DINO, Caron et al. 2021): each of the k nearest
    training embeddings votes for its class with weight exp(sim / T).

    train_x: [N, D], eval_x: [M, D]; labels int64. Returns accuracy in 0..1. Runs on
    train_x's device; the other inputs are moved there (callers mix CPU and GPU tensors:
    a GPU trial's diagnostics pass embeddings from the GPU with labels from the CPU).
    """
    device = torch.as_tensor(train_x).device
    train_x = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    eval_x = F.normalize(torch.as_tensor(eval_x, dtype=torch.float32, device=device), dim=1)
    train_y = torch.as_tensor(train_y, dtype=torch.long, device=device)
    eval_y = torch.as_tensor(eval_y, dtype=torch.long, device=device)
    k = min(k, len(train_x))
    num_classes = int(max(train_y.max(), eval_y.max())) + 1
    sims, idx = (eval_x @ train_x.T).topk(k, dim=1)  # [M, k]
    votes = torch.zeros(len(eval_x), num_classes, device=device)
    votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
    return float((votes.argmax(dim=1) == eval_y).float().mean())


def collapse_metrics(z: torch.Tensor) -> tuple[float, float]:
    """(embedding_std, effective_rank) of embeddings z [N, D], on their L2-normalised rows.

    embedding_std: std over samples of the L2-normalised embeddings, averaged over
    dimensions (SimSiam, Chen & He 2021, sec. 4.1): ~1/sqrt(D) when spread over the
    sphere, 0 when every output is the same vector. It does not depend on the mean.

    effective_rank: exp of the entropy of the normalised singular values (RankMe,
    Garrido et al. 2023) of the *centred* normalised embeddings, i.e. how many directions
    the variation between samples spans (1 .. min(N - 1, D)), as in the covariance
    spectrum of Jing et al. 2022 ("dimensional collapse"). Centred because a backbone's
    features often share one large mean direction: the demo's random ViT has a mean
    cosine of 0.98 between images, so the uncentred spectrum is ~70% that one direction
    (uncentred rank 4.2) although its variation spans ~20 directions (centred rank).
    """
    z = F.normalize(torch.as_tensor(z, dtype=torch.float32), dim=1)
    std = float(z.std(dim=0).mean())
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    p = s / s.sum().clamp_min(1e-30) + 1e-12
    rank = float(torch.exp(-(p * p.log()).sum()))
    return std, rank


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
