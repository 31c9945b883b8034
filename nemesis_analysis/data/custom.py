"""Your own images without writing a reader: a folder of class folders, or a CSV/Parquet manifest.

Both return the same :class:`DatasetSplits` as the CoOp readers, so few-shot sampling, training and
corruption work unchanged. Nothing here registers a dataset: ``load_dataset("folder:PATH")`` and
``load_dataset("manifest:PATH")`` in :mod:`nemesis_analysis.data.registry` route to these functions.

The class list is defined once for the whole dataset and every split maps names to the same label
ids: for a folder, the sorted union of the class folder names over all splits (an empty or absent
class folder in one split changes no label); for a manifest, the declared class list when there is
one (a class-name file, by default ``classnames.txt`` beside the manifest, one name per line in label
order; required for integer labels), else the sorted union of the label names over all splits.
Classes with too few training images are reported by :func:`nemesis_analysis.data.fewshot.check_shots`.

Every sample path is absolute, and the dataset's ``fingerprint`` hashes the resolved path and every
file's size and times, so a moved, edited or different dataset never shares run ids or cached
features with another one. Files named by a manifest that do not exist are reported at load time.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from pathlib import Path

from nemesis_analysis.data.base import DatasetSplits, Sample, fingerprint_files
from nemesis_analysis.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MANIFEST_COLUMNS = ("path", "label", "split")
MANIFEST_CLASSNAMES_FILE = "classnames.txt"  # picked up beside a manifest by load_dataset("manifest:PATH")


# --------------------------------------------------------------------------------------------------
# Image folder: PATH/{train,val,test}/<class>/*.jpg
# --------------------------------------------------------------------------------------------------


def _class_folders(split_dir: Path) -> dict[str, list[str]]:
    """``class name -> sorted image paths`` of one split folder (hidden and non-image files skipped)."""
    out: dict[str, list[str]] = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[class_dir.name] = sorted(
            str(p)
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
    return out


def _display_names(where: Path, raw: list[str]) -> list[str]:
    """Folder/label names as prompts see them (``_`` -> space); two raw names that collide are a DataError."""
    names = [c.replace("_", " ") for c in raw]
    seen: dict[str, str] = {}
    for raw_name, name in zip(raw, names):
        if name in seen:
            raise DataError(
                f"{where}: classes {seen[name]!r} and {raw_name!r} both read as {name!r} in prompts; rename one of them"
            )
        seen[name] = raw_name
    return names


def _carve_val(train: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Move ``round(n * val_fraction)`` images of each class from train to val, keeping >= 1 in train."""
    by_class: dict[int, list[Sample]] = {}
    for sample in train:
        by_class.setdefault(sample.label, []).append(sample)
    kept, val = [], []
    for label in sorted(by_class):
        samples = by_class[label]
        n_val = min(round(len(samples) * val_fraction), len(samples) - 1)
        rng = random.Random(f"{seed}-{label}")  # per class, so adding a class leaves the others' picks unchanged
        picked = set(rng.sample(range(len(samples)), n_val)) if n_val > 0 else set()
        val.extend(s for i, s in enumerate(samples) if i in picked)
        kept.extend(s for i, s in enumerate(samples) if i not in picked)
    return kept, val


