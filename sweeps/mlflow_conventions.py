"""MLflow's own conventions for what a sweep logs, so that the UI's columns mean something.

- `log_dataset_input`: the data set as an MLflow dataset input (name, digest, source,
  the splits' sizes as its profile), which fills the runs table's Dataset column;
- `log_baseline`: `baseline_probe_accuracy` on a trial run, so that the raw backbone
  sits beside the trial in the runs table and in Compare;
- `log_registered_predictor`: a predictor as an MLflow model (`mlflow.pytorch`, with an
  input example and the signature inferred from it), registered as a new version of
  `jepa-predictor` and so loadable by `mlflow.pytorch.load_model("models:/jepa-predictor/N")`;
- `lift_claim`: the sweep's answer in words: does the best config beat the baseline on
  the test split, by how much, with what interval;
- `runs_view_url`: the MLflow UI's runs view of one sweep's trials, sorted by the
  search metric, for the store the sweep used; `closing_lines`: the sweep's last lines;
- `parent_note`: the parent run's markdown description (`mlflow.note.content`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from jepa import metrics as M
from sweeps import tracking
from sweeps.stats import Interval

if TYPE_CHECKING:  # torch only where a model is logged: a trial's trainable opens runs
    import torch

    from jepa.splits import DatasetSpec, ImageDataset

REGISTERED_MODEL = "jepa-predictor"
MODEL_NAME = "predictor"
"""The logged model's name within its run (MLflow 3 `name=`)."""
NOTE_TAG = "mlflow.note.content"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # MLflow's own key: the UI shows it as a badge
DIGEST_CHARS = 12
"""The runs table shows the digest in full beside the name, in a column that pushes the
metrics right: 12 hex digits (48 bits) tell data set versions apart and keep it narrow."""
# mlflow/serve.sh's defaults: the UI over a local store is served there.
UI_HOST = "127.0.0.1"
UI_PORT = "5000"


@dataclass(frozen=True)
class DatasetRef:
    """A data set as MLflow records it."""

    name: str
    """What the Dataset column says: `digits` or the folder's name."""
    digest: str
    """`ImageDataset.manifest_hash` (SHA-256 over the loaded files and labels), shortened."""
    source: str
    """Where it came from: the demo's name or the data folder's absolute path."""
    source_type: str
    """`code` for the built-in demo, `local` for a folder."""
    sizes: dict[str, int]
    """Images per split: {"train": N, "val": K, "test": M}."""

    @classmethod
    def of(
        cls, name: str, manifest_hash: str, source: str, sizes: dict[str, int], demo: bool
    ) -> DatasetRef:
        """From what `jepa.data.load_dataset` returns: `DatasetRef.of(ds.name,
        ds.manifest_hash, spec.source, {"train": len(ds.train_labels), ...}, spec.is_demo)`."""
        source = source if demo else os.path.abspath(source)
        return cls(name, manifest_hash[:DIGEST_CHARS], source, "code" if demo else "local", sizes)

    @classmethod
    def of_loaded(cls, dataset: ImageDataset, spec: DatasetSpec) -> DatasetRef:
        """From a loaded data set and the spec it was loaded by."""
        sizes = {
            "train": len(dataset.train_labels),
            "val": len(dataset.val_labels),
            "test": len(dataset.eval_labels),
        }
        return cls.of(dataset.name, dataset.manifest_hash, spec.source, sizes, spec.is_demo)


