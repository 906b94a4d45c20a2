"""The GPU path in one command: what `benchmarks/gpu_check.sh` runs.

Steps (each prints `== NAME`, its figures, and `ok`, `FAILED` or a `skipped` line):
1. environment: date, torch and CUDA versions, `nvidia-smi` (GPU, driver, memory);
2. bad input: several DDP ranks on one GPU (`--workers-per-trial 2 --gpus-per-trial 0.5`)
   is refused with exit 2 before anything starts;
3. single run, demo data: embedding bank, 2 epochs of training and the evaluation
   (probe, kNN, t-SNE picture) on the device, in this process with the library
   functions `python -m jepa.train` calls (and that command itself when MLflow
   is installed);
4. generated data: an I-JEPA-format checkpoint (ViT-H/14 with random weights on a GPU,
   a ViT-tiny on the CPU) and a Tiny-ImageNet-format folder;
5. single run on them: bank, 2 epochs, evaluation, the GPU's peak memory;
6. Ray: a 4-trial sweep at `--gpus-per-trial 0.25` on the generated data, the GPU
   memory that Ray's idle workers still hold afterwards, and one trial with
   `--workers-per-trial 2 --gpus-per-trial 0.5` (needs a GPU, Ray and MLflow);
7. `benchmarks/extract_throughput.py` on the generated checkpoint: images/s, % of the
   bf16 peak, peak memory.

Without a GPU the device is the CPU, the GPU-only steps print `no GPU: skipped: ...`,
and the rest runs small; exit 0 when nothing that ran failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jepa import metrics as M  # noqa: E402
from jepa.config import TrialConfig  # noqa: E402
from jepa.data import DatasetSpec, load_dataset  # noqa: E402
from jepa.evaluate import evaluate_representation  # noqa: E402
from jepa.features import compute_bank  # noqa: E402
from jepa.train import EvalSet, train_predictor  # noqa: E402
from jepa.views import CachedViewPairs  # noqa: E402

FAILED: list[str] = []


def step(name: str, fn: Callable[[], None]) -> None:
    print(f"\n== {name}", flush=True)
    start = time.perf_counter()
    try:
        fn()
        print(f"ok ({time.perf_counter() - start:.1f}s)", flush=True)
    except Exception:
        traceback.print_exc()
        print(f"FAILED: {name}", flush=True)
        FAILED.append(name)


def skipped(why: str) -> None:
    print(f"skipped: {why}", flush=True)


def have(module: str) -> bool:
    """Installed, not merely a folder of that name on the path: this project's `mlflow/`
    (server scripts, no `__init__.py`) is a namespace package to `find_spec`, which made
    MLflow look installed on a machine without it (origin None)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        return False
    return spec is not None and spec.origin is not None


def sh(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": _pythonpath(), **(env or {})},
    )
    out = (proc.stdout + proc.stderr).strip()
    print("\n".join(out.splitlines()[-25:]), flush=True)
    print(f"(exit {proc.returncode})", flush=True)
    return proc


