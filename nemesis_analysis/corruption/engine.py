"""The batched prediction engine: top-1 predictions of the test images under many variants of a prompt slot.

The image tower is frozen, so the test features are encoded once and every variant only costs a text
pass. Variants are stacked and pushed through the text tower together, in chunks that bound memory,
with sequences cut at the longest EOS (exact: CLIP's text mask is causal). Variants that change a single
position reuse the unchanged prompt's states before it when the method offers a prefix cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nemesis_analysis import devices
from nemesis_analysis.choices import CorruptionOp, Precision
from nemesis_analysis.clip.encoding import fp32_text_passes
from nemesis_analysis.corruption.ops import Corruption, apply_corruptions
from nemesis_analysis.methods.base import PromptMethod
from nemesis_analysis.metrics import predict_classes

# Floats allowed in one chunk's prompt activations, variants * classes * length * width; the text tower's
# MLP holds 4x that at its peak. On a CPU, moderate chunks stay cache-friendly (one 593-variant pass of the
# tiny CLIP is ~1.4x slower than two chunks); on a GPU the budget follows its free memory (devices.memory_budget).
CPU_MEMORY_BUDGET = 2**23  # 32 MiB in fp32


def auto_chunk(method: PromptMethod, memory_budget: int | None = None) -> int:
    """Variants per text pass so that variants * classes * length * width stays within ``memory_budget``
    (default: :data:`CPU_MEMORY_BUDGET` on CPU, a share of the free memory on CUDA)."""
    if memory_budget is None:
        memory_budget = devices.memory_budget(method.device, CPU_MEMORY_BUDGET)
    return max(1, int(memory_budget) // method.variant_floats())


@torch.no_grad()
def predict_variants(method: PromptMethod, slot_variants: Tensor, features: Tensor,
                     local_features: Tensor | None = None) -> Tensor:  # fmt: skip
    """Top-1 class of every test image under every slot variant: (variants, n_test), long, on the CPU.

    ``slot_variants`` (variants, *slot shape); ``features`` (n_test, embed), L2-normalised, on the model's
    device. One stacked text pass (cut at the longest EOS) for all variants; image-conditioned methods
    (CoCoOp) chunk over the images inside :meth:`~PromptMethod.variant_scores`.
    """
    device = method.device  # PLOT's local features (n_test, tokens, embed) stay where they are: it moves chunks
    scores = method.variant_scores(
        slot_variants.to(device), features.to(device), local_features
    )  # (variants, n_test, classes)
    return predict_classes(scores).cpu()


def prefix_cache(method: PromptMethod, slot_value: Tensor, reuse_prefix: bool = True):
    """The method's prefix cache of ``slot_value`` when it offers one (and it is wanted), else None."""
    return method.prefix_cache(slot_value) if reuse_prefix else None


@torch.no_grad()
def predict_single_position_variants(
    method: PromptMethod,
    cache,
    variants: Tensor,
    positions: Sequence[int],
    features: Tensor,
    local_features: Tensor | None = None,
) -> Tensor:
    """Predictions (variants, n_test) for variants that each change the one position given for them.

    With a prefix cache, variants are grouped by position and only the tokens from that position on are
    computed; without one, this is :func:`predict_variants`.
    """
    if cache is None:
        return predict_variants(method, variants, features, local_features)
    features = features.to(method.device)
    out = torch.empty(len(positions), features.shape[0], dtype=torch.long)
    for rows, scores in position_group_scores(method, cache, variants, positions, features, local_features):
        out[rows] = predict_classes(scores).cpu()
    return out


def position_group_scores(method: PromptMethod, cache, variants: Tensor, positions: Sequence[int], features: Tensor,
                          local_features: Tensor | None = None):  # fmt: skip
    """Yield (rows, scores (group, n_test, classes)) for the variants of each position. A cache with its own
    ``scores(variants, position, features, local)`` scores them (MaPLe: both towers from the first changed
    layer on); otherwise its ``text_features`` go through :meth:`PromptMethod.score_variants`."""
    for position in sorted(set(positions)):
        rows = [i for i, p in enumerate(positions) if p == position]
        if hasattr(cache, "scores"):
            yield rows, cache.scores(variants[rows], position, features, local_features)
        else:
            text = cache.text_features(variants[rows], position)  # (group, classes, embed)
            yield rows, method.score_variants(text, features, local_features)


