"""The layers' boundaries: the library (`jepa/`) never imports the wiring (`sweeps/`),
and no modules import each other, directly or around a loop (imports inside functions
and under TYPE_CHECKING count: they are dependencies all the same)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("jepa", "sweeps")


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file."""
    modules = {
        f"{pkg}.{f.stem}" if f.stem != "__init__" else pkg: f
        for pkg in PACKAGES
        for f in sorted((root / pkg).glob("*.py"))
    }
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from sweeps import tracking` imports the module sweeps.tracking
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A loop of imports (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles():
    graph = import_graph(ROOT)
    assert len(graph) > 30  # it did find the modules
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_library_never_imports_the_wiring():
    graph = import_graph(ROOT)
    upward = {m: sorted(t for t in ts if t.startswith("sweeps")) for m, ts in graph.items()}
    assert {m: ts for m, ts in upward.items() if m.startswith("jepa") and ts} == {}


def test_the_cycle_check_can_fail(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "jepa" / "a.py").write_text("from jepa import b\n")
    (tmp_path / "jepa" / "b.py").write_text("def f():\n    from sweeps.c import g\n")
    (tmp_path / "sweeps" / "c.py").write_text("import jepa.a\n")
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle is not None and set(cycle) == {"jepa.a", "jepa.b", "sweeps.c"}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_says_what_it_owns(package):
    for path in sorted((ROOT / package).glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.split()) >= 3, f"{path.name}: no docstring saying what it owns"


def test_a_trials_trainable_stays_light():
    """Tune starts one trainable actor per running trial beside the pool's workers: it
    must not import torch or scikit-learn (~0.8 GB each; eight trials of them ran a
    24 GB machine out of memory). Unpickling what the sweep sends it counts too, and so
    do the classes of the actors it asks by name (the cache's, the pool's broker): Ray
    loads an actor's class where `ray.get_actor` runs, pickled by value (a decorated
    class is not its module's attribute) with the globals its methods use."""
    code = """
import pickle, sys
from ray import cloudpickle
from jepa.backbone_spec import BackboneSpec
from sweeps.feature_cache import FeatureCacheActor
from sweeps.pool import Broker
from sweeps.trial import SweepContext, run_trial
ctx = SweepContext("s", "sqlite:///x.db", "1", "p", {}, BackboneSpec(), {}, {}, "c", "n",
                   "b", "/tmp")
pickle.loads(pickle.dumps((ctx, run_trial)))
for actor in (FeatureCacheActor, Broker):  # as Ray exports them (ray/actor.py)
    cloudpickle.loads(cloudpickle.dumps(actor.__ray_metadata__.modified_class))
heavy = sorted(m for m in ("torch", "sklearn", "timm", "matplotlib") if m in sys.modules)
print(heavy)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_clis_answer_help_and_bad_flags_without_the_heavy_imports():
    """`--help`, `--list-spaces`, a mistyped flag or space, of the sweep and of the single
    run: answered before torch, timm, Ray or MLflow are imported (~6 s of a 2-core
    machine's CPU, once per command)."""
    code = """
import contextlib, io, sys
from sweeps import single
from sweeps.cli import main
codes = []
for argv in (["--list-spaces"], ["--space", "nope"], ["--space", "full", "--views", "1"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes.append(main(argv))
for run, argv in ((main, ["--help"]), (single.main, ["train", "--help"]),
                  (single.main, ["evaluate", "--help"]), (single.main, ["train", "--lr", "x"])):
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        run(argv)
heavy = sorted(m for m in ("torch", "timm", "ray", "mlflow", "sklearn") if m in sys.modules)
print(codes, heavy)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 2, 2] []"


def test_the_light_backbone_names_are_the_registrys():
    """`--backbone` offers `jepa.backbone_spec.NAMES` (no torch); `jepa.backbones` builds."""
    from jepa.backbone_spec import NAMES
    from jepa.backbones import BACKBONES

    assert tuple(BACKBONES) == NAMES