def _pythonpath() -> str:
    """This project first, then what the caller had (carried wheels, say)."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([str(ROOT), *rest])


def gpu_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    return f", peak GPU memory {peak:.2f} GiB allocated"


# --- steps ---------------------------------------------------------------------------------


def environment(device: torch.device) -> None:
    now = datetime.datetime.now(datetime.UTC)
    print(f"date: {now:%Y-%m-%d %H:%M} UTC, host {socket.gethostname()}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"torch.cuda.is_available(): {torch.cuda.is_available()}; device: {device}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        memory = props.total_memory / 2**30
        print(f"GPU: {props.name}, {memory:.0f} GiB, {props.multi_processor_count} SMs")
    for pkg in ("ray", "mlflow", "optuna", "openTSNE", "timm", "torchvision"):
        print(f"  {pkg}: {'installed' if have(pkg) else 'not installed'}")
    shm = Path("/dev/shm")
    if shm.is_dir():
        print(f"/dev/shm: {shutil.disk_usage(shm).free / 2**30:.1f} GiB free")
    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi: not found (no GPU: skipped)")
        return
    sh(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,memory.used",
            "--format=csv",
        ],
        timeout=60,
    )


def several_workers_on_one_gpu() -> None:
    argv = ["--workers-per-trial", "2", "--gpus-per-trial", "0.5"]
    if have("ray") and have("mlflow") and have("optuna"):
        with tempfile.TemporaryDirectory() as tmp:
            proc = sh(
                [sys.executable, "sweeps/run.py", "--space", "predictor_width", *argv]
                + _store_flags(Path(tmp)),
                timeout=300,
                env={"RAY_ADDRESS": ""},
            )
        assert proc.returncode == 2, "expected exit 2 (bad input)"
        return
    from jepa.errors import UserInputError
    from sweeps.gpus import check_gpu_sharing

    print("(Ray or MLflow not installed: the check sweeps/run.py runs first, in process)")
    try:
        check_gpu_sharing(2, 0.5)
    except UserInputError as exc:
        print(f"error: {exc}")
        return
    raise AssertionError("several workers on one GPU were accepted")


def single_run(device: torch.device, dataset, backbone, out: Path, label: str) -> None:
    """What `python -m jepa.train` does, without MLflow: bank, 2 epochs, evaluation."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    bank = compute_bank(backbone, dataset, aug_strength=0.5, n_views=2, seed=0, device=device)
    bank_s = time.perf_counter() - start
    print(
        f"bank: {bank.images_embedded} images through {backbone.description} in {bank_s:.1f}s "
        f"({bank.images_embedded / bank_s:.0f} images/s, loader start included)"
    )
    cfg = TrialConfig(max_epochs=2, objective="vicreg", seed=0)
    evalset = EvalSet(bank.train_clean, bank.train_labels, bank.val_clean, bank.val_labels)
    start = time.perf_counter()
    result = train_predictor(cfg, CachedViewPairs(bank.views), evalset, device=device)
    train_s = time.perf_counter() - start
    for row in result.history:
        print("  " + " ".join(f"{k}={v:.4g}" for k, v in row.items()))
    assert next(result.predictor.parameters()).device.type == device.type
    start = time.perf_counter()
    picture = out / f"tsne_{label}.png" if have("openTSNE") else None
    if picture is None:
        print("t-SNE picture skipped: openTSNE is not installed on this machine")
    baseline = evaluate_representation(None, bank, seed=0)[M.PROBE_ACCURACY]
    scores = evaluate_representation(result.predictor, bank, tsne_path=picture, seed=0)
    eval_s = time.perf_counter() - start
    print(
        f"status={result.status} epochs={len(result.history)} train {train_s:.1f}s, "
        f"evaluation {eval_s:.1f}s{gpu_memory(device)}"
    )
    print(
        f"probe_accuracy={scores[M.PROBE_ACCURACY]:.4f} (backbone {baseline:.4f}) "
        f"knn_accuracy={scores[M.KNN_ACCURACY]:.4f} "
        f"effective_rank={scores[M.EFFECTIVE_RANK]:.2f}"
        + (f"; picture {picture} ({picture.stat().st_size} bytes)" if picture else "")
    )


def train_cli(device: torch.device, tmp: Path) -> None:
    proc = sh(
        [
            sys.executable,
            "-m",
            "jepa.train",
            "--device",
            str(device),
            "--max-epochs",
            "2",
            "--data",
            "digits",
            "--images-per-class",
            "30",
            "--eval-per-class",
            "10",
            "--views",
            "2",
            "--tracking-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--cache-dir",
            str(tmp / "cache"),
        ],
        timeout=600,
    )
    assert proc.returncode == 0, "python -m jepa.train failed"


def write_checkpoint(path: Path, huge: bool, device: torch.device) -> None:
    """An I-JEPA checkpoint of random weights in the file format of I-JEPA's
    `save_checkpoint` (tests/test_ijepa.py's reference ViT and writer)."""
    from tests.test_ijepa import RefPredictor, RefViT, write_ijepa_checkpoint

    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):  # initialising 632M parameters on the CPU takes a while
        if huge:
            encoder = RefViT(img=224, patch=14, dim=1280, depth=32, heads=16).eval()
            predictor = RefPredictor(1280, 384, tokens=256, depth=1, heads=12)
        else:
            encoder = RefViT(img=32, patch=8, dim=192, depth=2, heads=3).eval()
            predictor = RefPredictor(192, 96, tokens=16, depth=1, heads=3)
    # The target encoder shares the encoder's tensors: stored once (~2.6 GB for ViT-H).
    write_ijepa_checkpoint(path, encoder, encoder, predictor, optimizer_step=False)
    del encoder, predictor
    if device.type == "cuda":
        torch.cuda.empty_cache()
    size = path.stat().st_size / 2**30
    print(f"{path.name}: {size:.2f} GiB written in {time.perf_counter() - start:.1f}s")


