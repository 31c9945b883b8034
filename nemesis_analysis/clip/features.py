"""Frozen image features, encoded once per (model, dataset, samples, transform) and cached on disk.

Every epoch's test accuracy, every corruption variant and every figure reuses them. Files are
content-addressed (the key hashes everything that changes the features) and written atomically.
Besides the global feature, the image tower gives *local* features (one per image location, used by
PLOT): a ResNet's attention-pool outputs at every spatial token, a ViT's projected patch tokens. They
are cached in their own file (the global key plus ``-local``), loaded only by methods that need them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from nemesis_analysis.clip.encoding import LoadedModel
from nemesis_analysis.data.base import DatasetSplits, Sample, fingerprint_samples
from nemesis_analysis.errors import ModelError
from nemesis_analysis.progress import progress_bar
from nemesis_analysis.storage.fsio import atomic_path

logger = logging.getLogger(__name__)


def feature_cache_key(loaded: LoadedModel, dataset: DatasetSplits, samples: list[Sample]) -> str:
    """A hash of everything that changes the features: model weights, dataset, samples, eval transform."""
    text = "|".join([loaded.identity, dataset.identity, fingerprint_samples(samples), repr(loaded.preprocess)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def encode_with(
    encode: Callable[[torch.Tensor], torch.Tensor],
    empty_shape: Callable[[], tuple[int, ...]],
    label: str,
    dataset: DatasetSplits,
    samples: list[Sample],
    preprocess: Callable,
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """``encode`` (a preprocessed batch -> features) over ``samples`` in batches, on the CPU; ``empty_shape()``
    gives the shape of no samples' features (asked only then)."""
    dataset.check_samples(samples)  # a missing or damaged file: one line naming it, before any decoding
    chunks = []
    with progress_bar(label, total=len(samples), enabled=progress) as advance:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            images = torch.stack([preprocess(dataset.load_image(s.source)) for s in batch])
            chunks.append(encode(images).cpu())
            advance(len(batch))
    return torch.cat(chunks) if chunks else torch.empty(empty_shape())


def encode_samples(
    loaded: LoadedModel, dataset: DatasetSplits, samples: list[Sample], batch_size: int = 256, progress: bool = True
) -> torch.Tensor:
    """Encode ``samples`` with the eval transform: (n, embed) L2-normalised fp32 features on the CPU."""
    # the model is touched only once the samples are checked (a damaged file fails before any model call)
    return encode_with(lambda images: loaded.encode_images(images), lambda: (0, loaded.embed_dim),
                       f"encoding {dataset.name} images", dataset, samples, lambda image: loaded.preprocess(image),
                       batch_size, progress)  # fmt: skip


def cached_features(
    path: Path | None, name: str, what: str, samples: list[Sample], encode: Callable[[], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tensor ``name`` of the cache file ``path``, labels): read when it matches ``samples``' labels, else
    ``encode()``d and written atomically (``what`` names it in errors); ``path`` None: no cache."""
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    if path is None:
        return encode(), labels
    if path.is_file():
        cached = load_file(str(path))
        if torch.equal(cached["labels"], labels):
            return cached[name], labels
        logger.warning("%s %s does not match its samples; re-encoding", what, path)
    features = encode()
    with atomic_path(path, what) as tmp:
        save_file({name: features.contiguous(), "labels": labels}, str(tmp))
    return features, labels


def image_features(
    loaded: LoadedModel,
    dataset: DatasetSplits,
    samples: list[Sample],
    cache_dir: Path | None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, embed), labels (n,)) for ``samples``, from the cache when possible."""
    path = None if cache_dir is None else Path(cache_dir) / f"{feature_cache_key(loaded, dataset, samples)}.safetensors"
    encode = lambda: encode_samples(loaded, dataset, samples, progress=progress)  # noqa: E731
    return cached_features(path, "features", "the image feature cache", samples, encode)


def image_pixels(
    loaded: LoadedModel, dataset: DatasetSplits, samples: list[Sample], progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(preprocessed images (n, 3, H, W) on the CPU, labels (n,)): what a method that prompts the image tower
    scores (its features depend on the prompt, so nothing is cached on disk)."""
    size = loaded.preprocess_cfg.get("size", 224)
    size = size if isinstance(size, int) else size[0]
    pixels = encode_with(lambda images: images, lambda: (0, 3, size, size), f"loading {dataset.name} images",
                         dataset, samples, lambda image: loaded.preprocess(image), progress=progress)  # fmt: skip
    return pixels, torch.tensor([s.label for s in samples], dtype=torch.long)


# ------------------------------------------------------------------------------------- local features


def attnpool_sequence(pool: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``AttentionPool2d`` on a feature map (batch, C, H, W), kept at every token:
    (batch, 1 + H*W, embed). Token 0 (the mean token's output) is what ``pool(x)`` returns; the others are
    the same attention and projection run with each spatial token as the query, as PLOT's image side."""
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)  # (H*W, batch, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (1 + H*W, batch, C)
    x = x + pool.positional_embedding[:, None, :].to(x.dtype)
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False,
    )  # fmt: skip
    return x.permute(1, 0, 2)  # (batch, 1 + H*W, embed)


