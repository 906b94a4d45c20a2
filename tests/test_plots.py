"""jepa/plots.py: the t-SNE picture and what its title says."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from jepa.plots import save_tsne_picture, tsne_facts


def test_title_facts_name_split_size_epochs_and_status():
    assert tsne_facts(360, status="collapsed", epochs=5, split="test") == [
        "test split, 360 images",
        "5 epochs",
        "collapsed",
    ]
    assert tsne_facts(10, epochs=1) == ["1 epoch"]
    assert tsne_facts(10) == []  # the old callers' title, unchanged


def test_picture_with_the_new_title_facts(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(90, 8)).astype(np.float32) + labels[:, None] * 4.0
    path = save_tsne_picture(
        x, labels, tmp_path / "new.png", "w=64 lr=0.001", status="finished", epochs=3, split="test"
    )
    height, width, _ = mpimg.imread(path).shape
    assert width >= 1000 and height >= 1000  # 7 in at 150 dpi
