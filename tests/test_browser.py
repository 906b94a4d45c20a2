"""The MLflow UI as a person sees it: the store of a real 7-trial sweep (the session's
shared predictor_width sweep), `mlflow/serve.sh` over it on a free loopback port, and
headless Chromium walking the README's "Compare trials" steps. Screenshots land in
test-output/ (mlflow-trials.png, mlflow-compare.png, mlflow-tsne.png)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from tests.chromium import browser_context, screenshot
from tests.conftest import ROOT, SweepDirs

SWEEP = "predictor_width"  # the session's shared sweep whose store the UI shows
pytestmark = [pytest.mark.slow, pytest.mark.shared_sweep(SWEEP)]

SERVE = ROOT / "mlflow" / "serve.sh"


@dataclass
class Store:
    dirs: SweepDirs
    experiment_id: str
    trials: dict[str, float]  # run id -> probe_accuracy, as the store has them
    names: dict[str, str]  # run id -> run name
    artifacts: dict[str, str]  # run id -> artifact URI
    sweep_run: str  # the trials' parent run
    stdout: str  # what the sweep printed


@dataclass
class Server:
    url: str
    env: dict[str, str]
    pid: int


@pytest.fixture(scope="module")
def store(shared_sweeps) -> Store:
    """The store the session's 7-trial predictor_width sweep filled (tests/shared_sweeps.py)."""
    sweep = shared_sweeps[SWEEP]
    proc, dirs = sweep.proc, sweep.dirs
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The sweep prints the command that serves this store; the test uses that script.
    assert f"MLFLOW_UI_STORE={dirs.tracking_uri} " in proc.stdout, proc.stdout[-3000:]
    client = MlflowClient(tracking_uri=dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    runs = client.search_runs([exp.experiment_id], f"tags.`{M.TAG_ROLE}` = '{M.ROLE_TRIAL}'")
    assert len(runs) == sweep.spec.trials
    return Store(
        dirs=dirs,
        experiment_id=exp.experiment_id,
        trials={r.info.run_id: r.data.metrics[M.PROBE_ACCURACY] for r in runs},
        names={r.info.run_id: r.info.run_name for r in runs},
        artifacts={r.info.run_id: r.info.artifact_uri for r in runs},
        sweep_run=runs[0].data.tags["mlflow.parentRunId"],
        stdout=proc.stdout,
    )


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory) -> Server:
    """`mlflow/serve.sh start` over the sweep's store; stopped (all processes) at the end."""
    env = {
        **os.environ,
        "MLFLOW_UI_HOST": "127.0.0.1",
        "MLFLOW_UI_PORT": str(_free_port()),
        "MLFLOW_UI_STORE": store.dirs.tracking_uri,
        "MLFLOW_UI_STATE_DIR": str(tmp_path_factory.mktemp("ui-state")),
        "MLFLOW_UI_BIN": _mlflow_executable(),
    }
    started = _serve("start", env)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(_pid_file(env).read_text())
    try:
        yield Server(url=f"http://127.0.0.1:{env['MLFLOW_UI_PORT']}", env=env, pid=pid)
    finally:
        _serve("stop", env)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with browser_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context.new_page()


def test_experiment_page_lists_every_trial_with_probe_accuracy(store, server, page):
    # README "Compare trials": the experiment's runs, in the "Model training" view.
    page.goto(
        f"{server.url}/#/experiments/{store.experiment_id}/runs?workflowType=machine_learning"
    )
    # 1. Only the trials: the sweep and baseline runs carry other jepa.role tags.
    search = page.get_by_test_id("search-box")
    search.wait_for()
    _close_assistant(page)
    search.fill("tags.`jepa.role` = 'trial'")
    search.press("Enter")
    _show_trials(page, store)
    # 2. Columns: the metric to compare, and what the trials differ in.
    page.get_by_test_id("column-selection-dropdown").first.click()
    for column in (M.PROBE_ACCURACY, M.KNN_ACCURACY, "predictor_width"):
        page.get_by_placeholder("Search columns").fill(column)
        page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{column}$")).click()
    page.keyboard.press("Escape")
    # 3. Sort: probe_accuracy, best first (descending is the default direction).
    page.get_by_test_id("sort-select-dropdown").click()
    page.get_by_test_id(f"sort-select-{M.PROBE_ACCURACY}").click()
    page.wait_for_url(re.compile(r"orderByKey=metrics\.%60probe_accuracy%60"))

    header = page.locator(f'.ag-header-cell[col-id="{_COLUMN}"]')
    header.wait_for()
    assert header.inner_text().strip() == M.PROBE_ACCURACY

    # Best first; nothing else listed (but perhaps the sweep's run, the trials' parent).
    # The grid re-renders as results arrive, so read it until it shows the expected order.
    # (Trials with equal accuracy may come in either order.)
    def listed_accuracies() -> list[float] | None:
        listed = [run_id for run_id in _listed(page) if run_id != store.sweep_run]
        return [store.trials[r] for r in listed] if set(listed) == set(store.trials) else None

    best_first = sorted(store.trials.values(), reverse=True)
    assert _poll(listed_accuracies, best_first) == best_first
    shown = {}
    for run_id in store.trials:
        assert store.names[run_id] in _row(page, run_id).inner_text()
        cell = page.locator(f'.ag-center-cols-container [row-id="{run_id}"] [col-id="{_COLUMN}"]')
        shown[run_id] = float(cell.inner_text())
    assert shown == pytest.approx(store.trials)

    # 4. Select every trial: the Compare button appears.
    for run_id in store.trials:
        _row(page, run_id).get_by_role("checkbox").first.check()
    compare = page.get_by_role("button", name="Compare")
    compare.wait_for()
    screenshot(page, "mlflow-trials.png")
    compare.click()
    page.wait_for_url(re.compile("compare-runs"))
    compared = re.search(r"runs=(\[[^&]*\])", unquote(page.url)).group(1)
    assert set(re.findall(r"[0-9a-f]{32}", compared)) == set(store.trials)
    page.get_by_text(f"Comparing {len(store.trials)} Runs").wait_for()
    for name in store.names.values():
        page.get_by_text(name, exact=True).first.wait_for()
    screenshot(page, "mlflow-compare.png")