def write_tiny_imagenet(root: Path, classes: int, train: int, val: int) -> None:
    """A folder in the official Tiny-ImageNet-200 layout: 64x64 JPEGs whose colour and
    texture depend on the class, so that a probe has something to find."""
    from PIL import Image

    rng = np.random.default_rng(0)
    wnids = [f"n{i:08d}" for i in range(classes)]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (root / "words.txt").write_text("".join(f"{w}\tclass {i}\n" for i, w in enumerate(wnids)))
    base = rng.integers(0, 256, (classes, 3))

    def image(label: int) -> Image.Image:
        noise = rng.normal(0, 40, (64, 64, 3))
        stripes = 60 * np.sin(np.arange(64) * (label + 1) / 4)[None, :, None]
        pixels = np.clip(base[label] + noise + stripes, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels)

    lines = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(train):
            image(label).save(folder / f"{wnid}_{i}.JPEG", quality=90)
        for i in range(val):
            name = f"val_{label}_{i}.JPEG"
            image(label).save(root / "val" / "images" / name, quality=90)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    print(f"{root}: {classes} classes, {train} train and {val} val images each")


def _store_flags(tmp: Path) -> list[str]:
    return [
        "--tracking-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--storage",
        str(tmp / "ray_results"),
        "--cache-dir",
        str(tmp / "cache"),
    ]


