"""The embedded default dataset: scikit-learn's handwritten digits (1,797 8x8 images, ships offline).

Split once, stratified and seeded: 60% train, 10% val, 30% test. Images are served as 8x8 RGB PIL
images; the model's own preprocessing resizes them, exactly as it would a photo.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from nemesis_analysis.data.base import Augmentation, DatasetSplits, Sample
from nemesis_analysis.data.registry import register_dataset

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.6, 0.1, 0.3)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; scale to 0..255 once.
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # (n, 8, 8)
    return images, bunch.target.astype(np.int64)


def _load_digit(source: str) -> Image.Image:
    images, _ = _digits()
    index = int(source.split(":", 1)[1])
    return Image.fromarray(images[index], mode="L").convert("RGB")


def _split_indices(labels: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    rng = np.random.default_rng(SPLIT_SEED)
    train, val, test = [], [], []
    for label in np.unique(labels):
        indices = np.flatnonzero(labels == label)
        rng.shuffle(indices)
        n_train = int(round(SPLIT_FRACTIONS[0] * len(indices)))
        n_val = int(round(SPLIT_FRACTIONS[1] * len(indices)))
        train += indices[:n_train].tolist()
        val += indices[n_train : n_train + n_val].tolist()
        test += indices[n_train + n_val :].tolist()
    return sorted(train), sorted(val), sorted(test)


@register_dataset(
    "digits", folder=None, label="Digits", description="scikit-learn handwritten digits (embedded, offline)"
)
def load_digits_dataset(root=None) -> DatasetSplits:
    _, labels = _digits()
    train, val, test = _split_indices(labels)

    def samples(indices: list[int]) -> list[Sample]:
        return [Sample(f"digits:{i}", int(labels[i])) for i in indices]

    return DatasetSplits(
        name="digits",
        classnames=list(DIGIT_NAMES),
        train=samples(train),
        val=samples(val),
        test=samples(test),
        load_image=_load_digit,
        # Flipping a digit changes its meaning and tiny crops erase it: milder than CoOp's default.
        augmentation=Augmentation(crop_scale=(0.5, 1.0), flip=False),
        template="a photo of a {}.",
        sources_are_files=False,  # sources are "digits:<index>" keys into the embedded array
    )
