"""Where a model's weights come from: the tiny CLIP cache, a local file, an open_clip tag, or none."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch

from nemesis_analysis.errors import ModelError

logger = logging.getLogger(__name__)

RANDOM_TAGS = ("none", "random")
RANDOM_INIT_SEED = 0


def _random_init(backbone: str) -> torch.nn.Module:
    # Seeded so that "random init" is the same model in every process (tests and caches rely on it).
    state = torch.random.get_rng_state()
    torch.manual_seed(RANDOM_INIT_SEED)
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly" on the root logger: intended here
    try:
        return open_clip.create_model(backbone, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
        torch.random.set_rng_state(state)


def create_with_weights(
    backbone: str, pretrained: str, checkpoints_dir: Path, offline: bool = False, progress: bool = True
) -> tuple[torch.nn.Module, str]:
    """Build ``backbone`` and load ``pretrained`` into it; returns (model, weights_id)."""
    from nemesis_analysis.models import TINY_BACKBONE

    if pretrained in RANDOM_TAGS:
        return _random_init(backbone), f"random-init-seed{RANDOM_INIT_SEED}"
    if pretrained == "embedded":
        if backbone != TINY_BACKBONE:
            raise ModelError(
                f"--pretrained embedded only exists for {TINY_BACKBONE}; for {backbone} pass an open_clip tag "
                "(e.g. openai) or a weights file"
            )
        from nemesis_analysis.tiny import ensure_tiny_clip, load_tiny_state

        path = ensure_tiny_clip(checkpoints_dir, progress=progress)
        model = _random_init(backbone)
        model.load_state_dict(load_tiny_state(path))
        return model, f"embedded:{path.stem}"
    path = Path(pretrained).expanduser()
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or path.exists():
        if not path.is_file():
            raise ModelError(f"weights file {path} not found; check the path given to --pretrained")
        try:
            model = open_clip.create_model(backbone, pretrained=str(path), weights_only=True)
        except Exception as error:  # open_clip raises many types for a bad file
            raise ModelError(f"cannot load {path} into {backbone}: {str(error).splitlines()[0][:300]}") from None
        from nemesis_analysis.models import _file_weights_id

        return model, _file_weights_id(path)
    tags = open_clip.list_pretrained_tags_by_model(backbone)
    if pretrained not in tags:
        valid = ", ".join(tags) if tags else "none known"
        raise ModelError(
            f"unknown weights {pretrained!r} for {backbone}; tags: {valid}; or pass a weights file path"
        )
    try:
        model = open_clip.create_model(backbone, pretrained=pretrained, cache_dir=None)
    except Exception as error:
        raise ModelError(
            f"weights {backbone}/{pretrained} are not available ({type(error).__name__}); download them where the "
            "network is reachable, or pass --pretrained PATH to a local weights file"
        ) from None
    return model, f"tag:{pretrained}"
