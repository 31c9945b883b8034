"""What every dataset reader returns: class names, three lists of samples and the dataset's identity."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from nemesis_analysis.data import integrity
from nemesis_analysis.errors import DataError

SPLITS = ("train", "val", "test")


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


@dataclass(frozen=True)
class _NamedErrorLoader:
    """Wraps a file loader so that a file it cannot read is a one-line DataError naming the file and split."""

    inner: Callable[[str], Image.Image]
    dataset: DatasetSplits = field(compare=False, repr=False)

    def __call__(self, source: str) -> Image.Image:
        try:
            return self.inner(source)
        except integrity.IMAGE_ERRORS as exc:  # OSError covers missing and truncated files
            split = self.dataset.split_of(source) or "unknown"
            raise DataError(
                f"{self.dataset.name}: {split} image {source} cannot be read ({type(exc).__name__}: {exc}); "
                f"replace it with an intact copy or remove it from the dataset"
            ) from None


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
    # What loading dropped or repaired, one line each (e.g. a manifest's exact duplicate rows): `nemesis
    # datasets` reports them.
    notes: list[str] = field(default_factory=list)
    # Content fingerprint of a custom dataset (resolved path + file list with sizes and times, see
    # :func:`fingerprint_files`); "" for built-in datasets, whose name alone identifies them.
    fingerprint: str = ""
    sources_are_files: bool = True  # False where ``source`` is a key for ``load_image`` (embedded datasets)
    _split_index: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sources_are_files:  # re-wrapped for dataclasses.replace, so errors name this dataset's splits
            inner = self.load_image.inner if isinstance(self.load_image, _NamedErrorLoader) else self.load_image
            self.load_image = _NamedErrorLoader(inner, self)

    @property
    def identity(self) -> str:
        """What names this dataset in run ids and feature caches: the name, plus the fingerprint when there is one.

        Built-in datasets keep their bare name, so their feature-cache keys and run ids are unchanged.
        """
        return f"{self.name}@{self.fingerprint}" if self.fingerprint else self.name

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split_of(self, source: str) -> str | None:
        """The split that holds ``source`` (the first of train, val, test), or None."""
        if self._split_index is None:
            index: dict[str, str] = {}
            for name in reversed(SPLITS):
                index.update((s.source, name) for s in self.split(name))
            self._split_index = index
        return self._split_index.get(source)

    def check_images(self, split: str, samples: list[Sample] | None = None) -> None:
        """Header-check the image files of ``samples`` (default: the whole split) before any work uses them.

        Raises a one-line DataError naming the missing or damaged files and the split. Costs about a
        tenth of a millisecond per file (see :mod:`nemesis_analysis.data.integrity`); does nothing for
        datasets whose sources are not files.
        """
        if self.sources_are_files:
            integrity.check_image_files(self.name, split, self.split(split) if samples is None else samples)

    def check_samples(self, samples: list[Sample]) -> None:
        """:meth:`check_images` for any sample list (e.g. a few-shot subset), named by the split each sample is in."""
        if not self.sources_are_files:
            return
        by_split: dict[str, list[Sample]] = {}
        for sample in samples:
            by_split.setdefault(self.split_of(sample.source) or "unknown", []).append(sample)
        for split, group in by_split.items():
            integrity.check_image_files(self.name, split, group)

    def split(self, name: str) -> list[Sample]:
        if name == "train":
            return self.train
        elif name == "val":
            return self.val
        elif name == "test":
            return self.test
        else:
            raise ValueError(f"unknown split {name!r}; expected train, val or test")


def fingerprint_files(
    root: Path, classnames: list[str], splits: dict[str, list[Sample]], what: str, fix: str = "fix the paths"
) -> str:
    """A 16-hex-digit fingerprint of a file-based dataset: resolved ``root``, class list, and per split the
    files with label, size, modification and change time (one ``stat`` per file: ~10 ms per 10,000 files).

    Missing files are a one-line DataError (how many, the first few) naming ``what`` (e.g. ``manifest m.csv``)
    and ending with ``fix``.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([str(Path(root).resolve()), list(classnames)]).encode())
    for split in sorted(splits):
        missing = []
        for sample in splits[split]:
            try:
                st = os.stat(sample.source)
            except OSError:
                missing.append(sample.source)
                continue
            entry = (split, sample.source, sample.label, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            digest.update(("\0".join(map(str, entry)) + "\n").encode())
        if missing:
            raise DataError(
                f"{what} names {len(missing)} {split} file(s) that do not exist ({integrity.examples(missing)}); {fix}"
            )
    return digest.hexdigest()[:16]


def fingerprint_samples(samples: list[Sample]) -> str:
    """A short content hash of a sample list (sources and labels, in order)."""
    digest = hashlib.sha256(json.dumps([[s.source, s.label] for s in samples]).encode())
    return digest.hexdigest()[:16]