def log_dataset_input(client, run_id: str, dataset: DatasetRef, context: str = "train") -> None:
    """Add `dataset` to the run's inputs (the Dataset column of the runs table).

    Through the client, not `mlflow.log_input`, which needs the process's active run: a
    trial logs from its Ray worker to a run it did not start there.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    entity = Dataset(
        name=dataset.name,
        digest=dataset.digest,
        source_type=dataset.source_type,
        source=json.dumps({"uri": dataset.source}),
        profile=json.dumps(dataset.sizes),
    )
    tags = [InputTag(DATASET_CONTEXT_TAG, context)]
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])


def log_baseline(client, run_id: str, baseline_probe_accuracy: float, step: int = 0) -> None:
    """`baseline_probe_accuracy` (the raw backbone's test probe at the trial's seed) on
    a trial run, logged when the trial starts: a trial that later diverges or fails
    still shows its baseline beside it."""
    tracking.log_metrics(
        client, run_id, {M.BASELINE_PROBE_ACCURACY: float(baseline_probe_accuracy)}, step=step
    )


URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
CHECK_ON_CPU = {"MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}
"""The device MLflow's pyfunc loader uses when no `model_config` names one."""


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """`mlflow.pytorch.log_model` reads the global tracking and registry URIs; set them
    for the call only. `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into
    the environment (which `tracking.default_tracking_uri` reads): both are restored."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    import mlflow

    saved_env = {k: os.environ.get(k) for k in URI_ENV}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class RegisteredPredictor:
    model_uri: str
    """`models:/jepa-predictor/<version>`."""
    version: int
    model_id: str
    """MLflow 3's logged-model id (the runs table's Models column links it)."""


def log_registered_predictor(
    tracking_uri: str,
    run_id: str,
    predictor: torch.nn.Module,
    input_example: np.ndarray,
    name: str = REGISTERED_MODEL,
) -> RegisteredPredictor:
    """Log `predictor` (a module mapping [N, D] -> [N, D] float32) as an MLflow model on
    run `run_id` and register it as a new version of `name`.

    `input_example` [n, D] float32 (a few of the test split's backbone embeddings) goes
    with the model; MLflow infers the signature from it and checks that the model
    runs on it, on the CPU (`CHECK_ON_CPU`). The module is logged in eval mode on the
    CPU, as it is served; the exported program takes any batch size.
    """
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    module = predictor.eval().cpu()
    example = np.asarray(input_example, dtype=np.float32)
    # The logged model is created here, in the run's experiment: left to log_model, it
    # would go to the process's active experiment (Default, id 0, whose artifacts a
    # sqlite store keeps in ./mlruns of the working directory).
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    model = client.create_logged_model(
        experiment_id=run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id
    )
    # MLflow checks the input example by loading the logged program through pyfunc, which
    # picks `cuda` wherever a GPU is visible; a program exported from CPU weights cannot
    # load there (MLflow warned so on every sweep on the H200). Check it where it is
    # served: on the CPU.
    with _tracking_uri(tracking_uri), tracking.scoped_environ(CHECK_ON_CPU):
        info = mlflow.pytorch.log_model(
            module,
            name=MODEL_NAME,
            model_id=model.model_id,
            input_example=example,
            registered_model_name=name,
            run_id=run_id,
            # A torch.export program traced on the example (MLflow 3's default outside
            # Databricks, pinned here): loading it needs no code of this project, where
            # a pickle would need `jepa.predictor` importable.
            serialization_format="pt2",
            # Stated, not inferred: inference imports the model in a subprocess (~5 s).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        )
    version = int(info.registered_model_version)
    return RegisteredPredictor(f"models:/{name}/{version}", version, info.model_id)


def lift_claim(lift: Interval | None) -> str | None:
    """The answer to "does the best config beat the raw backbone on test, by how much,
    and is it beyond noise" in one sentence, following the interval of the paired lift
    (`ConfigStats.lift`: its test score minus the raw backbone's, seed by seed): a claim
    only when the 95% interval excludes 0. None when no lift was measured."""
    if lift is None:
        return None
    by = f"{lift.mean:+.4f}"
    if not lift.has_interval:
        return (
            f"Lift over the raw backbone on test: {by} from 1 seed: no interval, so it "
            "cannot be told from noise; rerun with --seeds 3 or more."
        )
    interval = f"{by} [{lift.low:+.4f}, {lift.high:+.4f}] (95% t interval, {lift.n} seeds paired)"
    if lift.low > 0:
        return f"Yes: it beats the raw backbone on test by {interval}; the interval excludes 0."
    if lift.high < 0:
        return f"No: it is worse than the raw backbone on test by {interval}."
    return (
        f"Not beyond noise: its lift over the raw backbone on test is {interval}, "
        "an interval that includes 0."
    )


def runs_view_url(tracking_uri: str, experiment_id: str, parent_run_id: str) -> str:
    """The MLflow UI's runs view of one sweep: its trial runs (the parent's children,
    role trial), best search metric first.

    The query parameters are the MLflow 3 UI's own (`searchFilter`, `orderByKey`,
    `orderByAsc` on the hash route `#/experiments/<id>/runs`, read from its bundle's
    experiment-page URL state). A local store (sqlite, file) is served by
    `mlflow/serve.sh` on MLFLOW_UI_HOST:MLFLOW_UI_PORT (127.0.0.1:5000); an HTTP store is
    its own UI.
    """
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
    else:
        host = os.environ.get("MLFLOW_UI_HOST", UI_HOST)
        host = UI_HOST if host in ("0.0.0.0", "::") else host
        base = f"http://{host}:{os.environ.get('MLFLOW_UI_PORT', UI_PORT)}"
    search = trial_filter(parent_run_id)
    order = f"metrics.`{M.SEARCH_METRIC}`"
    query = f"searchFilter={quote(search, safe='')}&orderByKey={quote(order, safe='')}"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}&orderByAsc=false"


def closing_lines(
    verdict: Sequence[str],
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    dashboard_command: str | None = None,
) -> list[str]:
    """The sweep's last printed lines: the verdict, then where to see the comparison
    (the runs view of this sweep's trials; for a local store, the command that serves
    the UI first) and, with an on-disk study, the optuna-dashboard command."""
    url = runs_view_url(tracking_uri, experiment_id, parent_run_id)
    out = [*verdict, f"Compare the trials, best first: {url}"]
    if not tracking_uri.startswith(("http://", "https://")):
        out.append(f"  (serve the MLflow UI first: {tracking.ui_command(tracking_uri)})")
    if dashboard_command:
        out.append(f"Optuna's study (history, slices, importances): {dashboard_command}")
    return out


def trial_filter(parent_run_id: str) -> str:
    """MLflow's search filter for one sweep's trial runs (what `sweeps.summary` reads)."""
    return f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{M.TAG_ROLE}` = '{M.ROLE_TRIAL}'"


def parent_note(
    space_name: str,
    verdict: Sequence[str],
    table: Sequence[str],
    pictures: Sequence[str],
    runs_url: str | None = None,
    dashboard_command: str | None = None,
) -> str:
    """The parent run's markdown description: the verdict, the per-config table (as the
    sweep prints it), the pictures' names, and where to look further."""
    out = [f"## Sweep `{space_name}`: the answer", ""]
    out += [f"- {line}" for line in verdict]
    out += ["", f"## Configs (chosen on `{M.SEARCH_METRIC}`)", "", "```"]
    out += [line for line in table if line.strip() or out[-1] != "```"]
    out += ["```", ""]
    if pictures:
        out += ["## Pictures (artifacts of this run)", ""]
        out += [f"- `{name}`" for name in pictures]
        out.append("")
    if runs_url:
        out += [f"Trials in the MLflow UI, best first: [{runs_url}]({runs_url})", ""]
    if dashboard_command:
        out += [f"Optuna's study: `{dashboard_command}`", ""]
    return "\n".join(out)


def log_parent_note(client, parent_run_id: str, note: str) -> None:
    tracking.set_tags(client, parent_run_id, {NOTE_TAG: note})
