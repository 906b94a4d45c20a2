"""`python -m jepa.data download tiny-imagenet`: fetch, check and unpack the data set.

Only this command downloads anything, and only when the user runs it. The archive's
md5 is checked before anything is unpacked; the folder appears under DEST only once it
is complete (unpacked beside it, then renamed). Offline it exits 2 and says where to
put the files by hand. `--zip FILE` does the same from an archive fetched elsewhere.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from jepa.errors import UserInputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = PROJECT_ROOT / "data"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
CHUNK = 1 << 20


def by_hand(dest: Path, url: str) -> str:
    """Where the files go when the command cannot fetch them."""
    return (
        f"download {url} on a machine with internet, check its md5 is {TINY_IMAGENET_MD5}, "
        f"and unzip it into {dest} so that {dest / TINY_IMAGENET_FOLDER / 'wnids.txt'} exists "
        "(or run this command with --zip FILE)"
    )


def download_tiny_imagenet(
    dest: Path = DEFAULT_DEST,
    url: str = TINY_IMAGENET_URL,
    md5: str = TINY_IMAGENET_MD5,
    zip_file: Path | None = None,
    timeout: float = 30.0,
    force: bool = False,
) -> Path:
    """Download (or take `zip_file`), check the md5, unpack; returns the data folder."""
    dest = Path(dest)
    target = dest / TINY_IMAGENET_FOLDER
    if (target / "wnids.txt").is_file() and not force:
        print(f"{target} is already there (--force to replace it)")
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"--dest {dest} cannot be created ({exc.strerror})") from None
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(zip_file) if zip_file else Path(tmp) / "tiny-imagenet-200.zip"
        if zip_file is None:
            fetch(url, archive, timeout, dest)
        elif not archive.is_file():
            raise UserInputError(f"--zip {archive}: no such file")
        found = file_md5(archive)
        if found != md5:
            raise UserInputError(
                f"{archive if zip_file else url}: md5 {found}, expected {md5}; the archive "
                "is damaged or not the official one: fetch it again"
            )
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)  # zipfile drops absolute and '..' members
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserInputError(f"cannot unpack {archive}: {exc}") from None
        folder = unpacked / TINY_IMAGENET_FOLDER
        if not (folder / "wnids.txt").is_file():
            raise UserInputError(f"{archive} holds no {TINY_IMAGENET_FOLDER}/wnids.txt")
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    print(f"Tiny-ImageNet-200 is in {target}")
    return target


def fetch(url: str, path: Path, timeout: float, dest: Path) -> None:
    """Stream `url` to `path`, printing progress every ~10%."""
    print(f"downloading {url}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, 0.1
            while block := response.read(CHUNK):
                f.write(block)
                done += len(block)
                if total and done / total >= next_report:
                    print(f"  {done / 2**20:.0f} / {total / 2**20:.0f} MB", flush=True)
                    next_report += 0.1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserInputError(
            f"cannot download {url} ({reason}); offline? {by_hand(dest, url)}"
        ) from None


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jepa.data",
        description="Fetch data sets the platform uses (nothing else ever downloads).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="download, check and unpack a data set")
    dl.add_argument("dataset", choices=["tiny-imagenet"])
    dl.add_argument(
        "--dest",
        default=str(DEFAULT_DEST),
        help="folder that gets tiny-imagenet-200/ (default: data/ at the project root, "
        "where sweeps/run.py looks)",
    )
    dl.add_argument("--url", default=TINY_IMAGENET_URL, help="where the archive is")
    dl.add_argument("--md5", default=TINY_IMAGENET_MD5, help="the archive's expected md5")
    dl.add_argument("--zip", default=None, help="use this archive instead of downloading")
    dl.add_argument("--timeout", type=float, default=30.0, help="network timeout, seconds")
    dl.add_argument("--force", action="store_true", help="replace an existing folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        download_tiny_imagenet(
            dest=Path(args.dest),
            url=args.url,
            md5=args.md5,
            zip_file=Path(args.zip) if args.zip else None,
            timeout=args.timeout,
            force=args.force,
        )
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
