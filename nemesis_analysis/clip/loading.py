"""Load a frozen CLIP (any open_clip architecture, or the embedded tiny CLIP) with its tokenizer and preprocessing."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from nemesis_analysis.choices import Precision
from nemesis_analysis.clip import weights
from nemesis_analysis.clip.architectures import TINY_BACKBONE, register_model_configs
from nemesis_analysis.clip.encoding import LoadedModel
from nemesis_analysis.devices import resolve_device, resolve_precision
from nemesis_analysis.errors import ConfigError


def load_model(
    backbone: str = TINY_BACKBONE,
    pretrained: str = "embedded",
    device: str | torch.device | None = None,
    precision: Precision | str | None = None,
    checkpoints_dir: Path | str = "checkpoints",
    offline: bool = False,
    progress: bool = True,
    cache_dir: Path | str | None = None,
) -> LoadedModel:
    """Create a frozen CLIP.

    ``pretrained``: an open_clip tag (e.g. ``openai``), a local weights file, ``embedded`` (the
    toolkit's pretrained tiny CLIP, only for ``nemesis-tiny``) or ``none`` (random init, seeded).
    Tags are read from the local caches first (``cache_dir``, else the Hugging Face cache and
    ``~/.cache/clip``); ``offline`` (or ``HF_HUB_OFFLINE=1``) never touches the network. Weights
    trained with QuickGELU (OpenAI's) get a QuickGELU architecture (``RN50`` -> ``RN50-quickgelu``).
    """
    register_model_configs()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    precision = resolve_precision(precision, device)
    if backbone not in open_clip.list_models():
        raise ConfigError(
            f"unknown backbone {backbone!r}; run `nemesis models` to list architectures "
            f"(e.g. RN50, ViT-B-16, {TINY_BACKBONE})"
        )
    pretrained = pretrained or "none"
    model, weights_id = weights.create_with_weights(
        backbone,
        pretrained,
        checkpoints_dir=Path(checkpoints_dir),
        offline=offline,
        progress=progress,
        cache_dir=cache_dir,
    )
    if precision == Precision.FP16:
        model = model.half()
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    return LoadedModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(backbone),
        preprocess=preprocess,
        preprocess_cfg=preprocess_cfg,
        backbone=backbone,
        pretrained=pretrained,
        weights_id=weights_id,
        device=device,
        precision=precision,
        extra={"quick_gelu": _uses_quick_gelu(model)},
    )


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    """Whether the built model's activations are QuickGELU (what the weights need, see weights.py)."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(module, QuickGELU) for module in model.modules())
