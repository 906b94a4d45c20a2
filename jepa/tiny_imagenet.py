"""Tiny-ImageNet-200 in its official layout (http://cs231n.stanford.edu/tiny-imagenet-200.zip).

    tiny-imagenet-200/
      wnids.txt                      the 200 class ids (WordNet ids), one a line
      words.txt                      "<wnid>\\t<names>" for all of ImageNet (names only)
      train/<wnid>/images/*.JPEG     500 64x64 images per class
      train/<wnid>/<wnid>_boxes.txt  bounding boxes (unused)
      val/images/*.JPEG              10,000 images, 50 per class
      val/val_annotations.txt        "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
      test/images/*.JPEG             unlabelled (unused)

Labels are the line numbers of wnids.txt. Three disjoint splits:
- train: a class-balanced subset of the training folders chosen by the seed
  (`images_per_class`, default 10: the seed experiment's 2,000 images);
- validation, what the search selects on: `val_per_class` (default 10, 2,000 images)
  other images of the same training folders, chosen by the seed among those outside
  the training subset. 10 a class: one clean backbone pass over 2,000 images (an eighth
  of the 8 views x 2,000 the training views cost) gives an accuracy whose standard
  error is under 1.2 points at any accuracy (sqrt(0.25 / 2000)), ~0.5 points near the
  seed's 5%: small against the differences a sweep looks for;
- test: the official val folder (`eval_per_class`, default all 50: 10,000 images),
  reported once, for the chosen config; the search never sees it.
Only the chosen files are decoded. Grey images become RGB by repeating the channel.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jepa.errors import UserInputError
from jepa.splits import DatasetSpec, ImageDataset, balanced_subset

NAME = "tiny-imagenet-200"
DEFAULT_IMAGES_PER_CLASS = 10
DEFAULT_VAL_PER_CLASS = 10
IMAGE_SIZE = 64
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
GET_IT = "get it with: python -m jepa.data download tiny-imagenet"


@dataclass
class Listing:
    """The files of one split and their labels (indices into `wnids`)."""

    files: list[Path]
    labels: np.ndarray  # [N] int64


@dataclass
class Layout:
    root: Path
    wnids: list[str]
    names: list[str]
    train: Listing
    val: Listing


def load_tiny_imagenet(spec: DatasetSpec) -> ImageDataset:
    """The subsets `spec` asks for, decoded to uint8 [N, 3, 64, 64]."""
    layout = read_layout(Path(spec.source))
    per_class = spec.images_per_class or DEFAULT_IMAGES_PER_CLASS
    val_per_class = spec.val_per_class or DEFAULT_VAL_PER_CLASS
    _check_enough(layout, layout.train, per_class, "--images-per-class", "training")
    _check_enough(layout, layout.val, spec.eval_per_class, "--eval-per-class", "val")
    train_idx = balanced_subset(layout.train.labels, per_class, spec.seed)
    # Validation: drawn from what the training subset left in the training folders, so
    # the two never share an image.
    rest = np.setdiff1d(np.arange(len(layout.train.labels)), train_idx)
    rest_listing = Listing([layout.train.files[i] for i in rest], layout.train.labels[rest])
    _check_enough(
        layout,
        rest_listing,
        val_per_class,
        "--val-per-class",
        f"training (outside the {per_class} a class of --images-per-class)",
    )
    val_idx = rest[balanced_subset(rest_listing.labels, val_per_class, spec.seed + 1)]
    eval_idx = balanced_subset(layout.val.labels, spec.eval_per_class, spec.seed)

    digest = hashlib.sha256()
    train_images, train_labels, skipped_train = _decode(
        layout, layout.train, train_idx, spec.skip_bad_images, digest
    )
    val_images, val_labels, skipped_val = _decode(
        layout, layout.train, val_idx, spec.skip_bad_images, digest
    )
    eval_images, eval_labels, skipped_eval = _decode(
        layout, layout.val, eval_idx, spec.skip_bad_images, digest
    )
    return ImageDataset(
        name=NAME,
        train_images=train_images,
        train_labels=train_labels,
        eval_images=eval_images,
        eval_labels=eval_labels,
        val_images=val_images,
        val_labels=val_labels,
        class_names=layout.names,
        manifest_hash=digest.hexdigest(),
        skipped_images=skipped_train + skipped_val + skipped_eval,
    )


def read_layout(root: Path) -> Layout:
    """List both splits; any departure from the official layout is a `UserInputError`."""
    if not root.is_dir():
        raise UserInputError(f"--data {root}: no such folder; {GET_IT}")
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        nested = root / NAME / "wnids.txt"
        hint = f"; did you mean --data {root / NAME}?" if nested.is_file() else f"; {GET_IT}"
        raise UserInputError(
            f"--data {root} is not a Tiny-ImageNet-200 folder: no wnids.txt (expected "
            f"wnids.txt, train/<wnid>/images/, val/images/, val/val_annotations.txt){hint}"
        )
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    if not wnids:
        raise UserInputError(f"{wnids_file} lists no classes")
    if len(set(wnids)) != len(wnids):
        dup = next(w for w in wnids if wnids.count(w) > 1)
        raise UserInputError(f"{wnids_file} lists class {dup} twice")
    label_of = {w: i for i, w in enumerate(wnids)}
    return Layout(
        root=root,
        wnids=wnids,
        names=_class_names(root / "words.txt", wnids),
        train=_list_train(root, wnids),
        val=_list_val(root, label_of),
    )


def _class_names(words_file: Path, wnids: list[str]) -> list[str]:
    """The first name words.txt gives each class ("goldfish, Carassius auratus" ->
    "goldfish"); the wnid itself where words.txt is absent or silent."""
    names = {}
    if words_file.is_file():
        for line in words_file.read_text(errors="replace").splitlines():
            wnid, _, words = line.partition("\t")
            names[wnid.strip()] = words.split(",")[0].strip()
    return [names.get(w) or w for w in wnids]


def _list_train(root: Path, wnids: list[str]) -> Listing:
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise UserInputError(
                f"--data {root}: no folder train/{wnid}/images (wnids.txt lists {wnid}); "
                "not the official Tiny-ImageNet-200 layout"
            )
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserInputError(f"--data {root}: train/{wnid}/images holds no .JPEG images")
        files += found
        labels += [label] * len(found)
    return Listing(files, np.asarray(labels, dtype=np.int64))


def _list_val(root: Path, label_of: dict[str, int]) -> Listing:
    annotations = root / "val" / "val_annotations.txt"
    images = root / "val" / "images"
    if not annotations.is_file() or not images.is_dir():
        missing = "val/val_annotations.txt" if not annotations.is_file() else "val/images/"
        raise UserInputError(
            f"--data {root}: no {missing}; the official layout has val/images/*.JPEG and "
            "val/val_annotations.txt (a val folder sorted into class folders is not it)"
        )
    files, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise UserInputError(
                f"{annotations} line {number}: expected '<file>\\t<wnid>\\t<box>', got {line!r}"
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise UserInputError(f"{annotations} line {number}: class {wnid} is not in wnids.txt")
        files.append(images / name)
        labels.append(label_of[wnid])
    if not files:
        raise UserInputError(f"{annotations} lists no images")
    return Listing(files, np.asarray(labels, dtype=np.int64))


def _check_enough(
    layout: Layout, listing: Listing, per_class: int | None, flag: str, split: str
) -> None:
    """A clear error, naming the class, when a class has fewer images than asked for."""
    if per_class is None:
        return
    if per_class < 1:
        raise UserInputError(f"{flag} must be >= 1, got {per_class}")
    counts = np.bincount(listing.labels, minlength=len(layout.wnids))
    if counts.min() < per_class:
        worst = int(counts.argmin())
        raise UserInputError(
            f"{flag} {per_class} is more than the data has: class {layout.wnids[worst]} has "
            f"{counts[worst]} {split} images in {layout.root}; use at most {counts.min()}"
        )


def _decode(
    layout: Layout, listing: Listing, index: np.ndarray, skip_bad: bool, digest
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decode the files at `index`: uint8 [n, 3, 64, 64], labels [n], skipped count.

    Every decoded file's relative path, label and bytes go into `digest` (the data
    set's manifest hash, part of the embedding-cache key).
    """
    from PIL import Image

    images, labels, skipped = [], [], 0
    for i in index:
        path, label = listing.files[i], int(listing.labels[i])
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                rgb = img.convert("RGB")  # grey (mode L) and CMYK JPEGs -> RGB
            if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise ValueError(f"{rgb.size[0]}x{rgb.size[1]}, not {IMAGE_SIZE}x{IMAGE_SIZE}")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            if skip_bad:
                skipped += 1
                continue
            raise UserInputError(
                f"unreadable image {path} ({_reason(exc)}); replace the file or pass "
                "--skip-bad-images"
            ) from None
        digest.update(f"{path.relative_to(layout.root).as_posix()}\t{label}\n".encode())
        digest.update(hashlib.sha256(data).digest())
        images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
        labels.append(label)
    if not images:
        raise UserInputError(f"no readable images in {layout.root} for this split")
    return (
        torch.from_numpy(np.stack(images)),
        torch.tensor(labels, dtype=torch.int64),
        skipped,
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
