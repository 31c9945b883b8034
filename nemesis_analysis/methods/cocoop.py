"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context plus a meta-network shift conditioned on each image.

For an image with L2-normalised feature ``x``, the meta-network ``Linear(embed, embed // 16) -> ReLU ->
Linear(embed // 16, width)`` gives a shift ``pi(x)`` added to every context vector, so the image is scored
against the text features of its own prompts ``[SOS] p_1 + pi(x) ... p_M + pi(x) name_c . [EOS]``.

Nemesis on CoCoOp regularises the norms of the static context vectors ``p_i`` (the ``ctx`` slot), not of
the instance shift ``pi(x)``: the shift is an output of the meta-network that differs per image, so it is
no learned vector with a norm of its own, and the paper's Low-Norm Effect is a property of the learned
context. Likewise a corruption of position i changes ``p_i`` and the shift still applies on top of it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nemesis_analysis.clip.encoding import LoadedModel
from nemesis_analysis.clip.textpass import encode_prompts
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.devices import memory_budget
from nemesis_analysis.errors import ModelError
from nemesis_analysis.methods.base import refuse_class_specific, register_method
from nemesis_analysis.methods.coop import CoOp

# Floats allowed in one pass's prompt activations (prompts * classes * length * width) on CPU, as the engine's;
# on CUDA a share of the free memory (devices.memory_budget).
CPU_IMAGE_BUDGET = 2**23
META_NET_REDUCTION = 16  # hidden width of the meta-network: embed // 16, as the official code
NORM_SCOPE = "static context (ctx); the instance-conditioned shift is not included"


def build_meta_net(embed_dim: int, width: int, seed: int) -> nn.Sequential:
    """``Linear(embed, embed // 16) -> ReLU -> Linear(embed // 16, width)`` in fp32 with PyTorch's default
    init drawn from ``seed`` (names as the official code: ``linear1``, ``relu``, ``linear2``)."""
    hidden = max(1, embed_dim // META_NET_REDUCTION)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [("linear1", nn.Linear(embed_dim, hidden)), ("relu", nn.ReLU(inplace=True)),
                  ("linear2", nn.Linear(hidden, width))]  # fmt: skip
        return nn.Sequential(OrderedDict(layers))


@register_method("cocoop")
class CoCoOp(CoOp):
    """Generic context ``ctx`` (n_ctx, width), the position slot, plus the learnable ``meta_net`` (fp32)."""

    def __init__(self, loaded: LoadedModel, classnames: list[str], config: PromptConfig, seed: int = 0, options=None):
        refuse_class_specific(self, config)
        super().__init__(loaded, classnames, config, seed=seed)
        self.meta_net = build_meta_net(loaded.embed_dim, self.width, seed + 1).to(self.base.device)

    def trainable(self) -> dict[str, Tensor]:
        return {"ctx": self.ctx, **{f"meta_net.{name}": p for name, p in self.meta_net.named_parameters()}}

    def prefix_cache(self, slot_value: Tensor):
        return None  # every image has its own context: no prefix is shared across images

    def shift(self, image_features: Tensor) -> Tensor:
        """The meta-network's shift of each L2-normalised image feature: (batch, width)."""
        return self.meta_net(image_features.to(self.base.device, torch.float32))

    def prompt_features(self, contexts: Tensor) -> Tensor:
        """Normalised class text features of each context (prompts, n_ctx, width): (prompts, classes, embed).

        Each context's tokens are encoded once and shared by every class (class-shared prefix pass)."""
        prompts = self.build_embeddings(contexts)  # (prompts, classes, length, width)
        with self.loaded.text_autocast():
            features = encode_prompts(self.loaded.model, prompts, self.eos, self.shared_tokens)
        return F.normalize(features.float(), dim=-1)  # (prompts, classes, embed)

    def image_chunk(self, num_variants: int) -> int:
        """Images per text pass so that variants * images * classes * length * width stays in budget."""
        budget = memory_budget(self.device, CPU_IMAGE_BUDGET)
        return max(1, budget // (num_variants * self.variant_floats()))

    def variant_scores(self, slot_variants: Tensor, image_features: Tensor,
                       local_features: Tensor | None = None) -> Tensor:  # fmt: skip
        """Cosine scores (variants, batch, classes): each image against its own prompts ``variant + shift``."""
        image_features = image_features.to(self.base.device, torch.float32)
        slot_variants = slot_variants.to(self.base.device, torch.float32)
        shifts = self.shift(image_features)  # (batch, width)
        num_variants, chunk = slot_variants.shape[0], self.image_chunk(slot_variants.shape[0])
        parts = []
        for start in range(0, image_features.shape[0], chunk):
            images, bias = image_features[start : start + chunk], shifts[start : start + chunk]
            contexts = slot_variants[:, None] + bias[None, :, None]  # (variants, images, n_ctx, width)
            text = self.prompt_features(contexts.flatten(0, 1))  # (variants * images, classes, embed)
            text = text.unflatten(0, (num_variants, images.shape[0]))  # (variants, images, classes, embed)
            parts.append(torch.einsum("be,vbce->vbc", images, text))
        return torch.cat(parts, dim=1)

    def scores(self, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        return self.variant_scores(self.ctx[None], image_features)[0]

    def logits(self, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        return self.loaded.logit_scale * self.scores(image_features)

    def metadata(self) -> dict:
        hidden = self.meta_net.linear1.out_features
        return {**super().metadata(), "cocoop": {"meta_net_hidden": hidden, "nemesis_norms": NORM_SCOPE}}


# ------------------------------------------------------------------------------------ official checkpoints


COCOOP_META_NET_KEYS = ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
                        "meta_net.linear2.bias")  # fmt: skip


def read_cocoop_meta_net(state: dict, width: int, path: Path) -> dict[str, Tensor]:
    """CoCoOp's meta-network from a Dassl prompt-learner state dict (fp32), shapes checked; {} for CoOp.

    Official layout: ``linear1`` (hidden, embed), ``linear2`` (width, hidden), each with a bias.
    """
    present = [k for k in COCOOP_META_NET_KEYS if k in state]
    if not present:
        return {}
    if len(present) != len(COCOOP_META_NET_KEYS) or not all(isinstance(state[k], Tensor) for k in present):
        missing = sorted(set(COCOOP_META_NET_KEYS) - set(present))
        raise ModelError(
            f"{path}: CoCoOp meta-network is incomplete (missing {missing}); pass the whole prompt_learner checkpoint"
        )
    w1, b1, w2, b2 = (state[k].detach().float().cpu() for k in COCOOP_META_NET_KEYS)
    hidden = w1.shape[0] if w1.dim() == 2 else -1
    if (
        w1.dim() != 2
        or tuple(b1.shape) != (hidden,)
        or tuple(w2.shape) != (width, hidden)
        or tuple(b2.shape) != (width,)
    ):
        shapes = [tuple(t.shape) for t in (w1, b1, w2, b2)]
        raise ModelError(
            f"{path}: CoCoOp meta-network shapes {shapes} do not fit a context of width {width} "
            "(expected (hidden, embed), (hidden,), (width, hidden), (width,))"
        )
    return dict(zip(COCOOP_META_NET_KEYS, (w1, b1, w2, b2)))


def read_official_state(state: dict, ctx: Tensor, path) -> dict | None:
    """CoCoOp's meta-network from an official prompt-learner state dict, as extra tensors; None for CoOp's."""
    meta_net = read_cocoop_meta_net(state, int(ctx.shape[-1]), path)
    return {"prompt_method": "cocoop", "tensors": meta_net} if meta_net else None