def ray_checks(checkpoint: Path, data: Path, tmp: Path) -> None:
    """4 trials sharing the GPU, what idle Ray workers hold afterwards, and the DDP case."""
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = "6391"
    address = f"127.0.0.1:{port}"
    try:
        proc = sh(
            [ray_bin, "start", "--head", f"--port={port}", "--num-gpus=1", "--disable-usage-stats"],
            120,
        )
        assert proc.returncode == 0, "ray start failed (its logs: /tmp/ray/session_latest/logs)"
        data_flags = ["--checkpoint", str(checkpoint), "--data", str(data)]
        data_flags += ["--images-per-class", "10", "--val-per-class", "5"]
        data_flags += ["--eval-per-class", "5"]
        proc = sh(
            [sys.executable, "sweeps/run.py", "--space", "predictor_width"]
            + ["--num-samples", "4", "--max-epochs", "2", "--gpus-per-trial", "0.25"]
            + ["--address", address, *data_flags, *_store_flags(tmp / "sweep")],
            timeout=420,
        )
        assert proc.returncode == 0, "the 4-trial sweep failed"
        time.sleep(5)
        print("GPU memory held now, the sweep over and the cluster idle:")
        sh(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"], 60)
        proc = sh(
            [sys.executable, "sweeps/run.py", "--space", "predictor_width"]
            + ["--num-samples", "1", "--max-epochs", "2"]
            + ["--workers-per-trial", "2", "--gpus-per-trial", "0.5"]
            + ["--address", address, *data_flags, *_store_flags(tmp / "ddp")],
            timeout=300,
        )
        assert proc.returncode == 2, "several workers on one GPU: expected exit 2"
    finally:
        # `ray stop` takes no address: it stops every Ray process on this machine (a
        # failed `ray start` leaves its GCS running too), which is why this step is for
        # a machine of its own.
        sh([ray_bin, "stop"], 120)


def extraction(checkpoint: Path, device: torch.device) -> None:
    cmd = [sys.executable, "benchmarks/extract_throughput.py", "--checkpoint", str(checkpoint)]
    if device.type != "cuda":
        cmd += ["--device", "cpu", "--batch-size", "8", "--batches", "2"]
        cmd += ["--pipeline-images", "16", "--workers", "0"]
    proc = sh(cmd, timeout=600)
    assert proc.returncode == 0, "extract_throughput.py failed"


# The parts `--only` selects, in the order they run.
PARTS = ("bad-input", "demo", "train-cli", "generated", "ray", "extraction")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="folder for the t-SNE pictures (default: temp)")
    p.add_argument(
        "--only",
        default=",".join(PARTS),
        help="comma-separated parts to run, of: %(default)s (device time is scarce: run "
        "only what changed); the generated checkpoint and folder are made when a part needs them",
    )
    args = p.parse_args(argv)
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if only - set(PARTS):
        p.error(f"--only: unknown part(s) {sorted(only - set(PARTS))}; known: {', '.join(PARTS)}")
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp_name:
        tmp = Path(tmp_name)
        out = Path(args.out) if args.out else tmp
        out.mkdir(parents=True, exist_ok=True)
        step("environment", lambda: environment(device))
        if not on_gpu:
            print("no GPU: skipped: everything on cuda; the steps below run small on the CPU")
        if "bad-input" in only:
            step("bad input: several DDP ranks on one GPU", several_workers_on_one_gpu)

        def demo() -> None:
            from jepa.backbones import BackboneSpec, build_backbone

            data = load_dataset(
                DatasetSpec(source="digits", images_per_class=30, eval_per_class=10)
            )
            single_run(device, data, build_backbone(BackboneSpec()), out, "demo")

        if "demo" in only:
            step(f"single run on {device}, demo data, 2 epochs (in process)", demo)
        # `python -m jepa.train` needs MLflow, not Ray.
        missing = [m for m in ("mlflow",) if not have(m)]
        if "train-cli" not in only:
            pass  # not asked for
        elif not missing:
            step(f"python -m jepa.train on {device}, 2 epochs", lambda: train_cli(device, tmp))
        else:
            verb = "is" if len(missing) == 1 else "are"
            why = f"{' and '.join(missing)} {verb} not installed on this machine"
            print(f"\n== python -m jepa.train\nskipped: {why}")

        checkpoint = tmp / ("IN1K-vit.h.14-300e.pth.tar" if on_gpu else "vit-tiny-test.pth.tar")
        data = tmp / "tiny-imagenet-200"
        if only & {"generated", "ray", "extraction"}:
            step(
                "generated I-JEPA checkpoint (ViT-H/14)"
                if on_gpu
                else "generated I-JEPA checkpoint (no GPU: skipped: ViT-H/14; a ViT-tiny instead)",
                lambda: write_checkpoint(checkpoint, on_gpu, device),
            )
            step("generated Tiny-ImageNet folder", lambda: write_tiny_imagenet(data, 20, 15, 5))

        def generated() -> None:
            from jepa.backbones import IJEPA, BackboneSpec, build_backbone

            start = time.perf_counter()
            backbone = build_backbone(BackboneSpec(name=IJEPA, checkpoint=str(checkpoint)))
            print(f"loaded {backbone.description} in {time.perf_counter() - start:.1f}s")
            dataset = load_dataset(
                DatasetSpec(
                    source=str(data), images_per_class=10, val_per_class=5, eval_per_class=5
                )
            )
            single_run(device, dataset, backbone, out, "generated")
            del backbone
            if on_gpu:
                torch.cuda.empty_cache()

        if "generated" in only:
            step(f"single run on {device}, generated checkpoint and data, 2 epochs", generated)

        if "ray" in only:
            print(
                "\n== Ray: 4 trials at --gpus-per-trial 0.25, idle workers' GPU memory, DDP trial"
            )
            if not on_gpu:
                print("no GPU: skipped", flush=True)
            elif not (have("ray") and have("mlflow") and have("optuna")):
                missing = [m for m in ("ray", "mlflow", "optuna") if not have(m)]
                verb = "is" if len(missing) == 1 else "are"
                skipped(f"{' and '.join(missing)} {verb} not installed on this machine")
            else:
                step("Ray checks", lambda: ray_checks(checkpoint, data, tmp))

        if "extraction" in only:
            step(
                "extraction throughput"
                + ("" if on_gpu else " (no GPU: skipped: ViT-H/14; ViT-tiny)"),
                lambda: extraction(checkpoint, device),
            )
    print(f"\nFAILED: {', '.join(FAILED)}" if FAILED else "\nall steps that ran passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
