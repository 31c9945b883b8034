"""Entropic optimal transport with uniform marginals (batched Sinkhorn), as PLOT matches prompts to image regions.

Pure functions on tensors of any float dtype. Each problem of a batch stops on its own convergence test
(the mean absolute change of its row scaling ``r`` below ``threshold``), so a problem's plan does not
depend on which other problems share its batch: results are the same whatever the chunking.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPSILON = 0.1  # PLOT's entropic regulariser
MAX_ITER = 100  # PLOT's iteration cap
THRESHOLD = 1e-2  # PLOT's stopping test on the mean absolute change of r
CHECK_EVERY = 8  # updates between host-side checks that every problem has stopped


@torch.no_grad()
def sinkhorn_plan(
    cost: Tensor, epsilon: float = EPSILON, max_iter: int = MAX_ITER, threshold: float = THRESHOLD
) -> Tensor:
    """Transport plans ``(..., rows, cols)`` for costs ``(..., rows, cols)`` between uniform marginals.

    Kernel ``K = exp(-cost / epsilon)``; scalings start at ones and alternate ``r = a / (K c)``,
    ``c = b / (K^T r)`` with ``a = 1/rows``, ``b = 1/cols``; the plan is ``r_i K_ij c_j``. A problem stops
    updating once the mean of ``|r - r_previous|`` falls below ``threshold`` (after at most ``max_iter``
    updates). Computed without gradient: PLOT differentiates the distance through the cost, not the plan.
    """
    *batch, rows, cols = cost.shape
    kernel = torch.exp(-cost.detach() / epsilon).reshape(-1, rows, cols)  # (problems, rows, cols)
    a = torch.full((kernel.shape[0], rows), 1.0 / rows, dtype=cost.dtype, device=cost.device)
    b = torch.full((kernel.shape[0], cols), 1.0 / cols, dtype=cost.dtype, device=cost.device)
    r, c = torch.ones_like(a), torch.ones_like(b)
    active = torch.ones(kernel.shape[0], dtype=torch.bool, device=cost.device)
    for iteration in range(max_iter):
        r_new = a / torch.bmm(kernel, c.unsqueeze(-1)).squeeze(-1)  # (problems, rows)
        c_new = b / torch.bmm(kernel.transpose(1, 2), r_new.unsqueeze(-1)).squeeze(-1)  # (problems, cols)
        change = (r_new - r).abs().mean(dim=-1)  # (problems,)
        r = torch.where(active[:, None], r_new, r)
        c = torch.where(active[:, None], c_new, c)
        active = active & (change >= threshold)
        # Asking whether any problem is still active syncs with the device: only every CHECK_EVERY updates
        # (stopped problems stay frozen in between, so the plans do not depend on it).
        if (iteration + 1) % CHECK_EVERY == 0 and not bool(active.any()):
            break
    plan = r.unsqueeze(-1) * kernel * c.unsqueeze(-2)  # (problems, rows, cols)
    return plan.reshape(*batch, rows, cols)


def ot_similarity(
    similarity: Tensor, epsilon: float = EPSILON, max_iter: int = MAX_ITER, threshold: float = THRESHOLD
) -> Tensor:
    """PLOT's matching score ``sum_ij T_ij * sim_ij`` of similarities ``(..., rows, cols)``: ``(...,)``.

    The cost is ``1 - sim``; the plan ``T`` (:func:`sinkhorn_plan`) carries no gradient, the score does
    through ``sim``. With a converged plan (total mass 1) this is ``1 -`` the OT distance ``<T, cost>``.
    """
    plan = sinkhorn_plan(1.0 - similarity, epsilon, max_iter, threshold)
    return (plan * similarity).sum(dim=(-2, -1))
