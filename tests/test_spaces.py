from pathlib import Path

import pytest
from ray.tune.search.sample import Domain

from jepa.config import TrialConfig
from jepa.errors import UserInputError
from sweeps.spaces import SPACES_DIR, list_spaces, load_space, parse_space

REQUIRED = {"predictor_width", "learning_rate", "aug_strength", "full"}


def test_required_spaces_exist():
    assert REQUIRED <= set(list_spaces())


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_loads_and_samples_valid_configs(name):
    space = load_space(name)
    domains = space.tune_space()
    assert domains and all(isinstance(d, Domain) for d in domains.values())
    for _ in range(20):
        sample = {k: d.sample() for k, d in domains.items()}
        cfg = TrialConfig.from_dict({**space.fixed, **sample})
        for key, value in sample.items():
            assert getattr(cfg, key) == pytest.approx(value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("params:\n  predictor_widht:\n    choice: [1, 2]\n", "params.predictor_widht"),
        ("params:\n  lr:\n    loguniform: [0.1, 0.01]\n", "reversed range"),
        ("params:\n  lr:\n    uniform: [0.1, 0.1]\n", "empty or reversed"),
        ("params:\n  predictor_width:\n    choice: []\n", "empty"),
        ("params:\n  lr:\n    normal: [0, 1]\n", "unknown distribution 'normal'"),
        ("params:\n  lr: [0.1\n", "malformed YAML"),
        ("parms:\n  lr:\n    uniform: [0, 1]\n", "unknown key 'parms'"),
        ("params:\n  aug_strength:\n    choice: [0.5, 2.0]\n", "aug_strength must be in [0, 1]"),
    ],
)
def test_invalid_spaces_name_the_file_and_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(UserInputError) as info:
        parse_space(path)
    message = str(info.value)
    assert str(path) in message and needle in message and "\n" not in message


def test_unknown_space_lists_known_ones():
    with pytest.raises(UserInputError, match="known spaces: .*predictor_width"):
        load_space("no_such_space")


def test_spaces_dir_is_at_project_root():
    assert SPACES_DIR.name == "search_spaces" and (SPACES_DIR / "full.yaml").is_file()


def test_coverage_points_try_every_level_of_every_choice():
    space = load_space("objective")
    points = space.coverage_points(limit=8)
    assert sorted(p["objective"] for p in points) == sorted(space.levels("objective"))
    full = load_space("full")
    points = full.coverage_points(limit=8)
    for key in ("predictor_width", "depth", "aug_strength"):
        assert {p[key] for p in points} == set(full.levels(key))
    # Ray's OptunaSearch rejects a point without every swept parameter (the crash of
    # `--space full`): the continuous one takes its default, which lies in the range.
    assert all(set(p) == set(full.params) for p in points)
    assert {p["lr"] for p in points} == {TrialConfig().lr}
    assert len(full.coverage_points(limit=2)) == 2
    assert load_space("learning_rate").coverage_points(limit=8) == []


def test_coverage_points_fill_continuous_and_int_parameters(tmp_path):
    path = write(
        tmp_path,
        "params:\n  predictor_width:\n    choice: [64, 128]\n"
        "  lr:\n    loguniform: [1.0e-2, 1.0]\n"
        "  aug_strength:\n    uniform: [0.0, 0.2]\n"
        "  depth:\n    int: [2, 4]\n",
    )
    points = parse_space(path).coverage_points(limit=8)
    assert [p["predictor_width"] for p in points] == [64, 128]
    for p in points:
        assert p["lr"] == pytest.approx(0.1)  # default 1e-3 outside: geometric centre
        assert p["aug_strength"] == pytest.approx(0.1)
        assert p["depth"] == 3
        TrialConfig.from_dict(p)
