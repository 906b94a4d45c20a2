"""sweeps/mlflow_conventions.py against a real sqlite MLflow store in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch

from jepa import metrics as M
from jepa.predictor import HierarchicalPredictor
from sweeps import mlflow_conventions as C
from sweeps import tracking
from sweeps.stats import mean_interval


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "conventions")
    return uri, experiment_id, tracking.client(uri)


def test_dataset_input_fills_the_dataset_column(store, tmp_path):
    uri, experiment_id, client = store
    run = client.create_run(experiment_id)
    ref = C.DatasetRef.of(
        "digits", "ab" * 32, "digits", {"train": 100, "val": 20, "test": 30}, True
    )
    C.log_dataset_input(client, run.info.run_id, ref)
    folder = C.DatasetRef.of("tiny", "cd" * 32, str(tmp_path), {"train": 1}, False)
    C.log_dataset_input(client, run.info.run_id, folder, context="eval")
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    assert set(by_name) == {"digits", "tiny"}
    demo = by_name["digits"]
    assert demo.dataset.digest == "ab" * 6  # shortened to DIGEST_CHARS
    assert demo.dataset.source_type == "code"
    assert '"train": 100' in demo.dataset.profile
    assert {t.key: t.value for t in demo.tags}[C.DATASET_CONTEXT_TAG] == "train"
    assert str(tmp_path) in by_name["tiny"].dataset.source


def test_baseline_is_a_metric_of_the_trial_run(store):
    _, experiment_id, client = store
    run = client.create_run(experiment_id)
    C.log_baseline(client, run.info.run_id, 0.8125)
    assert client.get_run(run.info.run_id).data.metrics[M.BASELINE_PROBE_ACCURACY] == 0.8125


def test_registered_predictor_loads_back_with_the_same_outputs(store, tmp_path):
    import mlflow.pytorch

    uri, experiment_id, client = store
    run = client.create_run(experiment_id)
    torch.manual_seed(0)
    predictor = HierarchicalPredictor(16, width=8).eval()
    example = torch.randn(4, 16).numpy()
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    first = C.log_registered_predictor(uri, run.info.run_id, predictor, example)
    second = C.log_registered_predictor(uri, run.info.run_id, predictor, example)
    assert (first.version, second.version) == (1, 2)  # a new version each time
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # global state restored
    versions = client.search_model_versions(f"name = '{C.REGISTERED_MODEL}'")
    assert {v.run_id for v in versions} == {run.info.run_id}
    # In the run's experiment, beside the store (not ./mlruns of the working directory).
    logged = client.get_logged_model(second.model_id)
    assert logged.experiment_id == experiment_id and logged.source_run_id == run.info.run_id
    assert logged.artifact_location.startswith((tmp_path / "artifacts").as_uri())
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        loaded = mlflow.pytorch.load_model(f"models:/{C.REGISTERED_MODEL}/{second.version}")
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    # An exported program, not a pickle: loading it needs no code of this project.
    folder = Path(urlsplit(logged.artifact_location).path)
    assert (folder / "data" / "model.pt2").is_file(), sorted(folder.rglob("*"))
    x = torch.from_numpy(example)
    with torch.no_grad():
        assert torch.equal(loaded(x), predictor(x))
        other = torch.randn(7, 16)  # another batch size than the example's
        assert torch.allclose(loaded(other), predictor(other), atol=1e-6)


def test_runs_view_url_uses_the_ui_query_parameters(monkeypatch):
    monkeypatch.delenv("MLFLOW_UI_PORT", raising=False)
    monkeypatch.delenv("MLFLOW_UI_HOST", raising=False)
    url = C.runs_view_url("sqlite:////tmp/x/mlflow.db", "7", "abc123")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://127.0.0.1:5000"
    route, _, query = parts.fragment.partition("?")
    assert route == "/experiments/7/runs"
    q = parse_qs(query)
    assert q["searchFilter"] == [C.trial_filter("abc123")]
    assert q["orderByKey"] == [f"metrics.`{M.SEARCH_METRIC}`"]
    assert q["orderByAsc"] == ["false"]
    monkeypatch.setenv("MLFLOW_UI_PORT", "5001")
    assert C.runs_view_url("sqlite:///a.db", "1", "r").startswith("http://127.0.0.1:5001/#/")
    assert C.runs_view_url("http://team:5000/", "1", "r").startswith("http://team:5000/#/")


def test_trial_filter_finds_exactly_the_sweeps_trials(store):
    _, experiment_id, client = store
    parent = client.create_run(experiment_id).info.run_id
    trial = client.create_run(
        experiment_id, tags={"mlflow.parentRunId": parent, M.TAG_ROLE: M.ROLE_TRIAL}
    ).info.run_id
    client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, M.TAG_ROLE: "baseline"})
    client.create_run(experiment_id, tags={"mlflow.parentRunId": "other", M.TAG_ROLE: "trial"})
    found = client.search_runs([experiment_id], filter_string=C.trial_filter(parent))
    assert [r.info.run_id for r in found] == [trial]


def test_the_claim_follows_the_interval():
    beats = C.lift_claim(mean_interval([0.04, 0.05, 0.06]))
    assert beats.startswith("Yes") and "+0.0500 [" in beats
    assert C.lift_claim(mean_interval([-0.01, 0.02, 0.01])).startswith("Not beyond noise")
    assert C.lift_claim(mean_interval([-0.05, -0.06, -0.04])).startswith("No:")
    assert "1 seed" in C.lift_claim(mean_interval([0.05]))
    assert C.lift_claim(None) is None


def test_parent_note_holds_verdict_table_and_pictures(store):
    _, experiment_id, client = store
    parent = client.create_run(experiment_id).info.run_id
    note = C.parent_note(
        "learning_rate",
        ["Yes: it beats the raw backbone"],
        ["", "lr  n", "--  -", "0.1 3"],
        ["accuracy_vs_learning_rate.png", "parallel_coordinates.png"],
        runs_url="http://127.0.0.1:5000/#/experiments/1/runs",
        dashboard_command="optuna-dashboard sqlite:///x.db",
    )
    C.log_parent_note(client, parent, note)
    stored = client.get_run(parent).data.tags[C.NOTE_TAG]
    assert "- Yes: it beats the raw backbone" in stored
    assert "```\nlr  n\n--  -\n0.1 3\n```" in stored
    assert "- `accuracy_vs_learning_rate.png`" in stored
    assert "optuna-dashboard sqlite:///x.db" in stored


def test_closing_lines_end_with_where_to_look(monkeypatch):
    monkeypatch.delenv("MLFLOW_UI_PORT", raising=False)
    monkeypatch.delenv("MLFLOW_UI_HOST", raising=False)
    lines = C.closing_lines(
        ["Yes: ..."], "sqlite:////tmp/s/mlflow.db", "3", "p1", "optuna-dashboard x"
    )
    assert lines[0] == "Yes: ..."
    assert lines[1].endswith(C.runs_view_url("sqlite:////tmp/s/mlflow.db", "3", "p1"))
    assert "serve.sh start" in lines[2] and "MLFLOW_UI_STORE=" in lines[2]
    assert lines[3].endswith("optuna-dashboard x")
    remote = C.closing_lines([], "http://team:5000", "3", "p1")
    assert remote == [
        f"Compare the trials, best first: {C.runs_view_url('http://team:5000', '3', 'p1')}"
    ]


def test_registered_predictor_validates_on_the_cpu_where_a_gpu_is_visible(
    store, monkeypatch, caplog
):
    """On the H200 (benchmarks/gpu_check.sh, 2026-11-30) MLflow's check of the input
    example loaded the exported program on `cuda`, because a GPU was visible, and warned
    that a program exported from CPU weights cannot load there. The model is logged on the
    CPU and served there: the check must run there too. `torch.cuda.is_available` is
    what MLflow asks; no GPU runs here."""
    import logging

    uri, experiment_id, client = store
    run = client.create_run(experiment_id)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("MLFLOW_DEFAULT_PREDICTION_DEVICE", raising=False)
    predictor = HierarchicalPredictor(16, width=8).eval()
    # MLflow's loggers do not propagate to the root logger: catch them where they log.
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="mlflow"):
            C.log_registered_predictor(uri, run.info.run_id, predictor, torch.randn(4, 16).numpy())
    finally:
        mlflow_logger.removeHandler(caplog.handler)
    failed = [r.getMessage()[:300] for r in caplog.records if "validate" in r.getMessage()]
    assert not failed, failed
    assert "MLFLOW_DEFAULT_PREDICTION_DEVICE" not in os.environ  # the scope is restored
