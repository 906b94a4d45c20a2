"""The embedding cache: keyed by everything a bank depends on, never serves a damaged
file, and in a sweep the backbone runs once per augmentation level whatever the trial
concurrency."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from jepa import metrics as M
from jepa.augment import STRENGTH_LEVELS
from jepa.backbones import BackboneSpec, build_backbone, state_dict_hash
from jepa.data import DatasetSpec, load_dataset
from jepa.features import (
    _BANK_FIELDS,
    FeatureBank,
    FeatureKey,
    FeatureStore,
    compute_bank,
    compute_mode,
)
from sweeps.spaces import list_spaces, load_space
from tests.shared_sweeps import AUG_STRENGTH, EIGHT_AT_ONCE, EIGHT_DATA, ONE_AT_A_TIME_DATA

KEY = FeatureKey(
    weights_hash="w" * 64,
    encoder="target",
    manifest_hash="m" * 64,
    aug_strength=0.5,
    n_views=2,
    image_size=32,
    seed=0,
    compute=compute_mode("cpu"),
)
CHANGED = {
    "weights_hash": "v" * 64,
    "encoder": "context",
    "manifest_hash": "n" * 64,
    "aug_strength": 0.25,
    "n_views": 3,
    "image_size": 64,
    "seed": 1,
    "compute": compute_mode("cuda"),
}


@pytest.mark.parametrize("name", list_spaces())
def test_shipped_spaces_sweep_aug_strength_over_a_few_levels(name):
    # One bank per level: a continuous aug_strength would compute a bank per trial.
    space = load_space(name)
    if "aug_strength" in space.params:
        assert space.levels("aug_strength") is not None, "aug_strength must be a choice"
        assert set(space.levels("aug_strength")) <= set(STRENGTH_LEVELS)
    assert space.fixed.get("aug_strength", 0.5) in STRENGTH_LEVELS


def test_every_field_of_the_key_is_covered():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(FeatureKey)}


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_changing_any_part_of_the_key_changes_the_file(tmp_path, field):
    other = dataclasses.replace(KEY, **{field: CHANGED[field]})
    assert other.digest() != KEY.digest()
    store = FeatureStore(tmp_path)
    store.save(KEY, tiny_bank())
    assert store.load(other) is None
    assert store.load(KEY) is not None


def tiny_bank(seed: int = 0) -> FeatureBank:
    g = torch.Generator().manual_seed(seed)
    return FeatureBank(
        views=torch.randn(6, 2, 4, generator=g),
        train_clean=torch.randn(6, 4, generator=g),
        train_labels=torch.arange(6) % 3,
        eval_clean=torch.randn(3, 4, generator=g),
        eval_labels=torch.arange(3),
        val_clean=torch.randn(3, 4, generator=g),
        val_labels=torch.arange(3),
    )


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_sidecar(path: Path) -> None:
    meta = path.with_suffix(".json")
    meta.write_text(meta.read_text()[:10])


def lose_sidecar(path: Path) -> None:
    path.with_suffix(".json").unlink()


def sidecar_of_another_key(path: Path) -> None:
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["key"]["seed"] = 7
    path.with_suffix(".json").write_text(json.dumps(meta))


DAMAGE = [damage_flip, damage_truncate, damage_sidecar, sidecar_of_another_key]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_file_is_never_served_and_is_removed(tmp_path, damage):
    store = FeatureStore(tmp_path)
    path = store.save(KEY, tiny_bank())
    damage(path)
    assert store.load(KEY) is None
    assert not path.exists()


def test_a_bank_without_its_checksum_is_not_served(tmp_path):
    # As after a crash between writing the bank and its sidecar; the next save replaces it.
    store = FeatureStore(tmp_path)
    path = store.save(KEY, tiny_bank())
    lose_sidecar(path)
    assert store.load(KEY) is None
    store.save(KEY, tiny_bank(seed=1))
    assert torch.equal(store.load(KEY).views, tiny_bank(seed=1).views)


# A real bank: the demo backbone on 20 training, 10 validation and 10 test digits.
@pytest.fixture(scope="module")
def real():
    spec = BackboneSpec()
    backbone = build_backbone(spec)
    dataset = load_dataset(DatasetSpec(images_per_class=2, eval_per_class=1, val_per_class=1))
    return backbone, dataset


def real_key(backbone, dataset, **changes) -> FeatureKey:
    key = FeatureKey(
        weights_hash=state_dict_hash(backbone.vit),
        encoder="target",
        manifest_hash=dataset.manifest_hash,
        aug_strength=0.5,
        n_views=2,
        image_size=backbone.image_size,
        seed=0,
        compute=compute_mode("cpu"),
    )
    return dataclasses.replace(key, **changes)


class Counting:
    """`compute` for `FeatureStore.get_or_compute` that counts the backbone's runs."""

    def __init__(self, backbone, dataset) -> None:
        self.backbone, self.dataset = backbone, dataset
        self.calls = 0

    def __call__(self, key: FeatureKey):
        def compute() -> FeatureBank:
            self.calls += 1
            return compute_bank(
                self.backbone, self.dataset, key.aug_strength, key.n_views, key.seed
            )

        return compute


