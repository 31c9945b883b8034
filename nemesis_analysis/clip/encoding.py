"""A loaded frozen CLIP (:class:`LoadedModel`, the device) and encoding with it; loading lives in ``loading.py``.

The text-tower shim :func:`encode_text_from_embeddings` runs the model's *own* modules on token
embeddings, so that learnable context vectors can be spliced in; it cuts every batch at its longest
EOS, which is exact because CLIP's text attention is causal.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nemesis_analysis.choices import Precision
from nemesis_analysis.errors import ModelError

logger = logging.getLogger(__name__)


_FP32_TEXT: contextvars.ContextVar[bool] = contextvars.ContextVar("nemesis_fp32_text", default=False)


@contextlib.contextmanager
def fp32_text_passes():
    """Within this block text passes run without autocast: in fp32 for ``fp32`` and ``amp`` models (an
    ``fp16`` model's weights stay half); image passes keep the model's precision (cached features match
    their key). For comparisons whose sides go through text passes of different shapes (a sweep's plain
    baseline and its prefix-cached variants, PAN's counts), which bf16 would round apart."""
    token = _FP32_TEXT.set(True)
    try:
        yield
    finally:
        _FP32_TEXT.reset(token)


@dataclass
class LoadedModel:
    """A frozen CLIP with everything needed around it."""

    model: torch.nn.Module
    tokenizer: Callable
    preprocess: Callable  # deterministic eval transform: PIL image -> normalised tensor
    preprocess_cfg: dict  # size, mean, std, interpolation (for the training augmentation)
    backbone: str
    pretrained: str
    weights_id: str  # identifies the weights in cache keys
    device: torch.device
    precision: Precision
    extra: dict = field(default_factory=dict)

    @property
    def text_width(self) -> int:
        return self.model.token_embedding.embedding_dim

    @property
    def embed_dim(self) -> int:
        projection = self.model.text_projection
        return projection.out_features if isinstance(projection, torch.nn.Linear) else projection.shape[1]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp()

    @property
    def identity(self) -> str:
        """Cache key of the image tower's output: architecture, weights and precision."""
        return f"{self.backbone}|{self.weights_id}|{self.precision.value}"

    def autocast(self):
        """bf16 autocast for the frozen towers under ``amp``, on whatever device the model is (CUDA or CPU)."""
        if self.precision == Precision.AMP:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def text_autocast(self):
        """:meth:`autocast` for text passes; none inside :func:`fp32_text_passes`."""
        return contextlib.nullcontext() if _FP32_TEXT.get() else self.autocast()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 image features of a preprocessed batch (batch, 3, H, W)."""
        dtype = next(self.model.visual.parameters()).dtype
        with self.autocast():
            features = self.model.encode_image(images.to(self.device, dtype=dtype))
        return F.normalize(features.float(), dim=-1)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eos_positions: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 text features from token embeddings (batch, length, width)."""
        with self.text_autocast():
            features = encode_text_from_embeddings(self.model, embeddings, eos_positions)
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised features of plain text prompts (used for zero-shot classifiers)."""
        tokens = self.tokenize(texts)
        embeddings = self.model.token_embedding(tokens)
        return self.encode_text_embeddings(embeddings, eos_positions(tokens))


def eos_positions(tokens: torch.Tensor) -> torch.Tensor:
    """Index of the EOS token in each row: CLIP's EOS has the largest token id (open_clip's argmax pooling)."""
    return tokens.argmax(dim=-1)


def encode_text_from_embeddings(
    model: torch.nn.Module, embeddings: torch.Tensor, eos: torch.Tensor, truncate: bool = True
) -> torch.Tensor:
    """Text features (unnormalised) from token embeddings, through the model's own text modules.

    ``embeddings`` is (batch, length, width) *before* the positional embedding; ``eos`` (batch,)
    holds each row's EOS index. Equals ``model.encode_text(tokens)`` when fed
    ``model.token_embedding(tokens)``. With ``truncate`` the sequence is cut after the longest EOS:
    exact, since the causal mask keeps later tokens from influencing earlier ones.
    """
    if not hasattr(model, "transformer") or not hasattr(model, "token_embedding"):
        raise ModelError(
            f"{type(model).__name__} has no built-in CLIP text transformer; "
            "prompt learning needs an open_clip CLIP model with its own text tower"
        )
    pool_type = getattr(model, "text_pool_type", "argmax")
    if pool_type not in ("argmax", "eos"):
        raise ModelError(f"text pooling {pool_type!r} is not supported; prompt learning needs EOS pooling")
    if truncate:
        length = int(eos.max().item()) + 1
        embeddings = embeddings[:, :length]
    length = embeddings.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)  # (batch, length, width)
    attn_mask = model.attn_mask
    if attn_mask is not None:
        attn_mask = attn_mask[:length, :length]
    x = model.transformer(x, attn_mask=attn_mask)  # open_clip's Transformer takes batch-first input
    return pool_and_project(model, x, eos)


def pool_and_project(model: torch.nn.Module, x: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """The text tower's head: ``ln_final``, the state at each row's EOS, ``text_projection``: (batch, embed)."""
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eos]  # (batch, width)
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


def supports_prefix_reuse(model: torch.nn.Module) -> bool:
    """Whether :func:`encode_text_from_prefix` can run this text tower: open_clip's plain residual blocks."""
    from open_clip.transformer import ResidualAttentionBlock

    transformer = getattr(model, "transformer", None)
    if transformer is None or not getattr(transformer, "batch_first", False):
        return False
    if getattr(transformer, "grad_checkpointing", False):
        return False
    return all(
        type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv") for block in transformer.resblocks
    )


def text_layer_inputs(model: torch.nn.Module, embeddings: torch.Tensor) -> list[torch.Tensor]:
    """The hidden states entering each residual block, for token embeddings (batch, length, width).

    Under the causal mask the states of the first ``k`` tokens depend on those tokens alone, so prompts
    that share a prefix share these states there (see :func:`encode_text_from_prefix`).
    """
    length = embeddings.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)  # (batch, length, width)
    attn_mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    states = []
    for block in model.transformer.resblocks:
        states.append(x)
        x = block(x, attn_mask=attn_mask)
    return states


def encode_text_from_prefix(
    model: torch.nn.Module, prefix_states: list[torch.Tensor], suffix: torch.Tensor, eos: torch.Tensor
) -> torch.Tensor:
    """Text features (unnormalised) of prompts whose first ``start`` tokens are a shared, already-encoded prefix.

    ``prefix_states`` holds, per residual block, the prefix's input states (batch, start, width), from
    :func:`text_layer_inputs`; ``suffix`` the embeddings of the remaining tokens (batch, length - start,
    width); ``eos`` the EOS index of each row in the whole sequence. Only the suffix tokens are computed:
    each block attends from them to the prefix and the suffix, with the model's own attention, MLP and
    norms, exactly as the block's own forward would for those rows.
    """
    start = prefix_states[0].shape[1]
    length = start + suffix.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = suffix.to(cast_dtype) + model.positional_embedding[start:length].to(cast_dtype)  # (batch, suffix, width)
    attn_mask = model.attn_mask[start:length, :length] if model.attn_mask is not None else None
    for block, prefix in zip(model.transformer.resblocks, prefix_states):
        keys = block.ln_1(torch.cat([prefix.to(x.dtype), x], dim=1))  # (batch, length, width)
        x = x + block.ls_1(block.attention(q_x=block.ln_1(x), k_x=keys, v_x=keys, attn_mask=attn_mask))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return pool_and_project(model, x, eos - start)
