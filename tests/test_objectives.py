"""The four objectives: where gradients flow, the EMA target and BYOL's momentum schedule,
VICReg's terms and expander, and a toy problem on which cross_view collapses and the
other three do not. The collapse rule itself is tested in tests/test_collapse.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jepa import config as jepa_config
from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.losses import VICREG_EPS, vicreg_loss, vicreg_terms
from jepa.objectives import (
    EMA,
    OBJECTIVES,
    CrossView,
    StopGrad,
    VICReg,
    build_objective,
    byol_momentum,
)
from jepa.predictor import HierarchicalPredictor
from jepa.train import (
    STATUS_FINISHED,
    EvalSet,
    save_predictor,
    steps_per_epoch,
    train_predictor,
)
from jepa.views import CachedViewPairs

DIM = 16


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread is faster than two fighting over a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(batch: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, DIM, generator=g)
    return x + 0.1 * torch.randn(batch, DIM, generator=g), x


def _distance(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos, written out independently of jepa.losses."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()


def _grads(module: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in module.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def test_registry_matches_the_config_and_rejects_unknown_names():
    assert tuple(OBJECTIVES) == jepa_config.OBJECTIVES
    with pytest.raises(ValueError, match="known: cross_view, stopgrad, ema, vicreg"):
        build_objective("simclr", HierarchicalPredictor(DIM, 8))


@pytest.mark.parametrize("name", ["cross_view", "vicreg"])
def test_symmetric_objectives_send_gradients_through_both_branches(name):
    torch.manual_seed(0)
    objective = build_objective(name, HierarchicalPredictor(DIM, 8))
    x1, x2 = (x.requires_grad_(True) for x in _pair())
    objective(x1, x2).backward()
    assert x1.grad is not None and x1.grad.abs().sum() > 0
    assert x2.grad is not None and x2.grad.abs().sum() > 0


def test_cross_view_is_the_loss_between_both_predictions():
    torch.manual_seed(0)
    predictor = HierarchicalPredictor(DIM, 8)
    x1, x2 = _pair()
    loss = CrossView(predictor)(x1, x2)
    torch.testing.assert_close(loss, _distance(predictor(x1), predictor(x2)))


def test_stopgrad_stops_the_gradient_on_the_targets_only():
    torch.manual_seed(0)
    objective = StopGrad(HierarchicalPredictor(DIM, 8))
    f, h = objective.predictor, objective.head
    x1, x2 = _pair()
    got = _grads(objective, objective(x1, x2))

    z1, z2 = f(x1), f(x2)
    stopped = 0.5 * _distance(h(z1), z2.detach()) + 0.5 * _distance(h(z2), z1.detach())
    for g, want in zip(got, _grads(objective, stopped), strict=True):
        torch.testing.assert_close(g, want)

    z1, z2 = f(x1), f(x2)
    through = 0.5 * _distance(h(z1), z2) + 0.5 * _distance(h(z2), z1)
    unstopped = _grads(objective, through)
    differs = [not torch.allclose(g, w) for g, w in zip(got, unstopped, strict=True)]
    assert any(differs), "gradient also flows through the targets"
    # The prediction head is trained with the predictor.
    head_params = {id(p) for p in h.parameters()}
    assert head_params <= {id(p) for p in objective.trainable_parameters()}


def test_ema_target_gets_no_gradient_and_online_branch_does():
    torch.manual_seed(0)
    objective = EMA(HierarchicalPredictor(DIM, 8))
    x1, x2 = _pair()
    objective(x1, x2).backward()
    assert all(not p.requires_grad and p.grad is None for p in objective.target.parameters())
    assert all(p.grad is not None for p in objective.predictor.parameters())
    assert all(p.grad is not None for p in objective.head.parameters())
    trainable = {id(p) for p in objective.trainable_parameters()}
    assert not trainable & {id(p) for p in objective.target.parameters()}


def test_ema_loss_uses_the_target_copy_of_the_predictor():
    torch.manual_seed(0)
    objective = EMA(HierarchicalPredictor(DIM, 8))
    x1, x2 = _pair()
    with torch.no_grad():  # make the target differ from the online predictor
        for p in objective.target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t1, t2 = objective.target(x1), objective.target(x2)
    h, f = objective.head, objective.predictor
    want = 0.5 * _distance(h(f(x1)), t2) + 0.5 * _distance(h(f(x2)), t1)
    torch.testing.assert_close(objective(x1, x2), want)


def test_ema_target_follows_the_predictor_with_momentum():
    # total_steps=4, base 0.9: tau_0 = 0.9, tau_1 = 1 - 0.1 (cos(pi/4) + 1) / 2.
    objective = EMA(HierarchicalPredictor(DIM, 8), base_momentum=0.9, total_steps=4)
    online, target = objective.predictor, objective.target
    for o, t in zip(online.parameters(), target.parameters(), strict=True):
        torch.testing.assert_close(o, t)  # starts as a copy
    with torch.no_grad():
        for o in online.parameters():
            o.fill_(1.0)
        for t in target.parameters():
            t.fill_(0.0)
    objective.after_step()
    for t in target.parameters():
        torch.testing.assert_close(t, torch.full_like(t, 0.1))
    objective.after_step()
    tau1 = 1 - 0.1 * (2**-0.5 + 1) / 2
    for t in target.parameters():
        torch.testing.assert_close(t, torch.full_like(t, tau1 * 0.1 + (1 - tau1)))


def test_byol_schedule_first_and_last_steps():
    """BYOL, sec. 3.2: tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2."""
    base, total = 0.99, 100
    assert byol_momentum(0, total, base) == pytest.approx(base)
    assert byol_momentum(total // 2, total, base) == pytest.approx(1 - (1 - base) / 2)
    last = byol_momentum(total - 1, total, base)  # the run's last update
    assert last == pytest.approx(1 - 0.01 * (1 - math.cos(math.pi / total)) / 2)
    assert 1 - last < 3e-6
    assert byol_momentum(total, total, base) == 1.0
    assert byol_momentum(total + 5, total, base) == 1.0  # past the end: the target is frozen
    taus = [byol_momentum(k, total, base) for k in range(total + 1)]
    assert all(a < b for a, b in zip(taus, taus[1:], strict=False)), "tau rises monotonically"
    with pytest.raises(ValueError):
        byol_momentum(0, 0, base)


def test_ema_schedule_spans_the_runs_actual_steps():
    """train_predictor sizes the EMA schedule to the run's optimiser steps."""
    views, evalset = clustered_toy(n=100, views=2)
    cfg = TrialConfig(objective="ema", predictor_width=16, batch_size=32, max_epochs=3)
    result = train_predictor(cfg, CachedViewPairs(views), evalset)
    assert result.total_steps == 3 * steps_per_epoch(100, 32) == 3 * 4
    objective = build_objective("ema", HierarchicalPredictor(32, 16), cfg, result.total_steps)
    assert objective.momentum == cfg.ema_momentum
    objective.step = result.total_steps
    assert objective.momentum == 1.0
    assert steps_per_epoch(100, 32, world_size=2, rank=1) == 2  # 4 batches over 2 ranks
    assert steps_per_epoch(65, 32) == 2  # a 1-image tail is skipped


