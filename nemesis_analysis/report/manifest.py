"""What a report needs to be reproduced: versions, git commit, device, weights, dataset fingerprints, run configs.

Torch-free at import; the device of this machine is asked of torch only when torch is already loaded
or installed. A run's resolved config is read from its folder (``CHECKPOINTS/<run_id>/config.json``,
which carries the dataset fingerprint), else taken from the plan.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PACKAGE = "nemesis-analysis"
LIBRARIES: dict[str, str] = {"torch": "torch", "open_clip": "open_clip_torch", "numpy": "numpy", "pandas": "pandas"}


@dataclass
class RunEntry:
    run_id: str
    label: str
    config: dict
    source: str  # "run folder" (resolved by the run itself) or "plan" (not trained yet)
    split_sha256: str = ""  # of the run's split.json (the few-shot images it trained on)


@dataclass
class Manifest:
    package_version: str
    git_commit: str
    python: str
    libraries: dict[str, str]
    device: dict[str, str]
    weights: dict[str, str]  # "backbone / pretrained" -> identity
    datasets: dict[str, str]  # dataset -> fingerprint(s)
    runs: list[RunEntry] = field(default_factory=list)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(folder: Path | None = None) -> str:
    """The commit of the checkout holding the package (with "+ local changes" when dirty), or "unknown"."""
    folder = folder or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def this_device() -> str:
    """The accelerator of the machine writing the report (CUDA name) or "cpu"."""
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            return "cpu (torch not installed)"
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.processor() or platform.machine()})"


def sha256_file(path: Path, length: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def weights_identity(backbone: str, pretrained: str, checkpoints: Path) -> str:
    """A tag ("tag:openai"), or the file hash of a weights file or of the cached tiny CLIP."""
    if pretrained == "embedded":
        from nemesis_analysis.clip.tiny import find_tiny_clip  # imports torch: only when a tiny CLIP is named

        path = find_tiny_clip(Path(checkpoints))
        return f"embedded:{path.stem} sha256:{sha256_file(path)}" if path else "embedded (not pretrained yet)"
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"file:{path.name} sha256:{sha256_file(path)}"
    return "random init" if pretrained == "none" else f"tag:{pretrained}"


def run_entries(planned: dict[str, tuple[str, dict]], checkpoints: Path) -> list[RunEntry]:
    """One entry per run id of ``planned`` (run_id -> (label, planned config)), resolved config where trained."""
    entries = []
    for run_id, (label, config) in planned.items():
        folder = Path(checkpoints) / run_id
        entry = RunEntry(run_id, label, config, "plan")
        try:
            entry.config, entry.source = json.loads((folder / "config.json").read_text()), "run folder"
        except (OSError, ValueError):
            pass
        if (folder / "split.json").is_file():
            entry.split_sha256 = sha256_file(folder / "split.json")
        entries.append(entry)
    return entries


def dataset_fingerprints(entries: list[RunEntry]) -> dict[str, str]:
    """dataset -> its content fingerprint(s) from the resolved configs ("built-in" datasets are named, not hashed)."""
    found: dict[str, set[str]] = {}
    for entry in entries:
        dataset = str(entry.config.get("dataset", "?"))
        found.setdefault(dataset, set())
        if entry.source == "run folder":
            found[dataset].add(str(entry.config.get("dataset_fingerprint", "")) or "built-in (identified by its name)")
    return {d: ", ".join(sorted(f)) if f else "not trained yet" for d, f in sorted(found.items())}


def build_manifest(planned: dict[str, tuple[str, dict]], checkpoints: Path, configured_device: str) -> Manifest:
    """The manifest of the runs in ``planned`` (run_id -> (label, planned config)) under ``checkpoints``."""
    entries = run_entries(planned, checkpoints)
    pairs = sorted({(str(e.config.get("backbone")), str(e.config.get("pretrained"))) for e in entries})
    return Manifest(
        package_version=_version(PACKAGE),
        git_commit=git_commit(),
        python=platform.python_version(),
        libraries={name: _version(dist) for name, dist in LIBRARIES.items()},
        device={"configured": configured_device, "this machine": this_device()},
        weights={f"{b} / {p}": weights_identity(b, p, checkpoints) for b, p in pairs},
        datasets=dataset_fingerprints(entries),
        runs=entries,
    )
