"""Pictures logged with runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on workers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

TSNE_PCA_DIMS = 50


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2]. PCA to 50 dimensions first (the standard t-SNE preprocessing,
    van der Maaten & Hinton 2008), which also makes it several times faster on 1280-d."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] > TSNE_PCA_DIMS and x.shape[0] > TSNE_PCA_DIMS:
        x = PCA(n_components=TSNE_PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(
        x
    )


def save_tsne_picture(
    x: np.ndarray, labels: np.ndarray, path: str | Path, title: str, seed: int = 0
) -> Path:
    """t-SNE of embeddings x [N, D] coloured by class labels [N], saved as PNG."""
    xy = tsne_2d(x, seed)
    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels % cmap.N, cmap=cmap, s=6, alpha=0.8)
    if n_classes <= 10:
        ax.legend(*scatter.legend_elements(), title="class", loc="best", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
