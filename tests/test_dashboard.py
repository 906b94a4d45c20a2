"""The Ray dashboard while a sweep runs, as the sweep tells a person to open it: the URL and
token file it prints, the token in an Authorization header (the API) or in the dashboard's
login box (the browser). Screenshot: test-output/ray-dashboard-actors.png."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.chromium import browser_context, screenshot
from tests.conftest import ROOT, RUN
from tests.shared_sweeps import BANKED

pytestmark = pytest.mark.slow

TRIALS = 2
# Tune runs each trial's driver (our run_trial) as an actor of this class; its Ray Train
# worker is a RayTrainWorker actor.
TRIAL_ACTOR = "ImplicitFunc"
WORKER_ACTOR = "RayTrainWorker"


class Sweep:
    """`python sweeps/run.py ...` in its own process group, its output in a file."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(RUN), *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text(), re.MULTILINE)
            if found:
                return found
            assert self.proc.poll() is None, f"sweep exited early:\n{self.tail()}"
            time.sleep(1)
        raise AssertionError(f"no line matching {pattern!r} in time:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text()[-chars:]

    def stop(self) -> None:
        """Ctrl-C, as a person would (the sweep then shuts its Ray cluster down); harder
        signals to the whole group only if that does not end it."""
        for sig, wait_s in ((signal.SIGINT, 60), (signal.SIGINT, 30), (signal.SIGTERM, 20)):
            if self.proc.poll() is not None:
                break
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self._out.close()


@pytest.fixture
def sweep(sweep_dirs) -> Sweep:
    # The shared sweeps' data, whose bank the session's embedding cache holds, so the
    # trials start soon; epochs enough to keep them alive while the test looks (it stops
    # the sweep then).
    args = ["--space", "predictor_width", "--num-samples", str(TRIALS), "--max-epochs", "1000"]
    running = Sweep([*args, *BANKED, *sweep_dirs.flags()], sweep_dirs.root / "sweep.log")
    try:
        yield running
    finally:
        running.stop()


def test_dashboard_lists_the_trials_actors_with_the_token_only(sweep, tmp_path):
    url = sweep.wait_for_line(r"^Ray dashboard: (http://127\.0\.0\.1:\d+)\s*$", 300).group(1)
    token_file = sweep.wait_for_line(r"^\s+it asks for the token in (/\S+):", 10).group(1)
    token = Path(token_file).read_text().strip()
    assert token

    actors_api = f"{url}/api/v0/actors?limit=1000"
    assert _status(actors_api) == 401  # no token
    assert _status(actors_api, {"Authorization": "Bearer not-the-token"}) == 403
    authorized = {"Authorization": f"Bearer {token}"}
    assert _status(actors_api, authorized) == 200

    # Both trials' actors and their Ray Train workers, seen while they run.
    seen: dict[str, set[str]] = {TRIAL_ACTOR: set(), WORKER_ACTOR: set()}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            actors = _get_json(actors_api, authorized)["data"]["result"]["result"]
        except urllib.error.HTTPError as exc:
            # The state API answers 500 when its query of the cluster times out (a busy
            # 2-core machine); a token or route fault is a 4xx and fails the test.
            assert exc.code >= 500, exc
            time.sleep(2)
            continue
        for actor in actors:
            if actor["class_name"] in seen and actor["state"] == "ALIVE":
                seen[actor["class_name"]].add(actor["actor_id"])
        if len(seen[TRIAL_ACTOR]) == TRIALS and seen[WORKER_ACTOR]:
            break
        assert sweep.proc.poll() is None, f"sweep exited early:\n{sweep.tail()}"
        time.sleep(2)
    assert len(seen[TRIAL_ACTOR]) == TRIALS, (seen, sweep.tail())
    assert seen[WORKER_ACTOR], (seen, sweep.tail())

    # The browser: the dashboard asks for the token, accepts it, and lists the workers.
    with browser_context(tmp_path / "chromium-profile") as context:
        page = context.new_page()
        page.goto(url)
        page.get_by_text("Authentication Token Required").wait_for()
        page.get_by_placeholder("Enter your authentication token").fill(token)
        page.get_by_role("button", name="Submit").click()
        page.get_by_text("Authentication Token Required").wait_for(state="hidden")
        cookies = {c["name"]: c["value"] for c in context.cookies()}
        assert cookies.get("ray-authentication-token") == token
        page.goto(f"{url}/#/actors")
        # A sweep has more actors than the table's first page of 10 shows.
        page.get_by_label("Page Size").fill("100")
        page.get_by_text(WORKER_ACTOR, exact=True).first.wait_for()
        page.get_by_text(TRIAL_ACTOR, exact=True).first.wait_for()
        screenshot(page, "ray-dashboard-actors.png", full_page=True)


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30):
            return 200
    except urllib.error.HTTPError as err:
        return err.code


def _get_json(url: str, headers: dict[str, str]) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
        return json.load(resp)
