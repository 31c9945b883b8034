"""The custom dataset kinds ``folder:PATH`` and ``manifest:PATH``, registered with the dataset registry."""

from __future__ import annotations

from pathlib import Path

from nemesis_analysis.data import custom
from nemesis_analysis.data.base import DatasetSplits
from nemesis_analysis.data.registry import register_dataset_kind


@register_dataset_kind("folder")
def load_folder(path: Path) -> DatasetSplits:
    """``train/``, ``val/``, ``test/`` with one sub-folder per class."""
    return custom.load_image_folder(path)


@register_dataset_kind("manifest")
def load_manifest(path: Path) -> DatasetSplits:
    """A CSV/Parquet manifest with path,label,split columns."""
    # A class-name file next to the manifest is the only way to name integer labels from a one-word spec.
    beside = path.parent / custom.MANIFEST_CLASSNAMES_FILE
    return custom.load_manifest(path, beside if beside.is_file() else None)
