"""What every dataset reader returns: class names and three lists of samples."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``source`` is a file path, or a key that the dataset's loader understands."""

    source: str
    label: int


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation of a dataset (CoOp: random-resized-crop with scale (0.08, 1) and horizontal flip)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True


def open_rgb(path: str) -> Image.Image:
    """Default loader: read an image file as RGB."""
    with Image.open(path) as image:
        return image.convert("RGB")


@dataclass
class DatasetSplits:
    """A dataset ready for few-shot learning.

    ``train``/``val``/``test`` hold every sample of each split (few-shot sampling happens later,
    in :mod:`nemesis_analysis.data.fewshot`). ``val`` or ``train`` may be empty for test-only datasets.
    """

    name: str
    classnames: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    load_image: Callable[[str], Image.Image] = open_rgb
    augmentation: Augmentation = field(default_factory=Augmentation)
    template: str = "a photo of a {}."  # hand-crafted prompt for zero-shot accuracy (CoOp's per dataset)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Sample]:
        if name == "train":
            return self.train
        elif name == "val":
            return self.val
        elif name == "test":
            return self.test
        else:
            raise ValueError(f"unknown split {name!r}; expected train, val or test")


def fingerprint_samples(samples: list[Sample]) -> str:
    """A short content hash of a sample list (sources and labels, in order)."""
    digest = hashlib.sha256(json.dumps([[s.source, s.label] for s in samples]).encode())
    return digest.hexdigest()[:16]