def test_ema_momentum_and_expander_width_come_from_the_config():
    cfg = TrialConfig(ema_momentum=0.95, expander_width=24)
    ema = build_objective("ema", HierarchicalPredictor(DIM, 8), cfg, total_steps=10)
    assert ema.base_momentum == 0.95 and ema.total_steps == 10
    vicreg = build_objective("vicreg", HierarchicalPredictor(DIM, 8), cfg)
    assert vicreg.expander.net[0].out_features == 24
    assert vicreg.expander.net[-1].out_features == 24


def test_vicreg_terms():
    torch.manual_seed(0)
    z = 3.0 * torch.randn(4096, 8)  # std 3 per dimension, dimensions independent
    terms = vicreg_terms(z, z + 0.5)
    assert terms["invariance"].item() == pytest.approx(0.25, rel=1e-4)
    assert terms["variance"].item() == 0.0  # every std >= 1: no hinge
    independent = torch.randn(4096, 8)
    # off-diagonal covariances ~ 1/sqrt(4096): their squares sum to ~56/4096 per branch
    assert vicreg_terms(independent, independent)["covariance"].item() < 0.01
    constant = torch.ones(64, 8)
    # averaged over the two branches (official code): a constant output costs 1 - sqrt(eps)
    assert vicreg_terms(constant, constant)["variance"].item() == pytest.approx(
        1 - VICREG_EPS**0.5, rel=1e-5
    )
    correlated = torch.randn(4096, 1).repeat(1, 8)  # every dimension the same
    # off-diagonal covariances ~1: 8 * 7 / 8 per branch
    assert vicreg_terms(correlated, correlated)["covariance"].item() == pytest.approx(14, rel=0.1)
    t = vicreg_terms(z, correlated)
    want = 25 * t["invariance"] + 25 * t["variance"] + 1 * t["covariance"]
    torch.testing.assert_close(vicreg_loss(z, correlated), want)
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_terms(z[:1], z[:1])


