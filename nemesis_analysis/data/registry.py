"""Dataset registry: plain dicts filled by decorators where each reader is defined; it imports no reader.

The package (``nemesis_analysis/data/__init__.py``) imports every reader module, so the registry is
complete whenever any ``nemesis_analysis.data`` module has been imported, whatever the import order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nemesis_analysis.data.base import DatasetSplits
from nemesis_analysis.errors import ConfigError, DataError


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    reader: Callable[[Path | None], DatasetSplits]
    folder: str | None  # sub-folder under --data-root; None for embedded datasets
    test_only: bool = False
    description: str = ""
    label: str = ""  # display name in figures and tables (e.g. Flowers102); the name itself when empty


# In registration order, which fixes each dataset's colour and marker in figures (report.plots.dataset_style).
DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, folder: str | None, test_only: bool = False, description: str = "", label: str = ""):
    """Decorator: ``@register_dataset("caltech101", folder="caltech-101")`` over ``reader(root) -> DatasetSplits``."""

    def decorate(reader: Callable[[Path | None], DatasetSplits]):
        if name in DATASETS:
            raise RuntimeError(f"dataset {name!r} registered twice")
        DATASETS[name] = DatasetEntry(name, reader, folder, test_only, description, label or name)
        return reader

    return decorate


# Custom dataset kinds: ``folder:PATH`` -> the loader registered for "folder".
DATASET_KINDS: dict[str, Callable[[Path], DatasetSplits]] = {}


def register_dataset_kind(kind: str):
    """Decorator: ``@register_dataset_kind("folder")`` over ``loader(path) -> DatasetSplits`` for ``folder:PATH``."""

    def decorate(loader: Callable[[Path], DatasetSplits]):
        if kind in DATASET_KINDS:
            raise RuntimeError(f"dataset kind {kind!r} registered twice")
        DATASET_KINDS[kind] = loader
        return loader

    return decorate


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def get_dataset_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


DATA_ROOT_ENV = "NEMESIS_DATA"
CUSTOM_PREFIXES = ("folder:", "manifest:")  # the kinds registered by nemesis_analysis.data.specs


def resolve_data_root(data_root: Path | str | None = None) -> Path | None:
    """The data root from the argument, else from ``$NEMESIS_DATA``; None when neither is set."""
    if data_root is None or str(data_root).strip() == "":
        data_root = os.environ.get(DATA_ROOT_ENV, "").strip() or None
    return None if data_root is None else Path(data_root).expanduser()


def load_custom(spec: str) -> DatasetSplits:
    """``folder:PATH`` / ``manifest:PATH``: the loader registered for the kind, on the expanded path."""
    kind, _, raw_path = spec.partition(":")
    if not raw_path.strip():
        raise ConfigError(f"dataset spec {spec!r} has no path; write {kind}:PATH, e.g. {kind}:/data/my_dataset")
    if kind not in DATASET_KINDS:
        raise ConfigError(f"unknown custom dataset kind {kind!r}; use folder:PATH or manifest:PATH")
    return DATASET_KINDS[kind](Path(raw_path).expanduser())


def load_dataset(name: str, data_root: Path | str | None = None) -> DatasetSplits:
    """Load a registered dataset (or a ``folder:PATH`` / ``manifest:PATH`` custom one) with all its splits.

    ``data_root`` is the folder that holds the datasets' folders (``caltech-101/``, ``imagenet/``...);
    it falls back to ``$NEMESIS_DATA``. Embedded datasets (``folder=None``) need no data root.
    """
    if name.startswith(CUSTOM_PREFIXES):
        return load_custom(name)
    if name not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))} "
            f"(or folder:PATH / manifest:PATH for your own images)"
        )
    entry = DATASETS[name]
    if entry.folder is None:
        return entry.reader(None)
    root = resolve_data_root(data_root)
    if root is None:
        raise DataError(
            f"dataset {name} needs --data-root DIR (or {DATA_ROOT_ENV}) "
            f"pointing at the folder that contains {entry.folder}/"
        )
    if not root.is_dir():
        raise DataError(
            f"data root {root} does not exist; pass --data-root DIR (or {DATA_ROOT_ENV}) pointing at the folder "
            f"that contains {entry.folder}/"
        )
    return entry.reader(root)
