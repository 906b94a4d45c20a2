"""Evaluation of a representation: linear probe, kNN accuracy, collapse metrics.

Inputs are embeddings [N, D] with integer labels [N]; nothing here trains the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    """Accuracy on the evaluation split, 0..1."""
    C: float
    """Inverse regularisation strength chosen on the held-out slice."""
    heldout_accuracy: float


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    seed: int = 0,
    c_grid: tuple[float, ...] = PROBE_C_GRID,
) -> ProbeResult:
    """Logistic regression on standardised features.

    The regularisation C is chosen on a held-out 20% slice of the training split; the
    probe is then refit on the whole training split and scored on the evaluation split,
    so the evaluation split never influences a choice.
    """
    train_x, eval_x = _as_numpy(train_x), _as_numpy(eval_x)
    train_y, eval_y = np.asarray(train_y), np.asarray(eval_y)
    counts = np.bincount(train_y)
    stratify = train_y if counts[counts > 0].min() >= 2 else None
    fit_x, val_x, fit_y, val_y = train_test_split(
        train_x, train_y, test_size=HELDOUT_FRACTION, random_state=seed, stratify=stratify
    )
    best_c, best_val = c_grid[0], -1.0
    for c in c_grid:
        val = _fit(fit_x, fit_y, c, seed).score(val_x, val_y)
        if val > best_val:
            best_c, best_val = c, val
    accuracy = _fit(train_x, train_y, best_c, seed).score(eval_x, eval_y)
    return ProbeResult(accuracy=float(accuracy), C=best_c, heldout_accuracy=float(best_val))


class _ScaledLogReg:
    def __init__(self, x: np.ndarray, y: np.ndarray, c: float, seed: int) -> None:
        self.scaler = StandardScaler().fit(x)
        self.model = LogisticRegression(C=c, max_iter=1000, random_state=seed)
        self.model.fit(self.scaler.transform(x), y)

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self.model.score(self.scaler.transform(x), y))


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> _ScaledLogReg:
    return _ScaledLogReg(x, y, c, seed)


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

    train_x: [N, D], eval_x: [M, D]; labels int64. Returns accuracy in 0..1.
    """
    train_x = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    eval_x = F.normalize(torch.as_tensor(eval_x, dtype=torch.float32), dim=1)
    train_y = torch.as_tensor(train_y, dtype=torch.long)
    eval_y = torch.as_tensor(eval_y, dtype=torch.long)
    k = min(k, len(train_x))
    num_classes = int(max(train_y.max(), eval_y.max())) + 1
    sims, idx = (eval_x @ train_x.T).topk(k, dim=1)  # [M, k]
    votes = torch.zeros(len(eval_x), num_classes)
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
