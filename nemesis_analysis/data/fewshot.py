"""Deterministic few-shot sampling by (shots, seed), saved as JSON so users can see which images were used."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from nemesis_analysis.data.base import Sample


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