def test_real_bank_is_computed_once_then_read_back(tmp_path, real):
    backbone, dataset = real
    store, counting = FeatureStore(tmp_path), Counting(*real)
    key = real_key(backbone, dataset)
    first, computed = store.get_or_compute(key, counting(key))
    assert computed and counting.calls == 1
    assert first.views.shape == (20, 2, backbone.embed_dim)
    assert first.images_embedded == 20 * 2 + 20 + 10 + 10
    again, computed = store.get_or_compute(key, counting(key))
    assert not computed and counting.calls == 1
    for name in _BANK_FIELDS:
        assert torch.equal(getattr(again, name), getattr(first, name)), name
    # The two views of an image differ (aug_strength 0.5): pairs are real pairs.
    assert not torch.allclose(first.views[:, 0], first.views[:, 1])


@pytest.mark.parametrize("field", ["aug_strength", "n_views", "seed", "weights_hash"])
def test_real_bank_is_recomputed_when_its_key_changes(tmp_path, real, field):
    backbone, dataset = real
    store, counting = FeatureStore(tmp_path), Counting(*real)
    key = real_key(backbone, dataset)
    first, _ = store.get_or_compute(key, counting(key))
    changed = {"aug_strength": 0.25, "n_views": 3, "seed": 1, "weights_hash": "0" * 64}
    other = dataclasses.replace(key, **{field: changed[field]})
    second, computed = store.get_or_compute(other, counting(other))
    assert computed and counting.calls == 2
    if field != "weights_hash":  # the views follow the key's recipe
        assert second.views.shape != first.views.shape or not torch.equal(second.views, first.views)
    # Both stay cached side by side.
    assert store.load(key) is not None and store.load(other) is not None


def test_real_bank_of_another_data_set_is_another_entry(tmp_path, real):
    backbone, dataset = real
    other_data = load_dataset(DatasetSpec(images_per_class=2, eval_per_class=1, seed=1))
    assert other_data.manifest_hash != dataset.manifest_hash
    store = FeatureStore(tmp_path)
    calls = Counting(backbone, dataset)
    key = real_key(backbone, dataset)
    store.get_or_compute(key, calls(key))
    other_calls = Counting(backbone, other_data)
    other = real_key(backbone, other_data)
    _, computed = store.get_or_compute(other, other_calls(other))
    assert computed and other_calls.calls == 1


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate], ids=lambda f: f.__name__)
def test_corrupted_real_bank_is_recomputed(tmp_path, real, damage):
    backbone, dataset = real
    store, counting = FeatureStore(tmp_path), Counting(*real)
    key = real_key(backbone, dataset)
    first, _ = store.get_or_compute(key, counting(key))
    damage(store.paths(key)[0])
    second, computed = store.get_or_compute(key, counting(key))
    assert computed and counting.calls == 2
    assert torch.equal(second.views, first.views)  # same key, same seed: same bank
    assert store.load(key) is not None  # and the store holds a good copy again


