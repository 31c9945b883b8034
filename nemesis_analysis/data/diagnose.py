"""Check a data root before a long run: which CoOp datasets are there, how big, and what is broken.

Every problem is one line that names the file and the fix. Nothing is written, moved or deleted:
the checks only list folders, read split files through the real readers and open images with PIL.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.data.coop import LAYOUTS
from nemesis_analysis.data.registry import (
    DATA_ROOT_ENV,
    DATASETS,
    DatasetEntry,
    dataset_names,
    resolve_data_root,
)
from nemesis_analysis.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_SAMPLE_SIZE = 50  # images opened per split: catches a broken extraction without decoding ImageNet
MAX_EXAMPLES = 3  # file names quoted per problem line


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


def _examples(paths: list[str]) -> str:
    shown = ", ".join(paths[:MAX_EXAMPLES])
    return shown + (f" and {len(paths) - MAX_EXAMPLES} more" if len(paths) > MAX_EXAMPLES else "")


def _spread(samples: list[Sample], sample_size: int | None) -> list[Sample]:
    """Up to ``sample_size`` samples spread evenly over the list (covers every class of a class-sorted split)."""
    if sample_size is None or len(samples) <= sample_size:
        return samples
    if sample_size <= 0:
        return []
    step = len(samples) / sample_size
    return [samples[int(i * step)] for i in range(sample_size)]


def _unreadable_reason(path: str) -> str | None:
    """Why PIL cannot decode ``path``, or None when it can. Decoding (``load``) catches truncated files too."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_split_files(name: str, split: str, samples: list[Sample], sample_size: int | None) -> list[str]:
    """Problems of one split: entries whose file is missing (all checked), images PIL cannot open (a sample)."""
    problems = []
    missing = [s.source for s in samples if not os.path.isfile(s.source)]
    if missing:
        problems.append(
            f"{name}: {len(missing)} of {len(samples)} {split} entries point at missing files ({_examples(missing)}); "
            f"re-extract the images so these paths exist, or download the split file again ({_how_to_get(name)})"
        )
    missing_set = set(missing)
    sampled = [s for s in _spread(samples, sample_size) if s.source not in missing_set]
    broken = [(s.source, reason) for s in sampled if (reason := _unreadable_reason(s.source)) is not None]
    if broken:
        first_path, first_reason = broken[0]
        problems.append(
            f"{name}: {len(broken)} of {len(sampled)} sampled {split} images cannot be opened "
            f"({_examples([p for p, _ in broken])}; first error {first_reason}); replace them with intact copies "
            f"from the original archive ({_how_to_get(name)})"
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


def diagnose_datasets(
    root: Path | None,
    *,
    names: list[str] | None = None,
    sample_size: int | None = DEFAULT_SAMPLE_SIZE,
) -> list[DatasetReport]:
    """Report every registered on-disk dataset (or ``names``) under the data root, modifying nothing.

    ``root`` falls back to ``$NEMESIS_DATA``. Every split entry's file is checked for existence;
    ``sample_size`` images per split (None: all) are decoded with PIL, which is what a training run
    would hit first. Datasets without a folder (embedded ones) are skipped.
    """
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
