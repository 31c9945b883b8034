"""Deterministic few-shot sampling by (shots, seed), checked for short classes first, saved as JSON for the user."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.errors import DataError

logger = logging.getLogger(__name__)
MAX_LISTED = 10  # short classes named in one line


@dataclass(frozen=True)
class ShortClass:
    """A class with fewer training images than the requested shots (``count`` may be 0)."""

    label: int
    name: str
    count: int


def short_classes(dataset: DatasetSplits, shots: int) -> list[ShortClass]:
    """Every class of ``dataset`` with fewer than ``shots`` training images, by label."""
    counts = Counter(s.label for s in dataset.train)
    return [
        ShortClass(label, name, counts.get(label, 0))
        for label, name in enumerate(dataset.classnames)
        if counts.get(label, 0) < shots
    ]


def describe_short_classes(dataset: DatasetSplits, shots: int, short: list[ShortClass]) -> str:
    """One line, e.g. ``2 of 10 classes of pets have fewer than 16 training images (images in parentheses): dog (0),
    cat (2)``."""
    listed = ", ".join(f"{c.name} ({c.count})" for c in short[:MAX_LISTED])
    more = f" and {len(short) - MAX_LISTED} more" if len(short) > MAX_LISTED else ""
    wanted = "no training images" if shots == 1 else f"fewer than {shots} training images"
    return (
        f"{len(short)} of {dataset.num_classes} classes of {dataset.name} have {wanted} (images in parentheses): "
        f"{listed}{more}"
    )


def check_shots(dataset: DatasetSplits, shots: int, allow_missing_classes: bool = False) -> list[ShortClass]:
    """Classes with fewer than ``shots`` training images; a one-line DataError unless ``allow_missing_classes``.

    With ``allow_missing_classes`` the problem is logged as a warning and returned, and training uses
    what exists (all images of a short class; none of an empty one, which stays in the classifier).
    Test-only datasets (no train split) have nothing to check.
    """
    if not dataset.train:
        return []
    short = short_classes(dataset, shots)
    if not short:
        return []
    line = describe_short_classes(dataset, shots, short)
    if not allow_missing_classes:
        raise DataError(f"{line}; add images, lower --shots, or pass --allow-missing-classes to train with what exists")
    logger.warning("%s; training with what exists (--allow-missing-classes)", line)
    return short


def sample_train_shots(
    dataset: DatasetSplits, shots: int, seed: int, allow_missing_classes: bool = False
) -> tuple[list[Sample], list[Sample]]:
    """(train, val) few-shot samples of a run, checked before any work: enough shots per class
    (:func:`check_shots`) and every picked image present and intact (a header check naming file and split).

    Val gets ``min(shots, 4)`` per class, as CoOp; it is empty when the dataset has no val split.
    """
    check_shots(dataset, shots, allow_missing_classes)
    train = sample_few_shot(dataset.train, shots, seed)
    val = sample_few_shot(dataset.val, min(shots, 4), seed) if dataset.val else []
    dataset.check_samples(train + val)
    return train, val


def sample_few_shot(samples: list[Sample], shots: int, seed: int) -> list[Sample]:
    """Pick ``shots`` samples per class (all of them when a class has fewer), reproducibly.

    The choice depends only on (samples, shots, seed): a class's picks do not change when other
    classes are added. The result is ordered by class, then by the original order.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        by_class[sample.label].append(index)
    chosen: list[int] = []
    for label in sorted(by_class):
        indices = by_class[label]
        rng = random.Random(f"{seed}-{label}")
        picked = indices if len(indices) <= shots else rng.sample(indices, shots)
        chosen.extend(sorted(picked))
    return [samples[i] for i in chosen]


def save_split(path: Path, splits: dict[str, list[Sample]], classnames: list[str]) -> None:
    """Write the sampled splits as JSON: ``{"classnames": [...], "train": [[source, label, name], ...], ...}``."""
    payload: dict = {"classnames": classnames}
    for name, samples in splits.items():
        payload[name] = [[s.source, s.label, classnames[s.label]] for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def load_split(path: Path) -> dict[str, list[Sample]]:
    payload = json.loads(Path(path).read_text())
    return {k: [Sample(src, int(lbl)) for src, lbl, *_ in v] for k, v in payload.items() if k != "classnames"}