def invisible_tolerance(method: PromptMethod) -> float:
    """Largest score difference still counted as float noise: 1e-5 on cosine scores in fp32 (different but
    exact passes differ by ~1e-7), 1e-2 under half precision or bf16 autocast (its rounding is ~4e-3)."""
    return 1e-5 if method.loaded.precision == Precision.FP32 else 1e-2


@torch.no_grad()
def variant_outcomes(
    method: PromptMethod, cache, variants: Tensor, positions: Sequence[int], features: Tensor,
    local_features: Tensor | None, original: Tensor,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(predictions (variants, n_test) long, invisible (variants,) bool) of single-position variants: a variant
    is invisible when its scores equal ``original`` (n_test, classes), the unchanged prompt's, to float
    precision (:func:`invisible_tolerance`)."""
    features, local = features.to(method.device), local_features  # PLOT's local features stay where they are
    predictions = torch.empty(len(positions), features.shape[0], dtype=torch.long)
    invisible = torch.zeros(len(positions), dtype=torch.bool)
    if cache is None:
        groups = [(list(range(len(positions))), method.variant_scores(variants.to(method.device), features, local))]
    else:
        groups = position_group_scores(method, cache, variants, positions, features, local)
    tolerance = invisible_tolerance(method)
    for rows, scores in groups:
        predictions[rows] = predict_classes(scores).cpu()
        gap = (scores.float() - original.to(scores.device, torch.float32)[None]).abs().flatten(1).amax(dim=1)
        invisible[rows] = (gap <= tolerance).cpu()
    return predictions, invisible


@fp32_text_passes()  # the baseline's plain pass and the variants' cached passes round alike
def predict_corruptions(
    method: PromptMethod,
    slot_value: Tensor,
    corruptions: Sequence[Corruption],
    run_id: str,
    features: Tensor,
    chunk: int | None = None,
    reuse_prefix: bool = True,
    local: Tensor | None = None,
) -> Tensor:
    """Batched predictions for every corruption of ``slot_value``: (len(corruptions), n_test), in order."""
    chunk = chunk or auto_chunk(method)
    slot_value = slot_value.detach().float().cpu()
    cache = prefix_cache(method, slot_value, reuse_prefix)
    parts = []
    for start in range(0, len(corruptions), chunk):
        part = corruptions[start : start + chunk]
        variants = apply_corruptions(slot_value, part, run_id)
        if any(c.op == CorruptionOp.NONE.value for c in part):  # the baseline changes no position: a plain pass
            parts.append(predict_variants(method, variants, features, local))
        else:
            positions = [c.position for c in part]
            parts.append(predict_single_position_variants(method, cache, variants, positions, features, local))
    if not parts:
        return torch.empty(0, features.shape[0], dtype=torch.long)
    return torch.cat(parts)


def accuracy_of(predictions: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy in percent of each row of predictions (variants, n_test): (variants,) float64."""
    return 100.0 * (predictions == labels[None]).double().mean(dim=1)


def variant_norms(variants: Tensor) -> Tensor:
    """L2 norm of each position of each variant, averaged over classes for CSC: (variants, n_ctx)."""
    norms = torch.linalg.vector_norm(variants.float(), ord=2, dim=-1)  # (variants, [classes,] n_ctx)
    return norms.mean(dim=1) if norms.dim() == 3 else norms


def paired_counts(predictions: Tensor, labels: Tensor, baseline_correct: Tensor) -> tuple[Tensor, Tensor]:
    """(n_gained, n_lost) of each row of predictions (variants, n_test) against the uncorrupted prompt's
    per-image correctness ``baseline_correct`` (n_test,) bool: images a variant newly gets right, and newly
    gets wrong. Both (variants,) int64; ``n_gained - n_lost`` is the change in correct images."""
    correct = predictions == labels[None]
    gained = (correct & ~baseline_correct[None]).sum(dim=1)
    lost = (~correct & baseline_correct[None]).sum(dim=1)
    return gained, lost
