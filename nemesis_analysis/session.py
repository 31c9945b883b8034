"""The environment a command runs in (folders, device, network policy) and the caches it owns.

A :class:`Session` is built once per command (or notebook) and passed down instead of a handful of
loose arguments: it knows where checkpoints and reports go, which device and data root to use, whether
the network may be touched, and it keeps loaded models and datasets so that several runs of one command
(seeds, the demo's three methods, a study's jobs) share them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Session:
    """Environment options (one field per shared CLI option) plus the caches of one process."""

    checkpoints_dir: Path = Path("checkpoints")  # --checkpoints: trained prompts and feature caches
    reports_dir: Path = Path("reports")  # --reports: Parquet tables and figures
    device: str = "auto"  # --device: auto, cpu, cuda or cuda:N
    offline: bool = False  # --offline: never touch the network
    data_root: Path | None = None  # --data-root: the CoOp datasets (default: $NEMESIS_DATA)
    weights_cache_dir: Path | None = None  # --cache-dir: open_clip weights (default: HF cache, ~/.cache/clip)
    progress: bool = True  # not --quiet
    _models: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)
    _datasets: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.checkpoints_dir = Path(self.checkpoints_dir).expanduser()
        self.reports_dir = Path(self.reports_dir).expanduser()
        if self.data_root is not None:
            self.data_root = Path(self.data_root).expanduser()
        if self.weights_cache_dir is not None:
            self.weights_cache_dir = Path(self.weights_cache_dir).expanduser()
        if self.device not in ("auto", "cpu"):  # a GPU this machine lacks fails here, before any work
            self.torch_device()

    @property
    def feature_cache(self) -> Path:
        """Folder of cached frozen image features."""
        return self.checkpoints_dir / "features"

    # ------------------------------------------------------------------------------------------- caches

    def replace(self, **changes) -> Session:
        """A copy with some options changed that shares this session's caches (e.g. another reports folder)."""
        other = dataclasses.replace(self, **changes)
        other._models, other._datasets = self._models, self._datasets
        return other

    def torch_device(self):
        from nemesis_analysis.devices import resolve_device

        return resolve_device(self.device)

    def model(self, backbone: str, pretrained: str, precision=None):
        """The frozen CLIP ``(backbone, pretrained)`` at ``precision`` on this session's device, loaded once
        (an unset precision is the device's default, resolved before the cache key: one model per precision)."""
        from nemesis_analysis.clip.loading import load_model
        from nemesis_analysis.devices import resolve_precision

        device = self.torch_device()
        precision = resolve_precision(precision, device)
        key = (backbone, pretrained, precision.value, str(device))
        if key not in self._models:
            self._models[key] = load_model(
                backbone,
                pretrained,
                device=device,
                precision=precision,
                checkpoints_dir=self.checkpoints_dir,
                cache_dir=self.weights_cache_dir,
                offline=self.offline,
                progress=self.progress,
            )
        return self._models[key]

    def dataset(self, name: str):
        """The dataset ``name`` with all its splits (from ``data_root``), loaded once."""
        from nemesis_analysis.data.registry import load_dataset

        key = (name, str(self.data_root))
        if key not in self._datasets:
            self._datasets[key] = load_dataset(name, self.data_root)
        return self._datasets[key]

    def check_output_folders(self) -> None:
        """Raise a one-line WriteError unless ``--checkpoints`` and ``--reports`` are (or can become) folders
        this process can write into, or a DamagedPartError naming a table part that cannot be read; called
        before any long work. Creates nothing."""
        from nemesis_analysis.storage.fsio import check_writable

        check_writable(self.checkpoints_dir, "--checkpoints")
        check_writable(self.reports_dir, "--reports")
        from nemesis_analysis.storage.store import check_parts

        check_parts(self.reports_dir)  # a damaged part is named now, not after the work it would record

    def run_dir(self, run_id: str):
        """The folder of run ``run_id`` (a :class:`~nemesis_analysis.storage.rundir.RunDir`)."""
        from nemesis_analysis.storage.rundir import RunDir

        return RunDir(self.checkpoints_dir / run_id)
