"""Frozen image features, encoded once per (model, dataset, samples, transform) and cached on disk.

Every epoch's test accuracy, every corruption variant and every figure reuses them. Files are
content-addressed (the key hashes everything that changes the features) and written atomically.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nemesis_analysis.data.base import DatasetSplits, Sample, fingerprint_samples
from nemesis_analysis.fsio import atomic_path
from nemesis_analysis.models import LoadedModel
from nemesis_analysis.progress import progress_bar

logger = logging.getLogger(__name__)


def feature_cache_key(loaded: LoadedModel, dataset: DatasetSplits, samples: list[Sample]) -> str:
    """A hash of everything that changes the features: model weights, dataset, samples, eval transform."""
    text = "|".join([loaded.identity, dataset.identity, fingerprint_samples(samples), repr(loaded.preprocess)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def encode_samples(
    loaded: LoadedModel, dataset: DatasetSplits, samples: list[Sample], batch_size: int = 256, progress: bool = True
) -> torch.Tensor:
    """Encode ``samples`` with the eval transform: (n, embed) L2-normalised fp32 features on the CPU."""
    dataset.check_samples(samples)  # a missing or damaged file: one line naming it, before any decoding
    chunks = []
    with progress_bar(f"encoding {dataset.name} images", total=len(samples), enabled=progress) as advance:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            images = torch.stack([loaded.preprocess(dataset.load_image(s.source)) for s in batch])
            chunks.append(loaded.encode_images(images).cpu())
            advance(len(batch))
    if not chunks:
        return torch.empty(0, loaded.embed_dim)
    return torch.cat(chunks)


def image_features(
    loaded: LoadedModel,
    dataset: DatasetSplits,
    samples: list[Sample],
    cache_dir: Path | None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, embed), labels (n,)) for ``samples``, from the cache when possible."""
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    if cache_dir is None:
        return encode_samples(loaded, dataset, samples, progress=progress), labels
    path = Path(cache_dir) / f"{feature_cache_key(loaded, dataset, samples)}.safetensors"
    if path.is_file():
        cached = load_file(str(path))
        if torch.equal(cached["labels"], labels):
            return cached["features"], labels
        logger.warning("feature cache %s does not match its samples; re-encoding", path)
    features = encode_samples(loaded, dataset, samples, progress=progress)
    with atomic_path(path, "the image feature cache") as tmp:
        save_file({"features": features.contiguous(), "labels": labels}, str(tmp))
    return features, labels
