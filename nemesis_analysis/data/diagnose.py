"""Check datasets before a long run: which CoOp datasets are there (or a custom one), how big, and what is broken.

Every problem is one line that names the file and the fix. Nothing is written, moved or deleted:
the checks only list folders, read split files through the real readers and open images with PIL.
Custom datasets (``folder:PATH``, ``manifest:PATH``) get the checks a training run would make first:
classes without (enough) training images, missing files, and a header check of every image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from nemesis_analysis.data import integrity
from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.data.coop import LAYOUTS
from nemesis_analysis.data.fewshot import describe_short_classes, short_classes
from nemesis_analysis.data.registry import (
    CUSTOM_PREFIXES,
    DATA_ROOT_ENV,
    DATASETS,
    DatasetEntry,
    dataset_names,
    load_dataset,
    resolve_data_root,
)
from nemesis_analysis.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_SAMPLE_SIZE = 50  # images opened per split: catches a broken extraction without decoding ImageNet
CUSTOM_FIX = "replace them with intact copies or remove them from the dataset"


@dataclass
class DatasetReport:
    """What :func:`diagnose_datasets` found for one dataset."""

    name: str
    root: Path  # the dataset's own folder (data root / registry folder)
    found: bool
    counts: dict[str, int] = field(default_factory=dict)  # images per split; empty when the split could not be read
    num_classes: int = 0
    problems: list[str] = field(default_factory=list)  # one line each: what is wrong and the exact fix

    @property
    def ok(self) -> bool:
        return self.found and not self.problems

    def summary(self) -> str:
        """One line for a terminal table."""
        if not self.found:
            return f"{self.name}: not found at {self.root}"
        counts = " ".join(f"{s}={self.counts[s]}" for s in SPLITS if s in self.counts) or "splits unreadable"
        status = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{self.name}: {self.num_classes} classes, {counts}, {status}"


def _how_to_get(name: str) -> str:
    layout = LAYOUTS.get(name)
    return layout.how_to_get() if layout is not None else "see the dataset's download instructions"


_examples = integrity.examples


def _spread(samples: list[Sample], sample_size: int | None) -> list[Sample]:
    """Up to ``sample_size`` samples spread evenly over the list (covers every class of a class-sorted split)."""
    if sample_size is None or len(samples) <= sample_size:
        return samples
    if sample_size <= 0:
        return []
    step = len(samples) / sample_size
    return [samples[int(i * step)] for i in range(sample_size)]


def check_split_files(
    name: str, split: str, samples: list[Sample], sample_size: int | None, header_check_all: bool = False
) -> list[str]:
    """Problems of one split: entries whose file is missing (all checked), images PIL cannot decode (a sample).

    ``header_check_all`` adds the cheap header check of every image (what training does first).
    """
    problems = []
    custom = name.startswith(CUSTOM_PREFIXES)
    missing = integrity.missing_sources(samples)
    if missing:
        fix = (
            "restore the files or remove them from the dataset"
            if custom
            else (f"re-extract the images so these paths exist, or download the split file again ({_how_to_get(name)})")
        )
        problems.append(
            f"{name}: {len(missing)} of {len(samples)} {split} entries point at missing files ({_examples(missing)}); "
            f"{fix}"
        )
    fix = CUSTOM_FIX if custom else f"replace them with intact copies from the original archive ({_how_to_get(name)})"
    missing_set = set(missing)
    if header_check_all:
        damaged = integrity.unreadable_images(samples)
        if damaged:
            problems.append(
                f"{name}: {len(damaged)} of {len(samples)} {split} images are damaged "
                f"({_examples([p for p, _ in damaged])}; first error {damaged[0][1]}); {fix}"
            )
        missing_set |= {p for p, _ in damaged}
    sampled = [s for s in _spread(samples, sample_size) if s.source not in missing_set]
    broken = integrity.unreadable_images(sampled, decode=True)
    if broken:
        first_path, first_reason = broken[0]
        problems.append(
            f"{name}: {len(broken)} of {len(sampled)} sampled {split} images cannot be opened "
            f"({_examples([p for p, _ in broken])}; first error {first_reason}); {fix}"
        )
    return problems


def _empty_split_problems(entry: DatasetEntry, splits: DatasetSplits) -> list[str]:
    # ImageNet has no val split by design (CoOp tests on the official val set); test-only sets have no train.
    required = ("test",) if entry.test_only else ("train", "test")
    return [
        f"{entry.name}: the {s} split is empty; re-extract the images or download the split file again "
        f"({_how_to_get(entry.name)})"
        for s in required
        if not splits.split(s)
    ]


def diagnose_dataset(entry: DatasetEntry, root: Path, sample_size: int | None = DEFAULT_SAMPLE_SIZE) -> DatasetReport:
    """Report one registered dataset under the data root ``root``."""
    dataset_dir = Path(root) / entry.folder
    if not dataset_dir.is_dir():
        return DatasetReport(
            entry.name,
            dataset_dir,
            found=False,
            problems=[f"{entry.name}: not found at {dataset_dir}; download it there ({_how_to_get(entry.name)})"],
        )
    try:
        splits = entry.reader(Path(root))
    except DataError as exc:
        return DatasetReport(entry.name, dataset_dir, found=True, problems=[str(exc)])
    except OSError as exc:  # e.g. permissions: still a report, not a crash of the whole diagnosis
        return DatasetReport(
            entry.name,
            dataset_dir,
            found=True,
            problems=[f"{entry.name}: cannot read {dataset_dir} ({exc}); check its permissions"],
        )
    problems = _empty_split_problems(entry, splits)
    for split in SPLITS:
        problems += check_split_files(entry.name, split, splits.split(split), sample_size)
    counts = {s: len(splits.split(s)) for s in SPLITS}
    return DatasetReport(entry.name, dataset_dir, True, counts, splits.num_classes, problems)


def class_problems(name: str, splits: DatasetSplits, shots: int | None) -> list[str]:
    """Classes without training images (always a problem), or with fewer than ``shots`` when given: one line."""
    if not splits.train:
        return []
    short = short_classes(splits, 1 if shots is None else shots)
    if not short:
        return []
    line = describe_short_classes(splits, 1 if shots is None else shots, short)
    return [f"{name}: {line}; add images, lower --shots, or train with --allow-missing-classes"]


def diagnose_custom(
    spec: str, *, shots: int | None = None, sample_size: int | None = DEFAULT_SAMPLE_SIZE
) -> DatasetReport:
    """Report a ``folder:PATH`` or ``manifest:PATH`` dataset as training would see it, modifying nothing.

    Problems: the loader's own error (missing manifest files, bad columns...), empty train/test
    splits, classes with no training image (or fewer than ``shots``), and per split the missing and
    damaged images (header check of every image, full decode of ``sample_size`` of them).
    """
    path = Path(spec.partition(":")[2]).expanduser()
    if not path.exists():
        return DatasetReport(spec, path, found=False, problems=[f"{spec}: {path} not found; check the path"])
    try:
        splits = load_dataset(spec)
    except DataError as exc:
        return DatasetReport(spec, path, found=True, problems=[str(exc)])
    except OSError as exc:
        problem = f"{spec}: cannot read {path} ({exc}); check its permissions"
        return DatasetReport(spec, path, found=True, problems=[problem])
    problems = [f"{spec}: the {s} split is empty; add images to it" for s in ("train", "test") if not splits.split(s)]
    problems += class_problems(spec, splits, shots)
    problems += [f"{spec}: {note}" for note in splits.notes]
    for split in SPLITS:
        problems += check_split_files(spec, split, splits.split(split), sample_size, header_check_all=True)
    counts = {s: len(splits.split(s)) for s in SPLITS}
    return DatasetReport(spec, path, True, counts, splits.num_classes, problems)


def diagnose_datasets(
    root: Path | None,
    *,
    names: list[str] | None = None,
    sample_size: int | None = DEFAULT_SAMPLE_SIZE,
    shots: int | None = None,
) -> list[DatasetReport]:
    """Report every registered on-disk dataset (or ``names``) under the data root, modifying nothing.

    ``root`` falls back to ``$NEMESIS_DATA``. Every split entry's file is checked for existence;
    ``sample_size`` images per split (None: all) are decoded with PIL, which is what a training run
    would hit first. Datasets without a folder (embedded ones) are skipped. ``names`` may also hold
    custom specs (``folder:PATH``, ``manifest:PATH``, see :func:`diagnose_custom`, which uses
    ``shots``); a data root is needed only for registered datasets.
    """
    custom = [n for n in names or [] if n.startswith(CUSTOM_PREFIXES)]
    custom_reports = [diagnose_custom(n, shots=shots, sample_size=sample_size) for n in custom]
    if names is not None and len(custom) == len(names):
        return custom_reports
    names = None if names is None else [n for n in names if n not in custom]
    return _diagnose_registered(root, names, sample_size) + custom_reports


def _diagnose_registered(root: Path | None, names: list[str] | None, sample_size: int | None) -> list[DatasetReport]:
    resolved = resolve_data_root(root)
    if resolved is None:
        raise DataError(
            f"diagnose needs --data-root DIR (or {DATA_ROOT_ENV}) pointing at the folder that holds the datasets"
        )
    if not resolved.is_dir():
        raise DataError(
            f"data root {resolved} does not exist; pass --data-root DIR (or {DATA_ROOT_ENV}) "
            f"pointing at an existing folder"
        )
    entries = [DATASETS[n] for n in dataset_names() if DATASETS[n].folder is not None]
    if names is not None:
        known = {e.name for e in entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"cannot diagnose {unknown}: not on-disk datasets; choose from: {', '.join(sorted(known))}"
            )
        entries = [e for e in entries if e.name in names]
    reports = []
    for entry in entries:
        report = diagnose_dataset(entry, resolved, sample_size)
        logger.info("%s", report.summary())
        reports.append(report)
    return reports
