"""The Optuna study on disk: continued by a later search, served by optuna-dashboard
(real Optuna journal files, a real optuna-dashboard server; no Ray cluster)."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from ray import tune

from jepa import metrics as M
from sweeps.search import (
    ATTR_SEED_VALUES,
    ATTR_SEEDS,
    SEED_KEY,
    STUDY_FILE,
    STUDY_NAME,
    SeededOptunaSearch,
    dashboard_command,
    study_storage,
)

SPACE = {"predictor_width": tune.choice([64, 128])}
COVERAGE = [{"predictor_width": 64}, {"predictor_width": 128}]


def _searcher(path: Path, seeds: int = 2) -> SeededOptunaSearch:
    return SeededOptunaSearch(
        space=SPACE,
        metric=M.SEARCH_METRIC,
        mode="max",
        seed=0,
        points_to_evaluate=COVERAGE,
        seeds_per_config=seeds,
        study_path=path,
    )


def _run(searcher: SeededOptunaSearch, prefix: str, trials: int) -> list[tuple[int, int]]:
    """Suggest and complete `trials` trials one by one: [(predictor_width, seed)]."""
    pairs = []
    for i in range(trials):
        config = searcher.suggest(f"{prefix}{i}")
        pairs.append((config["predictor_width"], config[SEED_KEY]))
        value = 0.5 + config["predictor_width"] / 1000 + config[SEED_KEY] / 100
        searcher.on_trial_complete(f"{prefix}{i}", {M.SEARCH_METRIC: value})
    return pairs


def test_a_second_search_continues_the_study_on_disk(tmp_path):
    path = tmp_path / "sweep" / STUDY_FILE
    first = _run(_searcher(path), "a", 4)
    assert sorted(first) == [(64, 0), (64, 1), (128, 0), (128, 1)]  # coverage, 2 seeds each
    assert path.stat().st_size > 0

    second = _searcher(path)
    assert len(second._ot_study.trials) == 2  # the first search's two groups
    pairs = _run(second, "b", 2)
    # The space is covered: no coverage point again, and the repeat of a config gets
    # the seeds after the ones its first trials used.
    assert len({w for w, _ in pairs}) == 1 and sorted(s for _, s in pairs) == [2, 3]
    import optuna

    study = optuna.load_study(study_name=STUDY_NAME, storage=second._storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    last = study.trials[-1]
    assert last.user_attrs[ATTR_SEEDS] == [2, 3]
    assert set(last.user_attrs[ATTR_SEED_VALUES]) == {"2", "3"}
    assert last.value == pytest.approx(sum(last.user_attrs[ATTR_SEED_VALUES].values()) / 2)


def test_a_restored_searcher_keeps_writing_the_same_study(tmp_path):
    """Tune's --resume unpickles the searcher (OptunaSearch.save/restore): the storage
    goes with it and reads the journal back."""
    path = tmp_path / STUDY_FILE
    searcher = _searcher(path, seeds=1)
    _run(searcher, "a", 1)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher(tmp_path / "other.log", seeds=1)
    restored.restore(str(tmp_path / "searcher.pkl"))
    _run(restored, "b", 1)
    import optuna

    study = optuna.load_study(study_name=STUDY_NAME, storage=restored._storage)
    assert len(study.trials) == 2
    other = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(tmp_path / "other.log"))
    # The restored state's storage, not the new searcher's: nothing ran in the latter.
    assert not [t for t in other.trials if t.state.name == "COMPLETE"]


def test_a_trial_rerun_after_a_resume_does_not_tell_optuna_twice(tmp_path):
    """Tune's last save came after a trial was suggested but before it completed; the
    study on disk has its value (the earlier attempt told Optuna). Resumed, Tune reruns
    that trial: its results and completion must not touch the finished Optuna trial
    (Optuna raises UpdateFinishedTrialError, which ended the resumed sweep)."""
    import optuna

    path = tmp_path / STUDY_FILE
    searcher = _searcher(path, seeds=1)
    config = searcher.suggest("t0")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last save: t0 still running
    searcher.on_trial_complete("t0", {M.SEARCH_METRIC: 0.7})  # then the attempt finished
    restored = _searcher(tmp_path / "other.log", seeds=1)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("t0", {M.SEARCH_METRIC: 0.6, "training_iteration": 1})
    restored.on_trial_complete("t0", {M.SEARCH_METRIC: 0.6})
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(path))
    finished = [t for t in study.trials if t.state.is_finished()]  # the other is enqueued
    assert [(t.state.name, t.value) for t in finished] == [("COMPLETE", 0.7)]
    assert finished[0].params["predictor_width"] == config["predictor_width"]


def test_a_restored_searcher_fails_the_trials_the_cut_off_process_asked_for(tmp_path):
    """Tune's last save came before a trial was suggested; the process was then killed.
    The study on disk holds that Optuna trial RUNNING, and nothing will tell it a value:
    the restored searcher marks it FAIL, and keeps the trials it holds running."""
    import optuna

    path = tmp_path / STUDY_FILE
    searcher = _searcher(path, seeds=1)
    searcher.suggest("t0")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last save: knows t0 only
    searcher.suggest("t1")  # asked for after it, then the process died
    restored = _searcher(tmp_path / "other.log", seeds=1)
    restored.restore(str(tmp_path / "searcher.pkl"))
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(path))
    by_number = {t.number: t.state.name for t in study.trials}
    assert by_number == {0: "RUNNING", 1: "FAIL"}, by_number
    restored.on_trial_complete("t0", {M.SEARCH_METRIC: 0.5})  # t0 still reports
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(path))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(tmp_path):
    """optuna-dashboard, started as the printed command says (on a free port), over a
    journal with one finished sweep; stopped in teardown."""
    path = tmp_path / STUDY_FILE
    _run(_searcher(path), "a", 4)
    argv = shlex.split(dashboard_command(path))
    port = _free_port()
    assert argv[0] == "optuna-dashboard" and argv[-1] == str(path.resolve())
    binary = Path(sys.executable).with_name("optuna-dashboard")
    argv = [str(binary), *argv[1:]]
    argv[argv.index("--port") + 1] = str(port)
    log = open(tmp_path / "dashboard.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _get(url: str, deadline: float, proc) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            assert proc.poll() is None, "optuna-dashboard exited"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_optuna_dashboard_serves_the_study(dashboard):
    base, proc = dashboard
    deadline = time.monotonic() + 15
    studies = _get(f"{base}/api/studies", deadline, proc)["study_summaries"]
    assert [(s["study_name"], s["directions"]) for s in studies] == [(STUDY_NAME, ["maximize"])]
    detail = _get(f"{base}/api/studies/{studies[0]['study_id']}", deadline, proc)
    assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]
    widths = sorted(p["param_external_value"] for t in detail["trials"] for p in t["params"])
    assert widths == ["128", "64"]
    attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
    assert json.loads(attrs[ATTR_SEEDS]) == [0, 1]
