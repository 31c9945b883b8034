"""The toolkit's own open_clip architectures (``nemesis-tiny``) and seeded random initialisation of any architecture."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch

TINY_BACKBONE = "nemesis-tiny"
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
RANDOM_INIT_SEED = 0


def register_model_configs() -> None:
    """Make the toolkit's own architectures (``nemesis-tiny``) known to open_clip."""
    if TINY_BACKBONE not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def random_init(backbone: str) -> torch.nn.Module:
    # Seeded so that "random init" is the same model in every process (tests and caches rely on it).
    state = torch.random.get_rng_state()
    torch.manual_seed(RANDOM_INIT_SEED)
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly" on the root logger: intended here
    try:
        return open_clip.create_model(backbone, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
        torch.random.set_rng_state(state)
