"""Loss functions: pure tensor functions, no parameters.

Shapes: B = batch size, D = embedding size. The modules that own parameters (prediction
heads, EMA targets) live in `jepa.objectives`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# VICReg's coefficients as published (Bardes et al., ICLR 2022, sec. 4.2: lambda = mu = 25,
# nu = 1). Measured here with the expander (jepa.objectives.VICReg): the predictor's outputs
# end 10 demo epochs at ~1.6 x the backbone's spread and ~1.0 x on the toy problem of
# tests/test_objectives.py, no retuning needed.
VICREG_SIM_COEFF = 25.0
VICREG_STD_COEFF = 25.0
VICREG_COV_COEFF = 1.0
VICREG_EPS = 1e-4


def cosine_distance(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`2 - 2 <normalize(p), normalize(z)>`, averaged over the batch.

    p, z: [B, D]. Returns a scalar in [0, 4]: 0 for parallel, 4 for opposite vectors.
    It equals the mean squared distance of the L2-normalised vectors (BYOL's eq. 2).
    """
    p = F.normalize(p, dim=-1)
    z = F.normalize(z, dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def cross_view_loss(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """The seed's cross-view consistency loss, gradients through both branches.

    p1, p2: predictor outputs of two views, [B, D]. It has a trivial minimum (every
    output the same vector), which is why the seed's predictor collapsed.
    """
    return cosine_distance(p1, p2)


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """Symmetrised negative-cosine loss with stop-gradient on the targets.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. 1-4:
    `L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`, here with `D = 2 - 2 cos` (the same
    gradients as SimSiam's `-cos`). p*: predictions [B, D]; z*: targets [B, D]. BYOL
    (Grill et al., NeurIPS 2020, eq. 2) is the same loss with targets from an EMA network.
    """
    return 0.5 * cosine_distance(p1, z2.detach()) + 0.5 * cosine_distance(p2, z1.detach())


def vicreg_terms(
    z1: torch.Tensor, z2: torch.Tensor, eps: float = VICREG_EPS
) -> dict[str, torch.Tensor]:
    """VICReg's three unweighted terms for two batches of embeddings z1, z2: [B, D], B >= 2.

    Under DDP the caller passes the batch gathered from every rank (as the official code
    does), so that the variance and covariance are statistics of the whole batch and the
    loss does not depend on how many workers share it.

    Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022, eq. 1-6:
    - `invariance`: mean squared error between z1 and z2 (eq. 5);
    - `variance`: hinge `mean_j relu(1 - sqrt(Var(z_j) + eps))`, *averaged* over the
      two branches (eq. 1; the official code, facebookresearch/vicreg `main_vicreg.py`,
      divides each branch's term by 2); zero once every dimension has std >= 1, so a
      constant output costs ~1 in all;
    - `covariance`: sum of squared off-diagonal covariances / D, summed over both
      branches (eq. 3-4); decorrelates the dimensions.
    """
    if z1.shape[0] < 2:
        raise ValueError(f"VICReg needs a batch of at least 2, got {z1.shape[0]}")
    batch, dim = z1.shape

    def variance(z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + eps)
        return F.relu(1 - std).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(dim=0)
        cov = (z.T @ z) / (batch - 1)
        off_diagonal = cov - torch.diag(torch.diag(cov))
        return off_diagonal.pow(2).sum() / dim

    return {
        "invariance": F.mse_loss(z1, z2),
        "variance": (variance(z1) + variance(z2)) / 2,
        "covariance": covariance(z1) + covariance(z2),
    }


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = VICREG_SIM_COEFF,
    std_coeff: float = VICREG_STD_COEFF,
    cov_coeff: float = VICREG_COV_COEFF,
    eps: float = VICREG_EPS,
) -> torch.Tensor:
    """VICReg (eq. 6): `sim_coeff * invariance + std_coeff * variance + cov_coeff *
    covariance` of `vicreg_terms`, with the paper's coefficients (25, 25, 1).

    z1, z2: [B, D], B >= 2. Returns a scalar.
    """
    terms = vicreg_terms(z1, z2, eps)
    return (
        sim_coeff * terms["invariance"]
        + std_coeff * terms["variance"]
        + cov_coeff * terms["covariance"]
    )
