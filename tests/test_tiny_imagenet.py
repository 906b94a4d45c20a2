"""Tiny-ImageNet-200 in its official layout: labels, balance, determinism, bad folders,
and the real path's defaults (checkpoint at the project root, data/tiny-imagenet-200)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from jepa import metrics as M
from jepa.data import DatasetSpec, load_dataset
from jepa.errors import UserInputError
from tests.conftest import ROOT, RUN
from tests.shared_sweeps import Scenario

WNIDS = ["n01443537", "n01629819", "n01641577"]
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n01641577": "bullfrog, Rana catesbeiana",
    "n00000001": "an ImageNet class that is not one of the 200",
}


def class_level(label: int) -> int:
    """Each class's images are filled with this red (or grey) level, so a decoded image
    tells its true class even after JPEG compression."""
    return 40 + 60 * label


def write_image(path: Path, label: int, index: int, grey: bool) -> None:
    level = class_level(label)
    if grey:
        img = Image.new("L", (64, 64), level)
    else:
        img = Image.new("RGB", (64, 64), (level, (17 * index) % 250, 128))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=95)


def make_tiny_imagenet(
    root: Path, train_per_class: int = 20, val_per_class: int = 4, wnids=WNIDS
) -> Path:
    """A small folder in the official Tiny-ImageNet-200 layout; every 5th image is grey.
    20 training images a class: the default 10 for training, 10 for validation."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WORDS.items()))
    for label, wnid in enumerate(wnids):
        boxes = []
        for i in range(train_per_class):
            name = f"{wnid}_{i}.JPEG"
            write_image(root / "train" / wnid / "images" / name, label, i, grey=i % 5 == 4)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    # val: one flat folder, classes interleaved, labels only in val_annotations.txt
    lines = []
    for k in range(val_per_class * len(wnids)):
        label = (k * 2 + k // len(wnids)) % len(wnids)
        write_image(root / "val" / "images" / f"val_{k}.JPEG", label, k, grey=k % 5 == 2)
        lines.append(f"val_{k}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    (root / "test" / "images").mkdir(parents=True)
    write_image(root / "test" / "images" / "test_0.JPEG", 0, 0, grey=False)
    return root


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tiny_imagenet(tmp_path / "tiny-imagenet-200")


def assert_labels_match_pixels(images: torch.Tensor, labels: torch.Tensor) -> None:
    red = images[:, 0].float().mean(dim=(1, 2))
    expected = torch.tensor([class_level(int(y)) for y in labels], dtype=torch.float32)
    assert (red - expected).abs().max() < 4


def test_labels_balance_and_grey_images(tiny):
    data = load_dataset(DatasetSpec(source=str(tiny), images_per_class=5))
    assert data.name == "tiny-imagenet-200"
    assert data.class_names == ["goldfish", "European fire salamander", "bullfrog"]
    assert data.train_images.shape == (15, 3, 64, 64) and data.train_images.dtype == torch.uint8
    assert np.bincount(data.train_labels.numpy()).tolist() == [5, 5, 5]
    assert data.eval_images.shape == (12, 3, 64, 64)  # all val images by default
    assert np.bincount(data.eval_labels.numpy()).tolist() == [4, 4, 4]
    assert_labels_match_pixels(data.train_images, data.train_labels)
    assert_labels_match_pixels(data.eval_images, data.eval_labels)
    # Grey JPEGs arrive as 3 equal channels.
    val = data.eval_images.int()
    grey = (val[:, 0] == val[:, 1]).all(dim=(1, 2)) & (val[:, 1] == val[:, 2]).all(dim=(1, 2))
    assert 0 < int(grey.sum()) < len(val)
    assert data.skipped_images == 0


def test_default_is_ten_per_class_and_eval_per_class_subsets(tiny):
    data = load_dataset(DatasetSpec(source=str(tiny), eval_per_class=2))
    assert np.bincount(data.train_labels.numpy()).tolist() == [10, 10, 10]
    assert np.bincount(data.val_labels.numpy()).tolist() == [10, 10, 10]
    assert np.bincount(data.eval_labels.numpy()).tolist() == [2, 2, 2]


def test_validation_comes_from_the_training_folders_outside_the_subset(tiny):
    """Three disjoint splits: validation images are training-folder images the training
    subset did not take; the test split is the official val folder."""
    # Mark every image: blue 4 + 8 i for the i-th training image of a class, 200 + 4 k
    # for the k-th image of the val folder (JPEG moves a flat level by a unit or two).
    for label, wnid in enumerate(WNIDS):
        for i in range(20):
            path = tiny / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            Image.new("RGB", (64, 64), (class_level(label), 0, 4 + 8 * i)).save(path, quality=95)
    for line in (tiny / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        k = int(name.removeprefix("val_").removesuffix(".JPEG"))
        colour = (class_level(WNIDS.index(wnid)), 0, 200 + 4 * k)
        Image.new("RGB", (64, 64), colour).save(tiny / "val" / "images" / name, quality=95)

    def marks(images: torch.Tensor, labels: torch.Tensor) -> set[tuple[int, int]]:
        blue = images[:, 2].float().mean(dim=(1, 2))
        return {(int(y), round(float(b))) for y, b in zip(labels, blue, strict=True)}

    data = load_dataset(DatasetSpec(source=str(tiny), images_per_class=6, val_per_class=5))
    assert np.bincount(data.val_labels.numpy()).tolist() == [5, 5, 5]
    assert_labels_match_pixels(data.val_images, data.val_labels)
    train = marks(data.train_images, data.train_labels)
    val = marks(data.val_images, data.val_labels)
    test = marks(data.eval_images, data.eval_labels)
    assert len(train) == 18 and len(val) == 15 and len(test) == 12
    assert not train & val
    assert all(b < 170 for _, b in val) and all(b > 190 for _, b in test)
    with pytest.raises(UserInputError, match="--val-per-class 11 .*use at most 10"):
        load_dataset(DatasetSpec(source=str(tiny), val_per_class=11))


def test_skip_bad_images_counts_them(tiny):
    (tiny / "val" / "images" / "val_1.JPEG").write_bytes(b"not a jpeg")
    data = load_dataset(DatasetSpec(source=str(tiny), images_per_class=2, skip_bad_images=True))
    assert data.skipped_images == 1 and len(data.eval_images) == 11
    with pytest.raises(UserInputError, match="unreadable image .*val_1.JPEG"):
        load_dataset(DatasetSpec(source=str(tiny), images_per_class=2))


def test_parent_folder_gets_a_hint(tiny):
    with pytest.raises(UserInputError, match=f"did you mean --data {tiny}"):
        load_dataset(DatasetSpec(source=str(tiny.parent)))


# --- bad folders through the CLI: exit 2, one line, no MLflow run ---------------------


def _break(kind: str, tiny: Path) -> tuple[list[str], str]:
    """Damage `tiny` as `kind` says; returns extra flags and a piece of the error line."""
    if kind == "missing_wnids":
        (tiny / "wnids.txt").unlink()
        return [], "is not a Tiny-ImageNet-200 folder: no wnids.txt"
    if kind == "wrong_layout":  # val sorted into class folders, as some mirrors ship it
        for wnid in WNIDS:
            (tiny / "val" / wnid).mkdir()
        shutil.rmtree(tiny / "val" / "images")
        (tiny / "val" / "val_annotations.txt").unlink()
        return [], "no val/val_annotations.txt"
    if kind == "too_many_per_class":
        return ["--images-per-class", "21"], (
            "--images-per-class 21 is more than the data has: class n01443537 has 20"
        )
    if kind == "unreadable_image":
        bad = tiny / "val" / "images" / "val_5.JPEG"
        bad.write_bytes(bad.read_bytes()[:100])  # a truncated JPEG
        return [], f"unreadable image {bad}"
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind", ["missing_wnids", "wrong_layout", "too_many_per_class", "unreadable_image"]
)
def test_bad_folder_exits_2_with_one_line_and_no_run(kind, tiny, sweep_dirs, main_in_process):
    flags, expected = _break(kind, tiny)
    argv = ["--space", "predictor_width", "--backbone", "demo-vit", "--data", str(tiny), *flags]
    argv += sweep_dirs.flags()
    # One kind as a user runs it (a new process); the others call the CLI's main in this
    # process (~5 s less each).
    code, out, lines = main_in_process(argv, new_process=kind == "missing_wnids")
    assert code == 2, out[-2000:] + "\n".join(lines)[-2000:]
    assert len(lines) == 1 and expected in lines[0], lines
    assert "Ray dashboard" not in out
    db = sweep_dirs.root / "mlflow.db"
    if db.exists():
        assert sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0


# --- the real path's defaults ----------------------------------------------------------


def copy_project(dest: Path) -> Path:
    """The project's code in a fresh folder, so its root can hold the real path's files
    without touching this checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("jepa", "sweeps", "search_spaces"):
        shutil.copytree(ROOT / part, dest / part, ignore=ignore)
    return dest


@dataclass
class DefaultPlaces:
    """A sweep run with no flags but the budget, in a copy of the project whose default
    places hold an I-JEPA checkpoint and a Tiny-ImageNet folder."""

    proc: subprocess.CompletedProcess
    project: Path
    checkpoint: Path
    data: Path


def _sweep_at_the_default_places(folder: Path, cache: Path, cluster: list[str]) -> DefaultPlaces:
    """The copied project's sweep, starting its own Ray cluster as it would on a laptop
    (`cache` and `cluster`, the session's, unused: they are not the defaults)."""
    from tests.test_ijepa import small_pair, write_ijepa_checkpoint

    project = copy_project(folder / "project")
    checkpoint = project / "IN1K-vit.h.14-300e.pth.tar"
    write_ijepa_checkpoint(checkpoint, *small_pair())
    data = make_tiny_imagenet(project / "data" / "tiny-imagenet-200")

    # Only the trial budget is set; backbone, checkpoint, data, MLflow store, Ray storage
    # and embedding cache are the defaults (all inside the copied project).
    # PYTHONPATH: Ray's workers import the copy too.
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(project)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, str(project / RUN.relative_to(ROOT)), "--space", "predictor_width"]
        + ["--num-samples", "1", "--max-epochs", "1", "--views", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=folder,
    )
    return DefaultPlaces(proc, project, checkpoint, data)


# Run with the session's shared sweeps (tests/shared_sweeps.py).
DEFAULT_PLACES = Scenario("default-places", _sweep_at_the_default_places, weight=3)


@pytest.mark.slow
@pytest.mark.shared_sweep(DEFAULT_PLACES)
def test_files_at_the_default_places_are_used_without_flags(shared_sweeps):
    seen = shared_sweeps[DEFAULT_PLACES.name]
    proc, project, checkpoint, data = seen.proc, seen.project, seen.checkpoint, seen.data
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Running the embedded demo" not in proc.stdout
    assert "Backbone: I-JEPA target_encoder of IN1K-vit.h.14-300e.pth.tar" in proc.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("jepa-sweeps")
    runs = client.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags[M.TAG_ROLE] for r in runs)
    assert roles == [M.ROLE_BASELINE, M.ROLE_BASELINE, M.ROLE_SWEEP, M.ROLE_TRIAL]
    for r in runs:
        assert r.data.tags[M.TAG_BACKBONE] == "ijepa:IN1K-vit.h.14-300e.pth.tar:target"
        assert r.data.tags[M.TAG_DATASET] == f"tiny-imagenet-200:{data.resolve()}"
    trial = next(r for r in runs if r.data.tags[M.TAG_ROLE] == M.ROLE_TRIAL)
    assert trial.info.status == "FINISHED"
    assert trial.data.params["train_images"] == "30"  # 3 classes x the default 10
    assert trial.data.params["val_images"] == "30"  # the other 10 of each training folder
    assert trial.data.params["eval_images"] == "12"
    from jepa.backbones import file_sha256

    assert trial.data.params["backbone_sha256"] == file_sha256(str(checkpoint))
    assert os.path.isdir(project / "ray_results")


# --- python -m jepa.data download tiny-imagenet (never the real URL in tests) ---------


def zip_folder(folder: Path, archive: Path) -> Path:
    """An archive laid out like the official one: tiny-imagenet-200/... at its top."""
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, Path(folder.name) / path.relative_to(folder))
    return archive


