"""The test split never reaches the searcher: a real sweep on a Tiny-ImageNet folder
whose test labels (the official val folder's annotations) disagree with the images on
purpose, while its validation labels (images of the training folders) are right."""

from __future__ import annotations

import pickle
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from jepa import metrics as M
from tests.shared_sweeps import SweepSpec
from tests.test_tiny_imagenet import WNIDS, make_tiny_imagenet

pytestmark = pytest.mark.slow

SPACE = """\
description: two widths, VICReg (does not collapse), two seeds each
params:
  predictor_width:
    choice: [16, 512]
fixed:
  objective: vicreg
"""


def _noisy_folder(root: Path) -> Path:
    """The official layout, 3 classes; each image a class colour shifted by a random
    colour of its own and pixel noise, so that probes are neither perfect (ties would
    make "best" a coin toss) nor at chance. The test split's annotations name the next
    class (label + 1 mod 3): its labels disagree with its images."""
    make_tiny_imagenet(root, train_per_class=20, val_per_class=8)
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*.JPEG")):
        label = next((i for i, w in enumerate(WNIDS) if w in path.name), None)
        if label is None:  # val/ and test/ images: the class from the annotations
            label = _val_labels(root).get(path.name, 0)
        colour = np.array([112 + 16 * label, 128, 144 - 16 * label]) + rng.normal(0, 20, 3)
        pixels = np.clip(colour + rng.normal(scale=30, size=(64, 64, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    annotations = root / "val" / "val_annotations.txt"
    lines = []
    for line in annotations.read_text().splitlines():
        name, wnid, *box = line.split("\t")
        wrong = WNIDS[(WNIDS.index(wnid) + 1) % len(WNIDS)]
        lines.append("\t".join([name, wrong, *box]))
    annotations.write_text("\n".join(lines) + "\n")
    return root


def _val_labels(root: Path) -> dict[str, int]:
    out = {}
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        out[name] = WNIDS.index(wnid)
    return out


def _inputs(folder: Path) -> list[str]:
    """The noisy folder and the two-widths space, in the sweep's folder."""
    data = _noisy_folder(folder / "tiny-imagenet-200")
    space = folder / "two_widths.yaml"
    space.write_text(SPACE)
    return ["--space", str(space), "--data", str(data)]


# Run with the session's shared sweeps (tests/shared_sweeps.py). One pool group: the
# second costs more than it saves.
SWEEP = SweepSpec(
    "selection-test-labels-disagree",
    ("--backbone", "demo-vit", "--num-samples", "2", "--seeds", "2", "--max-epochs", "2")
    + ("--views", "2", "--max-concurrent", "1"),
    trials=4,
    prepare=_inputs,
)


@pytest.mark.shared_sweep(SWEEP)
def test_a_sweep_whose_test_labels_disagree_picks_by_validation(shared_sweep):
    proc, sweep_dirs = shared_sweep.proc, shared_sweep.dirs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags[M.TAG_ROLE] == M.ROLE_SWEEP)
    trials = [r for r in runs if r.data.tags[M.TAG_ROLE] == M.ROLE_TRIAL]
    assert len(trials) == 4
    by_width: dict[str, list] = defaultdict(list)
    for t in trials:
        by_width[t.data.params["predictor_width"]].append(t)
    assert sorted(len(v) for v in by_width.values()) == [2, 2]
    for group in by_width.values():  # two seeds of each config, never the same one twice
        assert sorted(int(t.data.params["seed"]) for t in group) == [0, 1]
    val = {
        w: statistics.mean(t.data.metrics[M.VAL_PROBE_ACCURACY] for t in g)
        for w, g in by_width.items()
    }
    test = {
        w: statistics.mean(t.data.metrics[M.PROBE_ACCURACY] for t in g) for w, g in by_width.items()
    }
    # The disagreement is real: the representation that reads the images well scores
    # high on validation and low on the mislabelled test split.
    assert min(val.values()) > max(test.values()), (val, test)
    assert all(t.data.tags[M.TAG_STATUS] == "finished" for t in trials), "precondition"

    # Optuna was told validation means only: one study trial per config, valued at the
    # mean validation score of its two seeds.
    (folder,) = [p for p in sweep_dirs.storage.iterdir() if p.name != "_train"]
    with open(sorted(folder.glob("searcher-state-*.pkl"))[-1], "rb") as f:
        study = pickle.load(f)["_ot_study"]
    told = {str(t.params["predictor_width"]): t.value for t in study.trials}
    assert told == pytest.approx(val)

    best = parent.data.params["best.predictor_width"]
    assert val[best] == max(val.values())  # by validation (a tie, if any, either way)
    assert parent.data.params[M.PARAM_SEARCH_METRIC] == M.VAL_PROBE_ACCURACY
    metrics = parent.data.metrics
    assert metrics[M.TEST_PROBE_ACCURACY] == pytest.approx(test[best])
    assert metrics[M.BEST_SEEDS] == 2
    for name in (M.TEST_PROBE_ACCURACY, M.TEST_PROBE_LIFT):
        assert metrics[name + M.CI_LOW] <= metrics[name] <= metrics[name + M.CI_HIGH]
    best_runs = {t.info.run_id for t in by_width[best]}
    assert parent.data.tags[M.TAG_BEST_RUN] in best_runs
    raw = {t.data.params["seed"]: t.data.metrics[M.BASELINE_PROBE_ACCURACY] for t in trials}
    lifts = [t.data.metrics[M.PROBE_ACCURACY] - raw[t.data.params["seed"]] for t in by_width[best]]
    assert metrics[M.TEST_PROBE_LIFT] == pytest.approx(statistics.mean(lifts))
