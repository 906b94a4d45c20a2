"""The MLflow life of one trial run, written once: open it with its tags, params and
`config.yaml`; log epochs; evaluate, save the weights and tag the status; close it
FINISHED, FAILED or KILLED. A sweep trial and the single run both go through here.

No Ray import: the single run uses it where Ray is not installed. Opening a run and
logging epochs import neither torch nor scikit-learn (a Tune trial's trainable opens its
run and stays a small process); evaluating one imports them.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jepa import metrics as M
from jepa.config import TrialConfig
from sweeps import tracking
from sweeps.mlflow_conventions import DatasetRef, log_baseline, log_dataset_input

if TYPE_CHECKING:
    import torch
    from mlflow.tracking import MlflowClient

    from jepa.features import FeatureBank
    from jepa.train import TrainResult


@contextlib.contextmanager
def trial_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    cfg: TrialConfig,
    dataset: DatasetRef | None = None,
    baseline: float | None = None,
) -> Iterator[str]:
    """An open trial run (its id): tagged `jepa.role=trial` plus `tags`, with the config
    and `params` logged, `config.yaml` attached, the data set as its dataset input and
    `baseline_probe_accuracy` (the raw backbone's test probe at the run's seed), when
    given: logged first, so a run that diverges or fails shows them too. Closed FINISHED
    when the block ends, KILLED on Ctrl-C or SystemExit, FAILED on any other exception
    (with `traceback.txt`), which is raised on."""
    run = client.create_run(
        experiment_id, run_name=run_name, tags={M.TAG_ROLE: M.ROLE_TRIAL, **tags}
    )
    run_id = run.info.run_id
    try:
        tracking.log_params(client, run_id, {**cfg.to_dict(), **params})
        tracking.log_config_yaml(client, run_id, cfg.to_dict())
        if dataset is not None:
            log_dataset_input(client, run_id, dataset)
        if baseline is not None:
            log_baseline(client, run_id, baseline)
        yield run_id
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
        try:
            tracking.log_traceback(client, run_id, exc)
            client.set_terminated(run_id, status)
        finally:
            raise
    client.set_terminated(run_id, "FINISHED")


def log_epoch(client: MlflowClient, run_id: str, row: dict[str, float]) -> None:
    """One epoch's row of `train_predictor` (its `epoch` is the step)."""
    values = {k: v for k, v in row.items() if k != M.EPOCH}
    tracking.log_metrics(client, run_id, values, step=int(row[M.EPOCH]))


# ~45 lines of code under a docstring that states what is logged: kept whole, since the
# diverged and evaluated paths must tag and return the same things.
def finish_trial(
    client: MlflowClient,
    run_id: str,
    result: TrainResult,
    bank: FeatureBank,
    cfg: TrialConfig,
    baseline: float | None = None,
    backbone_images: float | None = None,
    times: dict[str, float] | None = None,
) -> dict[str, float | str]:
    """Evaluate a trained run and log it: the scores, `probe_lift` against `baseline`
    (the raw backbone's probe at `cfg.seed`; computed here when None), the t-SNE picture,
    `predictor.pt` (by `save_predictor`), `jepa.status` and `jepa.collapse`.

    A diverged run (or non-finite weights) has nothing to probe (scikit-learn rejects
    NaN): it logs `epochs_run` and is tagged diverged; its run still ends FINISHED.
    `backbone_images`: forward passes spent on this run (default: the result's count).
    `times` gets `time_eval`. Returns the final metrics plus `jepa.status`, what a
    sweep trial reports to Tune. A `baseline` passed in was logged when the run opened
    (`trial_run`); one computed here is logged here.
    """
    from jepa.evaluate import evaluate_representation, raw_probe_accuracy
    from jepa.train import STATUS_DIVERGED, save_predictor

    predictor = result.predictor.eval().cpu()
    epochs = len(result.history)
    if result.status == STATUS_DIVERGED or not _finite(predictor):
        final: dict[str, float] = {"epochs_run": float(epochs)}
        tracking.log_metrics(client, run_id, final, step=epochs)
        tracking.set_tags(
            client, run_id, {M.TAG_STATUS: STATUS_DIVERGED, M.TAG_COLLAPSE: result.collapse}
        )
        return {**final, M.TAG_STATUS: STATUS_DIVERGED}
    with tempfile.TemporaryDirectory() as tmp:
        tsne = Path(tmp) / M.TSNE_ARTIFACT
        start = time.perf_counter()
        scores = evaluate_representation(
            predictor,
            bank,
            tsne_path=tsne,
            title=picture_title(cfg),
            seed=cfg.seed,
            status=result.status,
            epochs=epochs,
        )
        if times is not None:
            times[M.TIME_EVAL] = time.perf_counter() - start
        weights = save_predictor(predictor, cfg, Path(tmp) / M.PREDICTOR_ARTIFACT)
        client.log_artifact(run_id, str(tsne))
        client.log_artifact(run_id, str(weights))
    logged = {M.BASELINE_PROBE_ACCURACY} if baseline is not None else set()
    if baseline is None:  # e.g. a seed the sweep's baselines did not cover yet
        baseline = raw_probe_accuracy(bank, cfg.seed)
    images = result.backbone_images if backbone_images is None else backbone_images
    final = {
        **scores,
        "backbone_images": float(images),
        "epochs_run": float(epochs),
        M.BASELINE_PROBE_ACCURACY: baseline,
        M.PROBE_LIFT: scores[M.PROBE_ACCURACY] - baseline,
    }
    # The last epoch already logged its diagnostics (the same numbers) at this step; a
    # second point at the same step would make the curves ambiguous.
    last_epoch = result.history[-1] if result.history else {}
    fresh = {k: v for k, v in final.items() if k not in last_epoch and k not in logged}
    tracking.log_metrics(client, run_id, fresh, step=epochs)
    tracking.set_tags(
        client, run_id, {M.TAG_STATUS: result.status, M.TAG_COLLAPSE: result.collapse}
    )
    return {**final, M.TAG_STATUS: result.status}


def picture_title(cfg: TrialConfig) -> str:
    """The t-SNE picture's title: the config's main knobs."""
    return (
        f"w={cfg.predictor_width} d={cfg.depth} lr={cfg.lr:.2g} aug={cfg.aug_strength} "
        f"{cfg.objective}"
    )


def _finite(module: torch.nn.Module) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in module.parameters())
