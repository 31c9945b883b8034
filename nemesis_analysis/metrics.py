"""Top-1 predictions from cosine scores, and how to compare the predictions of two code paths.

The batched text pass (sequences cut at the longest EOS, many variants at once) and the naive one (77
tokens, one variant at a time) compute the same cosines up to float32 rounding, about 1e-7. Where two
classes' scores agree to that precision, which is common for corruptions that wipe out the prompt (every
class then gets nearly the same text feature), rounding alone picks the winner, so the two paths can
differ there and nowhere else. :func:`differing_predictions` checks exactly that.
"""

from __future__ import annotations

import torch

TIE_TOLERANCE = 1e-6  # in cosine similarity: float32 noise is ~1e-7


def predict_classes(scores: torch.Tensor) -> torch.Tensor:
    """Top-1 class along the last axis: (...,) long."""
    return scores.argmax(dim=-1)


def top1_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of scores (n, classes) against labels (n,)."""
    predictions = predict_classes(scores).cpu()
    return 100.0 * float((predictions == labels.cpu()).double().mean())


def differing_predictions(
    reference_scores: torch.Tensor, other_predictions: torch.Tensor, tolerance: float = TIE_TOLERANCE
) -> int:
    """How many predictions differ from the reference's; raises if any is more than a float tie.

    ``reference_scores`` (..., classes); ``other_predictions`` (...,). A difference is a tie when the
    reference scores of the two classes are within ``tolerance`` of each other.
    """
    reference = predict_classes(reference_scores)
    other = other_predictions.to(reference.device)
    differ = reference != other
    if not bool(differ.any()):
        return 0
    best = reference_scores.gather(-1, reference.unsqueeze(-1)).squeeze(-1)[differ]
    chosen = reference_scores.gather(-1, other.unsqueeze(-1)).squeeze(-1)[differ]
    gap = float((best - chosen).abs().max())
    if gap > tolerance:
        raise AssertionError(
            f"{int(differ.sum())} of {differ.numel()} predictions differ, by more than a float tie "
            f"(largest score gap {gap:.3g} > {tolerance:g})"
        )
    return int(differ.sum())