def load_image_folder(path: Path, val_fraction: float = 0.0, seed: int = 0) -> DatasetSplits:
    """Read ``path/train/<class>/*``, ``path/test/<class>/*`` and, if present, ``path/val/<class>/*``.

    Class names are the folder names (``_`` -> space) across all splits, sorted, so labels do not
    depend on which split a class happens to appear in. Without ``val/``, ``val_fraction`` of each
    train class is moved to val, reproducibly by ``seed``.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not path.is_dir():
        raise DataError(
            f"image folder {path} not found; point folder:PATH at a folder with train/<class>/ and test/<class>/"
        )
    for required in ("train", "test"):
        if not (path / required).is_dir():
            raise DataError(
                f"image folder {path} has no {required}/ subfolder; lay it out as {path}/train/<class>/*.jpg "
                f"and {path}/test/<class>/*.jpg (val/ is optional)"
            )
    has_val = (path / "val").is_dir()
    if has_val and val_fraction > 0:
        raise ConfigError(f"{path}/val/ exists, so val_fraction={val_fraction} would discard it; pass val_fraction=0")
    per_split = {s: _class_folders(path / s) for s in SPLITS if (path / s).is_dir()}
    folders = sorted({c for classes in per_split.values() for c in classes})
    if not folders:
        raise DataError(
            f"image folder {path} has no class folders; put images in {path}/train/<class>/ and {path}/test/<class>/"
        )
    label_of = {c: i for i, c in enumerate(folders)}
    splits = {s: [Sample(p, label_of[c]) for c, paths in per_split.get(s, {}).items() for p in paths] for s in SPLITS}
    if not has_val and val_fraction > 0:
        splits["train"], splits["val"] = _carve_val(splits["train"], val_fraction, seed)
    for s in ("train", "test"):
        if not splits[s]:
            raise DataError(f"image folder {path}/{s}/ holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    classnames = _display_names(path, folders)
    logger.info("%s: %d classes, %s", path, len(folders), {s: len(v) for s, v in splits.items()})
    return DatasetSplits(
        name=path.name,
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        fingerprint=fingerprint_files(
            path, classnames, splits, f"image folder {path}", "check that no other process is changing the folder"
        ),
    )


# --------------------------------------------------------------------------------------------------
# Manifest: CSV or Parquet with columns path, label, split
# --------------------------------------------------------------------------------------------------


def _read_table(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    elif suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    else:
        raise DataError(f"manifest {path} has suffix {suffix!r}; use a .csv or .parquet file")


def read_classnames_file(path: Path) -> list[str]:
    """One class name per line, in label order; blank lines are skipped."""
    if not Path(path).is_file():
        raise DataError(f"class-name file {path} not found; write one class name per line, ordered by label")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _labels_from_ints(path: Path, values: list, classnames: list[str] | None) -> tuple[list[int], list[str]]:
    if classnames is None:
        raise DataError(
            f"manifest {path} has integer labels but no class names; pass a class-name file with one name per "
            f"line ordered by label (or put {MANIFEST_CLASSNAMES_FILE} beside the manifest)"
        )
    labels = [int(v) for v in values]
    bad = sorted({v for v in labels if not 0 <= v < len(classnames)})
    if bad:
        raise DataError(
            f"manifest {path} has labels {bad[:5]} outside 0..{len(classnames) - 1} of the {len(classnames)} "
            f"class names; add the missing names to the class-name file"
        )
    return labels, classnames


def _labels_from_names(path: Path, values: list, classnames: list[str] | None) -> tuple[list[int], list[str]]:
    names = [str(v) for v in values]
    if classnames is None:
        classnames = sorted(set(names))
    label_of = {c: i for i, c in enumerate(classnames)}
    unknown = sorted(set(names) - set(label_of))
    if unknown:
        raise DataError(
            f"manifest {path} uses class names {unknown[:5]} that are not in the class-name file; add them to it"
        )
    return [label_of[n] for n in names], classnames


def manifest_row_problems(rows: list[tuple[str, int, str]]) -> tuple[list[tuple[str, int, str]], str, list[str]]:
    """(rows without exact duplicates, a note on the duplicates or "", refusals) for (path, label, split) rows.

    Refused: an image under two labels (it would be trained under both) and an image in test and in train
    or val (test accuracy would measure memory). Each is one phrase with the count and the first example.
    """
    unique = list(dict.fromkeys(rows))
    repeated = [row for row, count in Counter(rows).items() if count > 1]
    duplicates = f"{len(rows) - len(unique)} exact duplicate row(s), e.g. {repeated[0][0]}" if repeated else ""
    labels: dict[str, set[int]] = {}
    splits: dict[str, set[str]] = {}
    for source, label, split in unique:
        labels.setdefault(source, set()).add(label)
        splits.setdefault(source, set()).add(split)
    refusals = []
    conflicting = [p for p, found in labels.items() if len(found) > 1]
    if conflicting:
        refusals.append(f"{len(conflicting)} image(s) have two or more labels, e.g. {conflicting[0]} "
                        f"(labels {sorted(labels[conflicting[0]])}); give each image one label")  # fmt: skip
    overlap = [p for p, found in splits.items() if "test" in found and found & {"train", "val"}]
    if overlap:
        refusals.append(f"{len(overlap)} image(s) are in test and in train or val, e.g. {overlap[0]}; "
                        "keep each image in one split")  # fmt: skip
    return unique, duplicates, refusals


def load_manifest(path: Path, classnames_file: Path | None = None) -> DatasetSplits:
    """Read a CSV/Parquet manifest with columns ``path,label,split`` (split in train/val/test).

    ``label`` is either an integer (then ``classnames_file`` names the labels) or a class name (then
    classes are ordered by the file, or alphabetically without one). Relative paths are relative to
    the manifest's folder, so a dataset folder with its manifest can be moved as a whole.
    """
    import pandas as pd

    path = Path(os.path.abspath(Path(path).expanduser()))
    if not path.is_file():
        raise DataError(f"manifest {path} not found; write a CSV or Parquet file with columns path,label,split")
    table = _read_table(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(
            f"manifest {path} lacks column(s) {', '.join(missing)} (has {', '.join(map(str, table.columns))}); "
            f"it needs path,label,split"
        )
    if table[list(MANIFEST_COLUMNS)].isna().any().any():
        row = int(table[list(MANIFEST_COLUMNS)].isna().any(axis=1).to_numpy().argmax())
        raise DataError(
            f"manifest {path} has an empty path, label or split in data row {row + 1}; fill it in or drop the row"
        )
    splits_col = [str(s).strip().lower() for s in table["split"]]
    bad_splits = sorted(set(splits_col) - set(SPLITS))
    if bad_splits:
        raise DataError(f"manifest {path} has split value(s) {bad_splits}; use train, val or test")
    classnames = read_classnames_file(classnames_file) if classnames_file is not None else None
    values = table["label"].tolist()
    if pd.api.types.is_integer_dtype(table["label"]):
        labels, classnames = _labels_from_ints(path, values, classnames)
    else:
        labels, classnames = _labels_from_names(path, values, classnames)
    base = path.parent
    rows = [(os.path.abspath(os.path.join(base, os.path.expanduser(source))), label, split)  # absolute paths stay
            for source, label, split in zip(table["path"].astype(str), labels, splits_col)]  # fmt: skip
    rows, duplicates, refusals = manifest_row_problems(rows)
    if refusals:
        raise DataError(f"manifest {path}: {'; '.join(refusals)}")
    if duplicates:
        logger.warning("manifest %s: %s; dropped them", path, duplicates)
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for full, label, split in rows:
        splits[split].append(Sample(full, label))
    fingerprint = fingerprint_files(  # the rows and the class list are all a manifest contributes
        path,
        list(classnames),
        splits,
        f"manifest {path}",
        f"fix the paths in the manifest (relative ones are relative to {base}) or drop those rows",
    )
    logger.info("%s: %d classes, %s", path, len(classnames), {s: len(v) for s, v in splits.items()})
    return DatasetSplits(
        name=path.stem,
        classnames=list(classnames),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        fingerprint=fingerprint,
        notes=[f"{duplicates}; dropped them"] if duplicates else [],
    )
