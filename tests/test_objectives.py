"""The four objectives: where gradients flow, the EMA target, VICReg's terms, the collapse
rule, and a toy problem on which cross_view collapses and the other three do not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jepa import config as jepa_config
from jepa import metrics as M
from jepa.config import TrialConfig
from jepa.losses import VICREG_EPS, vicreg_loss, vicreg_terms
from jepa.objectives import (
    EMA,
    EMA_MOMENTUM,
    OBJECTIVES,
    CrossView,
    StopGrad,
    VICReg,
    build_objective,
)
from jepa.predictor import HierarchicalPredictor
from jepa.train import (
    STATUS_COLLAPSED,
    STATUS_FINISHED,
    CollapseReference,
    EvalSet,
    is_collapsed,
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
    objective = EMA(HierarchicalPredictor(DIM, 8), momentum=0.9)
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
    for t in target.parameters():
        torch.testing.assert_close(t, torch.full_like(t, 0.9 * 0.1 + 0.1))
    assert EMA(HierarchicalPredictor(DIM, 8)).momentum == EMA_MOMENTUM == 0.996


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
    assert vicreg_terms(constant, constant)["variance"].item() == pytest.approx(
        2 * (1 - VICREG_EPS**0.5), rel=1e-5
    )
    correlated = torch.randn(4096, 1).repeat(1, 8)  # every dimension the same
    # off-diagonal covariances ~1: 8 * 7 / 8 per branch
    assert vicreg_terms(correlated, correlated)["covariance"].item() == pytest.approx(14, rel=0.1)
    t = vicreg_terms(z, correlated)
    want = 25 * t["invariance"] + 25 * t["variance"] + 1 * t["covariance"]
    torch.testing.assert_close(vicreg_loss(z, correlated), want)
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_terms(z[:1], z[:1])


def test_vicreg_objective_applies_the_loss_to_both_predictions():
    torch.manual_seed(0)
    predictor = HierarchicalPredictor(DIM, 8)
    x1, x2 = _pair(batch=16)
    torch.testing.assert_close(VICReg(predictor)(x1, x2), vicreg_loss(predictor(x1), predictor(x2)))


# --- the collapse rule -----------------------------------------------------------------


def test_collapse_rule_is_relative_to_the_backbone():
    narrow = CollapseReference(embedding_std=0.009, effective_rank=20.0)  # demo ViT-like
    assert not is_collapsed(0.009, 20.0, narrow)  # the identity map never collapses
    assert not is_collapsed(0.004, 15.0, narrow)  # shrank 2x: not collapsed
    assert is_collapsed(0.0008, 30.0, narrow)  # shrank > 10x: complete collapse
    assert is_collapsed(0.009, 1.5, narrow)  # one direction left: dimensional collapse
    flat = CollapseReference(embedding_std=0.05, effective_rank=1.2)
    assert not is_collapsed(0.05, 1.2, flat)  # a backbone with rank < 2 is not judged by rank


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
        # Measured: the spread falls below a tenth of the input's by epoch ~10 and the
        # run stops there, tagged collapsed.
        assert result.status == STATUS_COLLAPSED
        assert len(result.history) < TOY_EPOCHS
        assert ratios[-1] < 0.1
    else:
        # Measured over seeds 0-2: their spread never falls below ~0.4 of the input's.
        assert result.status == STATUS_FINISHED
        assert len(result.history) == TOY_EPOCHS
        assert min(ratios) > 0.25, ratios
        assert min(ranks) > 4, ranks
        assert result.history[-1][M.KNN_ACCURACY] > 0.9
