"""Pure functions behind Nemesis: position norms, PUN, PAN (alpha, loss, variants) and the omega schedule.

No model and no I/O here: everything takes and returns tensors (or plain numbers), so the training loop
can compose them and the tests can check them against hand computation. The rules (Fu et al., ICLR 2024;
docs/methods.md writes them out):

- norm of a position: ``||p_i||_q`` with q in {2 (default), 1, inf};
- PUN:  ``L_pun = A * mean_i ||p_i||_q``;
- class-specific context: the norm of a position is the mean over classes (ours) or the sum (the
  reference code's, ``class_reduction="sum"``: the same A pulls num_classes times harder);
- PAN:  ``alpha_j = A`` where rescaling position j alone (by CW) strictly raises the batch's correct count,
  else 0; ``L_pan = sum_j alpha_j ||p_j||_q / max(1, #nonzero alpha)``;
- total: ``CE + omega(t) * (beta * L_pun + (1 - beta) * L_pan)``, ``omega(t) = 1 - sigmoid(0.2 (t - T/2))``.

Context tensors are either generic, shape ``(n_ctx, width)``, or class-specific (CSC), shape
``(num_classes, n_ctx, width)``. For CSC a "position" means that position in every class's context.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nemesis_analysis.errors import ConfigError

NORM_TYPES: tuple[str, ...] = ("l2", "l1", "inf")
CLASS_REDUCTIONS: tuple[str, ...] = ("mean", "sum")
OMEGA_SCHEDULES: tuple[str, ...] = ("sigmoid", "constant")


def _norm_ord(norm_type: str) -> float:
    """Map a norm name to the ``ord`` of ``torch.linalg.vector_norm``."""
    if norm_type == "l2":
        return 2.0
    elif norm_type == "l1":
        return 1.0
    elif norm_type == "inf":
        return math.inf
    else:
        raise ConfigError(f"unknown norm_type {norm_type!r}; choose one of {', '.join(NORM_TYPES)}")


def _check_ctx(ctx: Tensor) -> None:
    if ctx.dim() not in (2, 3):
        raise ValueError(f"ctx must be (n_ctx, width) or (num_classes, n_ctx, width), got shape {tuple(ctx.shape)}")


def position_norms(ctx: Tensor, norm_type: str = "l2", class_reduction: str = "mean") -> Tensor:
    """Norm of each context position, shape ``(n_ctx,)``; differentiable.

    Generic ctx ``(n_ctx, width)``: ``||p_i||_q``. CSC ctx ``(num_classes, n_ctx, width)``: the norm of each
    (class, position) vector, averaged over classes (``class_reduction="mean"``: the mean of norms, not the
    norm of the mean) or summed over them (``"sum"``, the reference's).
    """
    _check_ctx(ctx)
    ord_ = _norm_ord(norm_type)
    norms = torch.linalg.vector_norm(ctx, ord=ord_, dim=-1)  # (n_ctx,) or (num_classes, n_ctx)
    if norms.dim() == 2:
        if class_reduction == "mean":
            norms = norms.mean(dim=0)  # (n_ctx,): average over classes
        elif class_reduction == "sum":
            norms = norms.sum(dim=0)  # (n_ctx,): sum over classes
        else:
            choices = ", ".join(CLASS_REDUCTIONS)
            raise ConfigError(f"unknown class reduction {class_reduction!r}; choose one of {choices}")
    return norms


def pun_loss(ctx: Tensor, weight: float, norm_type: str = "l2", class_reduction: str = "mean") -> Tensor:
    """Position-Uniform Normalization: ``weight * mean_i ||p_i||_q`` (a scalar tensor)."""
    return weight * position_norms(ctx, norm_type, class_reduction).mean()


def pan_alpha(correct_base: int | Tensor, correct_rescaled: Tensor, weight: float) -> Tensor:
    """PAN's per-position weights, shape ``(NP,)``, float32 on ``correct_rescaled``'s device.

    ``correct_rescaled[j]`` is the batch's number of correct predictions with the j-th selected position
    rescaled alone; ``correct_base`` the number without any rescaling. ``alpha_j = weight`` where
    rescaling strictly raises the count (a tie is not an improvement), else 0. Computed without gradient.
    """
    if correct_rescaled.dim() != 1:
        raise ValueError(f"correct_rescaled must have shape (NP,), got {tuple(correct_rescaled.shape)}")
    improved = correct_rescaled > torch.as_tensor(correct_base, device=correct_rescaled.device)  # (NP,) bool
    return improved.to(torch.float32) * weight


def pan_loss(
    ctx: Tensor, positions: Tensor, alpha: Tensor, norm_type: str = "l2", class_reduction: str = "mean"
) -> Tensor:
    """Position-Aware Normalization: ``sum_j alpha_j ||p_{positions[j]}||_q / max(1, #nonzero alpha)``.

    ``positions`` and ``alpha`` both have shape ``(NP,)``; with all alphas zero the loss is exactly 0
    (still a graph-connected scalar). Stays on the device: no host synchronisation.
    """
    if positions.shape != alpha.shape or positions.dim() != 1:
        raise ValueError(
            f"positions and alpha must both have shape (NP,), got {tuple(positions.shape)} and {tuple(alpha.shape)}"
        )
    norms = position_norms(ctx, norm_type, class_reduction)[positions.to(device=ctx.device, dtype=torch.long)]  # (NP,)
    alpha = alpha.to(device=norms.device, dtype=norms.dtype)
    num_active = torch.count_nonzero(alpha).clamp(min=1).to(norms.dtype)  # scalar, >= 1
    return (alpha * norms).sum() / num_active


def choose_pan_positions(n_ctx: int, num_positions: int, generator: torch.Generator) -> Tensor:
    """Pick ``num_positions`` distinct positions in ``0..n_ctx-1`` at random, returned sorted ascending.

    Shape ``(num_positions,)``, dtype long, on CPU (the generator's device). The same generator state
    gives the same positions.
    """
    if n_ctx < 1:
        raise ConfigError(f"n_ctx must be >= 1, got {n_ctx}")
    if not 1 <= num_positions <= n_ctx:
        raise ConfigError(
            f"num_positions must be between 1 and n_ctx={n_ctx}, got {num_positions}; lower the PAN position count"
        )
    perm = torch.randperm(n_ctx, generator=generator, device=generator.device)  # (n_ctx,)
    return perm[:num_positions].sort().values


def rescale_positions_variants(ctx: Tensor, positions: Tensor, factor: float) -> Tensor:
    """Stack of NP context variants for PAN's pre-inference, shape ``(NP, *ctx.shape)``.

    Variant j equals ``ctx`` with position ``positions[j]`` multiplied by ``factor`` (for CSC, in every
    class); every other entry is ``ctx`` exactly (it is multiplied by 1.0). Meant to be called under
    ``torch.no_grad()``, but differentiable all the same.
    """
    _check_ctx(ctx)
    if positions.dim() != 1:
        raise ValueError(f"positions must have shape (NP,), got {tuple(positions.shape)}")
    n_ctx = ctx.shape[-2]
    num_variants = positions.shape[0]
    scale = torch.ones(num_variants, n_ctx, dtype=ctx.dtype, device=ctx.device)  # (NP, n_ctx)
    rows = torch.arange(num_variants, device=ctx.device)
    scale[rows, positions.to(device=ctx.device, dtype=torch.long)] = factor
    if ctx.dim() == 2:
        return ctx.unsqueeze(0) * scale[:, :, None]  # (NP, n_ctx, width)
    return ctx.unsqueeze(0) * scale[:, None, :, None]  # (NP, num_classes, n_ctx, width)


def omega(epoch: int, num_epochs: int, schedule: str = "sigmoid") -> float:
    """Weight of the normalisation loss at a 0-based ``epoch`` out of ``num_epochs``.

    ``"sigmoid"``: ``1 - sigmoid(0.2 * (epoch - num_epochs / 2))``, which starts near 1, is 0.5 at the
    middle epoch and decays towards 0, so the norm loss stops fighting CE late in training.
    ``"constant"``: 1.0.
    """
    if num_epochs < 1:
        raise ConfigError(f"num_epochs must be >= 1, got {num_epochs}")
    if epoch < 0:
        raise ConfigError(f"epoch is 0-based and must be >= 0, got {epoch}")
    if schedule == "sigmoid":
        x = 0.2 * (epoch - num_epochs / 2)
        # 1 - sigmoid(x) == sigmoid(-x); written to avoid overflow of exp for large |x|.
        if x >= 0:
            e = math.exp(-x)
            return e / (1.0 + e)
        return 1.0 / (1.0 + math.exp(x))
    elif schedule == "constant":
        return 1.0
    else:
        raise ConfigError(f"unknown omega schedule {schedule!r}; choose one of {', '.join(OMEGA_SCHEDULES)}")


def nemesis_loss(pun: Tensor, pan: Tensor, beta: float, omega_value: float) -> Tensor:
    """Nemesis norm loss: ``omega * (beta * pun + (1 - beta) * pan)``; beta = 1 is PUN alone, 0 is PAN alone."""
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"beta must be between 0 and 1 (1 = PUN only, 0 = PAN only), got {beta}")
    return omega_value * (beta * pun + (1.0 - beta) * pan)
