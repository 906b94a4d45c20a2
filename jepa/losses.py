"""Loss functions: pure tensor functions, no parameters.

Shapes: B = batch size, D = embedding size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`2 - 2 <normalize(p), normalize(z)>`, averaged over the batch.

    p, z: [B, D]. Returns a scalar in [0, 4]: 0 for parallel, 4 for opposite vectors.
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
    """Symmetrised SimSiam loss with stop-gradient on the targets.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. 2-4:
    `L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`. p*: predictions [B, D]; z*: targets
    [B, D] (the same for BYOL, where the targets come from an EMA network).
    """
    return 0.5 * cosine_distance(p1, z2.detach()) + 0.5 * cosine_distance(p2, z1.detach())


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg: invariance + variance + covariance.

    Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022, eq. 1-6, with the paper's coefficients
    (25, 25, 1). z1, z2: [B, D], B >= 2.
    """
    batch, dim = z1.shape
    invariance = F.mse_loss(z1, z2)

    def variance(z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + eps)
        return F.relu(1 - std).mean()

    def covariance(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(dim=0)
        cov = (z.T @ z) / (batch - 1)
        off_diagonal = cov - torch.diag(torch.diag(cov))
        return off_diagonal.pow(2).sum() / dim

    return (
        sim_coeff * invariance
        + std_coeff * (variance(z1) + variance(z2))
        + cov_coeff * (covariance(z1) + covariance(z2))
    )
