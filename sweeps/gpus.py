"""Flag checks about GPUs that need neither Ray nor a GPU (run before anything starts)."""

from __future__ import annotations

from jepa.errors import UserInputError
from sweeps.spaces import SearchSpace


def check_gpu_sharing(workers_per_trial: int, gpus_per_trial: float) -> None:
    """Several DDP ranks of a trial must not share a GPU.

    Ray Train gives each of W workers gpus_per_trial / W of a GPU; below one whole GPU
    per rank Ray may place two ranks on the same device, and Train's default backend,
    NCCL, refuses that ("Duplicate GPU detected"), after the sweep has started. A gloo
    fallback would run, but it would be DDP across processes that share one GPU: slower
    than one worker on it. So it is bad input, said before anything starts.
    """
    if workers_per_trial <= 1 or gpus_per_trial <= 0:
        return
    share = gpus_per_trial / workers_per_trial
    if share < 1 or share != int(share):
        raise UserInputError(
            f"--workers-per-trial {workers_per_trial} --gpus-per-trial {gpus_per_trial:g} "
            f"gives each DDP rank {share:g} of a GPU, and ranks that share a GPU fail in "
            "NCCL (Duplicate GPU detected); give every rank whole GPUs (--gpus-per-trial "
            f"{workers_per_trial}) or train on one worker (--workers-per-trial 1)"
        )


def check_gpu_banks(space: SearchSpace, gpus_per_trial: float, feature_cache: bool) -> None:
    """With GPUs and the embedding cache, each augmentation level's bank is computed on a
    GPU before the trials' pool takes the GPUs (`Sweep.compute_banks`): a swept
    aug_strength must be a choice of levels, known before the sweep starts."""
    swept = "aug_strength" in space.params
    if gpus_per_trial > 0 and feature_cache and swept and space.levels("aug_strength") is None:
        raise UserInputError(
            f"--space {space.name}: with --gpus-per-trial and the embedding cache, "
            "aug_strength must be a choice of levels (each level's bank is computed on the "
            "GPU before the trials start); or --feature-cache off"
        )
