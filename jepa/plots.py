"""Pictures logged with runs."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import torch

# Figures are made with matplotlib's object API (`Figure`), never pyplot: no backend is
# chosen, on import or later, and no window can open; `savefig` renders with Agg.
from matplotlib.figure import Figure

TSNE_PCA_DIMS = 50
TSNE_MAX_POINTS = 2000
"""A picture shows at most this many points (a seeded random subset beyond it)."""
# 40% of the usual optimisation schedule (250 early-exaggeration + 500 iterations) and a
# coarser Barnes-Hut approximation (theta 0.8 instead of 0.5): from the PCA
# initialisation the clusters are settled by then; side by side with scikit-learn's full
# run on digits and demo embeddings the pictures show the same clusters, at ~1/6 of
# the time (see README, "Embedding cache and performance").
TSNE_EXAGGERATION_ITER = 100
TSNE_ITER = 200
TSNE_THETA = 0.8


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2] with openTSNE (Policar et al. 2024): Barnes-Hut gradients, exact
    neighbours, PCA initialisation. PCA to 50 dimensions first (the standard
    t-SNE preprocessing, van der Maaten & Hinton 2008), which also makes the neighbour
    search several times faster on 1280-d."""
    from openTSNE import TSNE

    # openTSNE logs "Precomputed initialization provided..." at INFO on every fit (its
    # own PCA initialisation is passed on internally): not news to whoever reads the log.
    logging.getLogger("openTSNE").setLevel(logging.WARNING)
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] > TSNE_PCA_DIMS and x.shape[0] > TSNE_PCA_DIMS:
        x = pca(x, TSNE_PCA_DIMS, seed)
    perplexity = max(1.0, min(30.0, (len(x) - 1) / 3))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        early_exaggeration_iter=TSNE_EXAGGERATION_ITER,
        n_iter=TSNE_ITER,
        initialization="pca",
        neighbors="exact",
        negative_gradient_method="bh",
        theta=TSNE_THETA,
        n_jobs=1,  # a trial's worker reserves one CPU
        random_state=seed,
        verbose=False,
    )
    return np.asarray(tsne.fit(x))


def pca(x: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, dims]: coordinates on the top principal axes (randomised SVD, Halko
    et al. 2011, as torch.pca_lowrank; ~30x faster than a full SVD on 2000 x 1280)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, _ = torch.pca_lowrank(torch.from_numpy(x), q=dims, center=True, niter=4)
    return (u * s).numpy()


def save_tsne_picture(
    x: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    title: str,
    seed: int = 0,
    *,
    status: str | None = None,
    epochs: int | None = None,
    split: str | None = None,
) -> Path:
    """t-SNE of embeddings x [N, D] coloured by class labels [N], saved as PNG.

    The title's first line is `title` (the config and its score); a second line says
    what the picture is of: the split and its size (`split="test"` -> "test split, N
    images"), the epochs run and the run's status (finished, collapsed, diverged), each
    when given. Beyond `TSNE_MAX_POINTS` points a seeded random subset is drawn (and the
    title says so): more points add time, not legibility."""
    x, labels = np.asarray(x), np.asarray(labels)
    facts = tsne_facts(len(x), status=status, epochs=epochs, split=split)
    if len(x) > TSNE_MAX_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), TSNE_MAX_POINTS, replace=False))
        facts.append(f"{TSNE_MAX_POINTS} of {len(x)} points shown")
        x, labels = x[keep], labels[keep]
    xy = tsne_2d(x, seed)
    n_classes = len(np.unique(labels))
    fig = Figure(figsize=(7, 7), dpi=150)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"]
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels % cmap.N, cmap=cmap, s=8, alpha=0.8)
    if n_classes <= 10:
        ax.legend(
            *scatter.legend_elements(), title="class", loc="best", fontsize=11, title_fontsize=11
        )
    ax.set_title("\n".join([title, "  ·  ".join(facts)]) if facts else title, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def tsne_facts(
    n: int, *, status: str | None = None, epochs: int | None = None, split: str | None = None
) -> list[str]:
    """The title's second line, as parts: `["test split, 360 images", "5 epochs",
    "collapsed"]` (each part only when its value is given)."""
    facts = []
    if split is not None:
        facts.append(f"{split} split, {n} images")
    if epochs is not None:
        facts.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
    if status is not None:
        facts.append(status)
    return facts