@pytest.mark.slow
@pytest.mark.shared_sweep(AUG_STRENGTH)
def test_sweep_runs_the_backbone_once_per_level_one_trial_at_a_time(shared_sweep):
    """The session's `aug_strength` sweep: 6 trials over the space's 4 levels, one at a
    time, from an empty cache of its own: the backbone runs exactly 4 x (V x train images
    + clean views), although 2 trials come back to a level."""
    d, sweep = ONE_AT_A_TIME_DATA, shared_sweep
    _, levels = load_space(AUG_STRENGTH).params["aug_strength"]
    assert len(levels) == 4
    _check_once_per_level(sweep, d["views"], d["images_per_class"], d["eval_per_class"], levels)


@pytest.mark.slow
@pytest.mark.shared_sweep(EIGHT_AT_ONCE)
def test_sweep_runs_the_backbone_once_per_level_eight_trials_at_once(shared_sweep):
    """The same with eight trials at once over two levels (the session's `eight-at-once`
    sweep), which ask for the two banks while the first is being computed."""
    d = EIGHT_DATA
    _check_once_per_level(
        shared_sweep, d["views"], d["images_per_class"], d["eval_per_class"], {0.25, 0.75}
    )


def _check_once_per_level(sweep, views, per_class, eval_per_class, levels) -> None:
    """The sweep's trials over `levels` (each visited): one bank per level, computed
    before the trials (which never run the backbone), and all of them left on disk."""
    proc, sweep_dirs, trials = sweep.proc, sweep.dirs, sweep.spec.trials
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=sweep_dirs.tracking_uri)
    exp = client.get_experiment_by_name("jepa-sweeps")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags[M.TAG_ROLE] == M.ROLE_SWEEP)
    runs_of_trials = [r for r in runs if r.data.tags[M.TAG_ROLE] == M.ROLE_TRIAL]
    assert len(runs_of_trials) == trials > len(levels)  # some trial comes back to a level
    assert {float(t.data.params["aug_strength"]) for t in runs_of_trials} == set(levels)
    train, evaluation = 10 * per_class, 10 * eval_per_class  # digits: 10 classes
    assert int(parent.data.params["train_images"]) == train
    assert int(parent.data.params["eval_images"]) == evaluation
    per_level = views * train + train + 2 * evaluation  # validation as large as test
    assert parent.data.metrics["backbone_images"] == len(levels) * per_level
    for trial in runs_of_trials:  # the trials themselves never ran the backbone
        assert trial.data.metrics["backbone_images"] == 0
        assert trial.data.metrics[M.TIME_OVERHEAD] >= 0
    # Every level's bank is on disk for the next sweep.
    assert len(list(sweep_dirs.cache_dir.glob("*.pt"))) == len(levels)


def test_a_cache_that_finds_its_bank_on_disk_never_builds_the_backbone(tmp_path, real):
    """The cache actor's keys need the backbone's input size only: a sweep whose banks
    are on disk does not load the weights (a ViT-H/14 checkpoint is 2.5 GB)."""
    from sweeps.feature_cache import FeatureCacheActor

    cache_class = FeatureCacheActor.__ray_metadata__.modified_class  # the class, no actor
    backbone, dataset = real
    args = (str(tmp_path), BackboneSpec(), dataset, state_dict_hash(backbone.vit), 2, 0)
    first = cache_class(*args)
    computed = first._load_or_compute(0.5, 2)
    assert first._backbone is not None and first.stats()["disk_hits"] == 0
    second = cache_class(*args)
    loaded = second._load_or_compute(0.5, 2)
    assert second._backbone is None and second.stats()["disk_hits"] == 1
    assert torch.equal(loaded.views, computed.views)


def test_the_image_size_from_the_spec_is_the_built_backbones(tmp_path):
    from sweeps.feature_cache import image_size
    from tests.test_ijepa import small_pair, write_ijepa_checkpoint

    checkpoint = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    write_ijepa_checkpoint(checkpoint, *small_pair())
    for spec in (BackboneSpec(), BackboneSpec("ijepa", str(checkpoint))):
        assert image_size(spec) == build_backbone(spec).image_size, spec