def test_the_printed_link_shows_this_sweeps_trials_with_dataset_and_model(store, server, page):
    """The sweep's last lines link the runs view of its trials, best first; there the
    Dataset column names the data set and the Models column the registered predictor,
    and the sweep's run carries its description (README "Compare trials")."""
    link = re.search(r"Compare the trials, best first: (\S+)", store.stdout).group(1)
    # The link names the UI's default address; this test's server has a free port.
    page.goto(re.sub(r"^http://[^/]+", server.url, link))
    names = list(store.names.values())
    for name in names:
        page.get_by_text(name, exact=True).first.wait_for()
    _close_assistant(page)
    grid = page.locator(".ag-center-cols-container")
    deadline, text = time.monotonic() + 30, grid.inner_text()
    while "jepa-predictor" not in text and time.monotonic() < deadline:  # rows fill in late
        time.sleep(0.5)
        text = grid.inner_text()
    assert "jepa-predictor" in text, text  # the Models column: the registered best
    assert "baseline-" not in text and "digits (" in text  # trials only; the Dataset column
    screenshot(page, "mlflow-sweep-link.png")
    client = MlflowClient(tracking_uri=store.dirs.tracking_uri)
    best = client.get_run(store.sweep_run).data.tags[M.TAG_BEST_RUN]
    registered = client.get_registered_model("jepa-predictor").latest_versions[0]
    assert registered.run_id == best
    page.goto(f"{server.url}/#/experiments/{store.experiment_id}/runs/{store.sweep_run}")
    page.get_by_text("the answer").first.wait_for()  # mlflow.note.content, rendered
    screenshot(page, "mlflow-sweep-description.png")


def test_run_page_shows_the_tsne_picture(store, server, page):
    best = max(store.trials, key=store.trials.get)
    page.goto(f"{server.url}/#/experiments/{store.experiment_id}/runs/{best}")
    tab = page.get_by_role("tab", name="Artifacts")
    tab.wait_for()
    _close_assistant(page)
    tab.click()
    page.get_by_text(M.TSNE_ARTIFACT, exact=True).first.click()
    image = page.locator(f'img[alt="{M.TSNE_ARTIFACT}"]')
    image.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    loaded = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    on_disk = _png_size(_local_path(store.artifacts[best]) / M.TSNE_ARTIFACT)
    assert tuple(loaded) == on_disk  # the picture shown is the file the trial logged
    screenshot(page, "mlflow-tsne.png")


def test_stop_ends_every_server_process(server):
    assert _group(server.pid), "the server's process group should be running"
    stopped = _serve("stop", server.env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _group(server.pid) == [], "processes left behind by mlflow/serve.sh stop"
    assert not _pid_file(server.env).exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/health", timeout=5)
    status = _serve("status", server.env)
    assert status.returncode == 3 and "not running" in status.stdout


_COLUMN = f"metrics.`{M.PROBE_ACCURACY}`"
_NAME_COLUMN = "attributes.`Run Name`"


def _row(page, run_id: str):
    """The grid row of a run (ag-grid splits a row into pinned and scrolled parts)."""
    return page.locator(f'.ag-pinned-left-cols-container [role=row][row-id="{run_id}"]')


def _listed(page) -> list[str]:
    """Run ids of the grid's rows, top to bottom, read in one go."""
    rows = page.locator(".ag-center-cols-container [role=row][row-id]").evaluate_all(
        "rows => rows.map(r => [Number(r.getAttribute('row-index')), r.getAttribute('row-id')])"
    )
    return [run_id for _, run_id in sorted(rows)]


def _poll(read, expected, timeout_s: float = 30):
    """read() until it returns `expected` or time is up; returns the last value read."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        value = read()
    return value


def _show_trials(page, store: Store, timeout_s: float = 90) -> None:
    """Wait for every trial's row. The UI may list them flat, or under their sweep's run
    (it fetches the parents of matching runs); then expand that row, as a person would."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_row(page, run_id).is_visible() for run_id in store.trials):
            return
        sweep = _row(page, store.sweep_run)
        if sweep.is_visible():
            sweep.locator(f'[col-id="{_NAME_COLUMN}"] button').first.click()
            page.wait_for_timeout(3000)
        else:
            page.wait_for_timeout(500)
    raise AssertionError(f"trial rows {sorted(store.trials)} not shown")


def _close_assistant(page) -> None:
    """MLflow 3.x opens its "MLflow Assistant" side panel on a first visit; it hides columns.

    Called once the page's own content is there, so the panel has rendered too if it will.
    """
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.is_visible():
        close.click()


def _serve(action: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SERVE), action], env=env, capture_output=True, text=True, timeout=300
    )


def _pid_file(env: dict[str, str]) -> Path:
    return Path(env["MLFLOW_UI_STATE_DIR"]) / f"ui-{env['MLFLOW_UI_PORT']}.pid"


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(proc.name))
    return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_executable() -> str:
    beside = Path(sys.executable).parent / "mlflow"
    found = str(beside) if beside.exists() else shutil.which("mlflow")
    assert found, "no mlflow executable beside the interpreter or on PATH"
    return found


def _local_path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(unquote(uri.removeprefix("file://")))


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])