def test_vicreg_terms_on_a_hand_computed_batch():
    """Two 3x2 batches worked out by hand (unbiased variances, eps = 1e-4)."""
    z1 = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    z2 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    terms = vicreg_terms(z1, z2)
    # invariance: squared differences per row (0, 1), (1, 1), (4, 9) -> 16 / 6
    assert terms["invariance"].item() == pytest.approx(16 / 6, rel=1e-6)
    # variance: z1's columns have Var 1 and 4 -> std >= 1, hinge 0; z2 is constant ->
    # relu(1 - sqrt(1e-4)) = 0.99 per column; averaged over the branches: (0 + 0.99) / 2
    assert terms["variance"].item() == pytest.approx(0.495, rel=1e-5)
    # covariance: z1's Cov = [[1, 2], [2, 4]] -> off-diagonal squares 2 * 4 = 8, / D = 4;
    # z2's is 0; summed over the branches (the official code sums them)
    assert terms["covariance"].item() == pytest.approx(4.0, rel=1e-6)
    want = 25 * 16 / 6 + 25 * 0.495 + 1 * 4.0
    assert vicreg_loss(z1, z2).item() == pytest.approx(want, rel=1e-5)


def test_vicreg_objective_applies_the_loss_to_the_expanded_predictions():
    torch.manual_seed(0)
    predictor = HierarchicalPredictor(DIM, 8)
    objective = VICReg(predictor, expander_width=32)
    x1, x2 = _pair(batch=16)
    e = objective.expander
    want = vicreg_loss(e(predictor(x1)), e(predictor(x2)))
    torch.testing.assert_close(objective(x1, x2), want)
    # The expander is trained with the predictor...
    expander_params = {id(p) for p in e.parameters()}
    assert expander_params <= {id(p) for p in objective.trainable_parameters()}
    # ...and has VICReg's shape: Linear-BN-ReLU, Linear-BN-ReLU, Linear without bias.
    kinds = [type(m).__name__ for m in e.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear"]
    assert e.net[-1].bias is None


def test_the_expander_trains_but_is_not_saved(tmp_path):
    views, evalset = clustered_toy(n=128, views=2)
    cfg = TrialConfig(objective="vicreg", predictor_width=16, expander_width=48, max_epochs=1)
    result = train_predictor(cfg, CachedViewPairs(views), evalset)
    path = save_predictor(result.predictor, cfg, tmp_path / M.PREDICTOR_ARTIFACT)
    saved = torch.load(path, weights_only=True)
    assert set(saved["state_dict"]) == set(HierarchicalPredictor(32, 16).state_dict())
    assert not any("expander" in k for k in saved["state_dict"])
    assert all(t.shape[-1] != 48 for t in saved["state_dict"].values())
    # What is evaluated is the predictor's own output, [N, D], not the expander's [N, W].
    assert result.predictor(evalset.train_x).shape == evalset.train_x.shape


# --- the toy problem -------------------------------------------------------------------


def clustered_toy(
    n: int = 512,
    dim: int = 32,
    clusters: int = 8,
    views: int = 4,
    view_noise: float = 3.0,
    seed: int = 0,
) -> tuple[torch.Tensor, EvalSet]:
    """Synthetic "backbone embeddings": `clusters` Gaussian clusters (centres of scale 2,
    spread 0.5) in `dim` dimensions; each image's views add noise of std `view_noise`
    (strong augmentation: larger than the clusters' spread). Returns views [n, V, dim]
    and the clean embeddings of a training and an evaluation split with cluster labels."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(clusters, dim, generator=g)
    train_y = torch.arange(n) % clusters
    eval_y = torch.arange(n // 2) % clusters
    train_x = centres[train_y] + 0.5 * torch.randn(n, dim, generator=g)
    eval_x = centres[eval_y] + 0.5 * torch.randn(n // 2, dim, generator=g)
    cached = train_x[:, None] + view_noise * torch.randn(n, views, dim, generator=g)
    return cached, EvalSet(train_x, train_y, eval_x, eval_y)


TOY_EPOCHS = 30


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_toy_problem_cross_view_collapses_and_the_others_do_not(name):
    views, evalset = clustered_toy()
    cfg = TrialConfig(
        objective=name, predictor_width=64, batch_size=64, lr=3e-3, max_epochs=TOY_EPOCHS
    )
    result = train_predictor(cfg, CachedViewPairs(views), evalset)
    ratios = [row[M.EMBEDDING_STD_RATIO] for row in result.history]
    ranks = [row[M.EFFECTIVE_RANK] for row in result.history]
    if name == "cross_view":
        # Measured (seeds 0-2): the spread falls below a tenth of the input's by epoch ~10
        # and to 0.04 x by epoch 30, while the centred rank stays at ~0.65 x the input's and
        # the kNN at 1.0: a `scale` collapse, tagged and trained on (tests/test_collapse.py).
        assert result.collapse == M.COLLAPSE_SCALE
        assert len(result.history) == TOY_EPOCHS
        assert ratios[-1] < 0.1
    else:
        # Measured over seeds 0-2: their spread stays above ~0.44 of the input's and
        # their centred rank ends at 0.36-0.56 x the input's.
        assert result.status == STATUS_FINISHED
        assert result.collapse == M.COLLAPSE_NONE
        assert len(result.history) == TOY_EPOCHS
        assert min(ratios) > 0.25, ratios
        assert min(ranks) > 4, ranks
        assert result.history[-1][M.KNN_ACCURACY] > 0.9