def vit_sequence(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """open_clip's ``VisionTransformer`` with ``ln_post`` and ``proj`` applied to every token:
    (batch, 1 + patches, embed); token 0 is the class token, what ``visual(images)`` returns."""
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise ModelError(
            f"local features need a ViT pooled by its class token (pool_type 'tok', no attention pool); this one "
            f"pools by {visual.pool_type!r}: use a CLIP ViT or a ResNet backbone"
        )
    x = visual.conv1(images)  # (batch, width, grid, grid)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (batch, patches, width)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (batch, 1, width)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (batch, 1 + patches, width)
    x = visual.transformer(visual.ln_pre(x))  # eval mode: patch dropout is off
    x = visual.ln_post(x)
    return x @ visual.proj if visual.proj is not None else x  # (batch, 1 + patches, embed)


def image_token_sequence(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unnormalised features of every image token (batch, 1 + locations, embed); token 0 is the global one."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, ModifiedResNet):
        x = visual.stem(images)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # (batch, C, H, W)
        return attnpool_sequence(visual.attnpool, x)
    elif isinstance(visual, VisionTransformer):
        return vit_sequence(visual, images)
    else:
        raise ModelError(
            f"local image features are defined for open_clip ModifiedResNet and VisionTransformer towers, not "
            f"{type(visual).__name__}; use an RN* or ViT-* backbone"
        )


@torch.no_grad()
def encode_images_with_local(loaded: LoadedModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised fp32 (global (batch, embed), local (batch, locations, embed)) of a preprocessed batch."""
    dtype = next(loaded.model.visual.parameters()).dtype
    with loaded.autocast():
        sequence = image_token_sequence(loaded.model.visual, images.to(loaded.device, dtype=dtype))
    sequence = F.normalize(sequence.float(), dim=-1)  # (batch, 1 + locations, embed)
    return sequence[:, 0], sequence[:, 1:]


def num_locations(loaded: LoadedModel) -> int:
    """Local features per image: (image size / 32)^2 for a ResNet, the patch count for a ViT."""
    size = loaded.preprocess_cfg.get("size", 224)
    size = size if isinstance(size, int) else size[0]
    probe = torch.zeros(1, 3, size, size)
    return int(encode_images_with_local(loaded, probe)[1].shape[1])


def encode_local_samples(
    loaded: LoadedModel, dataset: DatasetSplits, samples: list[Sample], batch_size: int = 256, progress: bool = True
) -> torch.Tensor:
    """Local features of ``samples`` with the eval transform: (n, locations, embed), normalised, fp32, CPU."""
    encode = lambda images: encode_images_with_local(loaded, images)[1]  # noqa: E731
    empty = lambda: (0, num_locations(loaded), loaded.embed_dim)  # noqa: E731 (a probe pass: only when needed)
    return encode_with(encode, empty, f"encoding {dataset.name} image regions", dataset, samples,
                       lambda image: loaded.preprocess(image), batch_size, progress)  # fmt: skip


def local_image_features(
    loaded: LoadedModel,
    dataset: DatasetSplits,
    samples: list[Sample],
    cache_dir: Path | None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(local features (n, locations, embed), labels (n,)) for ``samples``, from the cache when possible.

    The cache file is the global one's key plus ``-local``: n * locations * embed * 4 bytes (e.g. RN50 at
    224 px: 49 x 1024 x 4 = 196 KiB per image; ViT-B/16: 196 x 512 x 4 = 392 KiB per image).
    """
    key = feature_cache_key(loaded, dataset, samples)
    path = None if cache_dir is None else Path(cache_dir) / f"{key}-local.safetensors"
    encode = lambda: encode_local_samples(loaded, dataset, samples, progress=progress)  # noqa: E731
    return cached_features(path, "local", "the local image feature cache", samples, encode)
