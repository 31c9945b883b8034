"""Corruption rows of a run evaluated per class subset (base2new: base and new classes), from per-subset accuracies.

The sweep computes, for each subset this module names, the accuracy of the uncorrupted prompt and of every
variant on the subset's test images with the subset's class names; :func:`corruption_rows` turns those
numbers into ``corruptions`` rows (one per variant and subset, ``eval_classes`` set), so the Low-Norm
Effect is measured separately on seen and unseen classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nemesis_analysis import protocols
from nemesis_analysis.choices import EvalClasses, Protocol, choice
from nemesis_analysis.data.base import DatasetSplits
from nemesis_analysis.evaluate import subset_scores


@dataclass(frozen=True)
class ClassSubset:
    """The test images and class names a sweep evaluates for one ``eval_classes`` value."""

    eval_classes: str
    classnames: list[str]
    features: torch.Tensor  # (n, embed), the subset's test images
    labels: torch.Tensor  # (n,), relabelled from 0


@dataclass(frozen=True)
class SubsetAccuracies:
    """What the sweep measured on one class subset: the uncorrupted accuracy and one per variant (grid order)."""

    eval_classes: str
    acc_original: float
    accs: Sequence[float]
    n_test: int


def sweep_classes(protocol: Protocol | str) -> tuple[EvalClasses, ...]:
    """The class subsets a corruption sweep evaluates: base and new for base2new, all otherwise."""
    if choice(Protocol, protocol, "protocol") is Protocol.BASE2NEW:
        return (EvalClasses.BASE, EvalClasses.NEW)
    return (EvalClasses.ALL,)


def class_subsets(
    protocol: Protocol | str, dataset: DatasetSplits, features: torch.Tensor, labels: torch.Tensor
) -> list[ClassSubset]:
    """Each subset of :func:`sweep_classes` from the *whole* test split's features and labels (cached once)."""
    subsets = []
    for classes in sweep_classes(protocol):
        selected = protocols.selected_labels(range(dataset.num_classes), classes)
        kept, relabelled = subset_scores(features, labels, selected)
        subsets.append(ClassSubset(classes.value, [dataset.classnames[i] for i in selected], kept, relabelled))
    return subsets


def corruption_rows(
    identity: dict,
    corruptions: Sequence,
    norms_before: Sequence[float],
    norms_after: Sequence[float],
    subsets: Sequence[SubsetAccuracies],
) -> list[dict]:
    """``corruptions`` rows: per subset, the baseline row then one row per corruption.

    ``corruptions``: objects with op, position, factor, rep (corrupt_ops.Corruption), without the baseline.
    ``norms_before``: the uncorrupted context's norm per position; ``norms_after[i]``: the norm of the
    corrupted position of variant i. The baseline row holds the mean position norm in both norm columns.
    """
    mean_norm = float(sum(norms_before) / len(norms_before))
    rows = []
    for subset in subsets:
        if len(subset.accs) != len(corruptions):
            raise ValueError(f"{subset.eval_classes}: {len(subset.accs)} accuracies for {len(corruptions)} corruptions")
        common = {**identity, "acc_original": float(subset.acc_original), "n_test": int(subset.n_test),
                  "eval_classes": subset.eval_classes}  # fmt: skip
        rows.append({**common, "op": "none", "position": -1, "factor": 1.0, "rep": 0, "acc": float(subset.acc_original),
                     "delta": 0.0, "norm_before": mean_norm, "norm_after": mean_norm, "low_norm_effect": False})  # fmt: skip
        for corruption, acc, after in zip(corruptions, subset.accs, norms_after):
            before = float(norms_before[corruption.position])
            delta = float(acc) - float(subset.acc_original)
            rows.append({**common, "op": corruption.op, "position": int(corruption.position),
                         "factor": float(corruption.factor), "rep": int(corruption.rep), "acc": float(acc),
                         "delta": delta, "norm_before": before, "norm_after": float(after),
                         "low_norm_effect": bool(float(after) < before and delta > 0)})  # fmt: skip
    return rows