def test_download_offline_exits_2_and_says_where_to_put_the_files(tmp_path):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "data"
    env = {**os.environ, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, "-m", "jepa.data", "download", "tiny-imagenet", "--dest", str(dest)]
        + ["--url", f"http://127.0.0.1:{port}/tiny-imagenet-200.zip", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot download" in lines[0]
    assert f"unzip it into {dest} so that {dest}/tiny-imagenet-200/wnids.txt exists" in lines[0]
    assert "90528d7ca1a48142e341f4ef8d21d0de" in lines[0]
    assert not (dest / "tiny-imagenet-200").exists()


def test_download_from_a_local_server_checks_md5_and_unpacks(tmp_path, tiny, monkeypatch):
    from jepa.download import file_md5, main

    served = tmp_path / "served"
    served.mkdir()
    archive = zip_folder(tiny, served / "tiny-imagenet-200.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    url = f"http://127.0.0.1:{server.server_address[1]}/tiny-imagenet-200.zip"
    try:
        dest = tmp_path / "data"
        # The official md5 does not match this archive: nothing may be unpacked.
        assert main(["download", "tiny-imagenet", "--dest", str(dest), "--url", url]) == 2
        assert not (dest / "tiny-imagenet-200").exists()
        flags = ["--dest", str(dest), "--url", url, "--md5", file_md5(archive)]
        assert main(["download", "tiny-imagenet", *flags]) == 0
    finally:
        server.shutdown()
    data = load_dataset(DatasetSpec(source=str(dest / "tiny-imagenet-200"), images_per_class=2))
    assert np.bincount(data.train_labels.numpy()).tolist() == [2, 2, 2]
    assert [p.name for p in dest.iterdir()] == ["tiny-imagenet-200"]  # no leftovers


def test_download_from_a_damaged_zip_exits_2(tmp_path, tiny, capsys):
    from jepa.download import main

    archive = zip_folder(tiny, tmp_path / "tiny-imagenet-200.zip")
    archive.write_bytes(archive.read_bytes()[:-200])
    dest = tmp_path / "data"
    assert main(["download", "tiny-imagenet", "--zip", str(archive), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected 90528d7ca1a48142e341f4ef8d21d0de" in err[0]
    assert not (dest / "tiny-imagenet-200").exists()
