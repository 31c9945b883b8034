"""CoOp (generic and class-specific context): learnable context vectors spliced into fixed class prompts.

The token embeddings of everything but the context are fixed buffers; :meth:`CoOp.build_embeddings`
splices any stack of contexts into them, so corruption variants go through the text tower together.
With a generic context, the leading tokens every class shares (SOS and the context before the class
name) are encoded once per variant and each class only over its own tokens (``textpass``; exact).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nemesis_analysis.choices import Precision
from nemesis_analysis.clip.encoding import (
    LoadedModel,
    encode_text_from_prefix,
    eos_positions,
    supports_prefix_reuse,
    text_layer_inputs,
)
from nemesis_analysis.clip.prompts import layout_tokens, resolve_n_ctx
from nemesis_analysis.clip.textpass import encode_prompts, encode_text_from_prefix_shared, usable_shared_prefix
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.errors import ModelError
from nemesis_analysis.methods.base import PromptMethod, register_method


def context_dtype(loaded: LoadedModel) -> torch.dtype:
    """The learnable context's dtype: fp16 under ``fp16`` (the reference's all-half mode, where the SGD update
    and weight decay act in half precision), else fp32 (also under ``amp``)."""
    return torch.float16 if loaded.precision == Precision.FP16 else torch.float32


@register_method("coop")
class CoOp(PromptMethod):
    """Learnable context (fp32; fp16 under ``fp16``) plus the frozen token embeddings around it; one slot, ``ctx``.

    ``ctx`` is (n_ctx, width) for generic context, (num_classes, n_ctx, width) with class-specific
    context. Buffers: ``base`` (num_classes, length, width), the embedded prompt with placeholders
    where the context goes; ``ctx_index`` (num_classes, n_ctx), each context slot's token position;
    ``eos`` (num_classes,), each prompt's EOS position. ``length`` is cut after the longest EOS.
    ``ctx_dtype`` overrides :func:`context_dtype` (tests simulate the all-half mode on CPU with it).
    ``prefix_tokens``: how many leading tokens every class shares (end: 1 + n_ctx, middle: 1 + n_ctx // 2,
    front: 1, class-specific context or a text tower that does not fit: 0), fixed at construction.
    """

    share_prefix: bool = True  # False: every class over its whole prompt (the plain pass), for comparisons

    def __init__(
        self, loaded: LoadedModel, classnames: list[str], config: PromptConfig, seed: int = 0, options=None,
        ctx_dtype: torch.dtype | None = None,
    ):  # fmt: skip
        super().__init__()
        self.config = config
        self.classnames = list(classnames)
        self.loaded = loaded
        embedding = loaded.model.token_embedding
        self.n_ctx = resolve_n_ctx(config, loaded.tokenize)
        dtype = ctx_dtype or context_dtype(loaded)
        self.ctx = nn.Parameter(self._initial_context(embedding, seed).to(embedding.weight.device, dtype))

        tokens, ctx_index = layout_tokens(loaded, self.classnames, self.n_ctx, config.class_token_position)
        eos = eos_positions(tokens)
        length = int(eos.max()) + 1
        with torch.no_grad():
            base = embedding(tokens[:, :length]).float()  # (num_classes, length, width)
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("ctx_index", ctx_index.to(embedding.weight.device), persistent=False)
        self.register_buffer("eos", eos.to(embedding.weight.device), persistent=False)
        self.register_buffer("tokens", tokens[:, :length], persistent=False)
        self.prefix_tokens = usable_shared_prefix(loaded.model, self.ctx_index, self.eos, config.csc)

    def _initial_context(self, embedding: nn.Embedding, seed: int) -> Tensor:
        """The words of ``ctx_init`` embedded, else N(0, init_std^2) draws seeded by ``seed``."""
        config, num_classes = self.config, len(self.classnames)
        if config.ctx_init:
            with torch.no_grad():
                tokens = self.loaded.tokenize([config.ctx_init])
                init = embedding(tokens)[0, 1 : 1 + self.n_ctx].float().cpu()  # (n_ctx, width)
            return init.repeat(num_classes, 1, 1) if config.csc else init
        width = embedding.embedding_dim
        shape = (num_classes, self.n_ctx, width) if config.csc else (self.n_ctx, width)
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=generator) * config.init_std

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def width(self) -> int:
        return self.base.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def shared_tokens(self) -> int:
        """Leading tokens encoded once per variant for all classes; 0 runs the plain per-class pass."""
        return self.prefix_tokens if self.share_prefix else 0

    def variant_floats(self) -> int:
        return self.num_classes * self.base.shape[1] * self.width

    def slots(self) -> dict[str, Tensor]:
        return {"ctx": self.ctx}

    def build_embeddings(self, ctx_variants: Tensor) -> Tensor:
        """Prompt embeddings for a stack of contexts.

        ``ctx_variants`` is (variants, n_ctx, width) or, with CSC, (variants, num_classes, n_ctx, width);
        returns (variants, num_classes, length, width). Differentiable in the context.
        """
        num_variants = ctx_variants.shape[0]
        if ctx_variants.dim() == 3:  # generic: the same context for every class
            ctx_variants = ctx_variants[:, None].expand(-1, self.num_classes, -1, -1)
        if ctx_variants.shape[1:] != (self.num_classes, self.n_ctx, self.width):
            raise ModelError(
                f"context variants of shape {tuple(ctx_variants.shape)} do not fit this prompt "
                f"({self.num_classes} classes, n_ctx {self.n_ctx}, width {self.width})"
            )
        prompts = self.base.expand(num_variants, -1, -1, -1).clone()  # (variants, classes, length, width)
        classes = torch.arange(self.num_classes, device=self.base.device)[:, None]  # (classes, 1)
        prompts[:, classes, self.ctx_index] = ctx_variants.to(prompts.dtype)
        return prompts

    def text_features(self, slot_variants: Tensor | None = None) -> Tensor:
        """Normalised class text features for each context variant: (variants, num_classes, embed)."""
        if slot_variants is None:
            slot_variants = self.ctx[None]
        prompts = self.build_embeddings(slot_variants)  # (variants, classes, length, width)
        with self.loaded.text_autocast():
            features = encode_prompts(self.loaded.model, prompts, self.eos, self.shared_tokens)
        return F.normalize(features.float(), dim=-1)  # (variants, classes, embed)

    def prefix_cache(self, slot_value: Tensor) -> PrefixCache | None:
        if supports_prefix_reuse(self.loaded.model):
            return PrefixCache(self, slot_value.detach().float())
        return None

    def metadata(self) -> dict:
        prompt = dataclasses.asdict(self.config)
        prompt["n_ctx"] = self.n_ctx
        return {
            "prompt": prompt,
            "classnames": self.classnames,
            "width": self.width,
            "backbone": self.loaded.backbone,
            "pretrained": self.loaded.pretrained,
        }


class PrefixCache:
    """Text features of variants of ``ctx`` that each change a single context position.

    Everything before that position's first slot is the unchanged prompt, whose per-block states are
    computed once here. When the position lies in the class-shared tokens, those states are the same for
    every class (kept once), the tokens from the position to the end of the shared part are computed once
    per variant, and only the rest per class; otherwise each variant costs its classes' remaining tokens.
    """

    def __init__(self, method: CoOp, ctx: Tensor):
        self.method = method
        self.shared = method.shared_tokens
        self.prompts = method.build_embeddings(ctx[None].to(method.base.device))[0]  # (classes, length, width)
        self.class_states: list[Tensor] | None = None  # per block (classes, length, width), built when needed
        if self.shared:
            with method.loaded.text_autocast():  # per block: (1, shared, width)
                self.states = text_layer_inputs(method.loaded.model, self.prompts[:1, : self.shared])
        else:
            self.states = self.per_class_states()

    def per_class_states(self) -> list[Tensor]:
        """Every class's per-block input states of the unchanged prompt (computed on first use)."""
        if self.class_states is None:
            with self.method.loaded.text_autocast():
                self.class_states = text_layer_inputs(self.method.loaded.model, self.prompts)
        return self.class_states

    def start(self, position: int) -> int:
        """First token index that a change at ``position`` touches, over all classes."""
        return int(self.method.ctx_index[:, position].min())

    def text_features(self, ctx_variants: Tensor, position: int) -> Tensor:
        """Like :meth:`CoOp.text_features` for variants that differ from ``ctx`` only at ``position``."""
        method, start, shared = self.method, self.start(position), self.shared
        prompts = method.build_embeddings(ctx_variants.to(method.base.device))  # (variants, classes, length, width)
        with method.loaded.text_autocast():
            if start < shared:  # cached before start; start..shared once per variant; the rest per class
                cached = [state[:, :start] for state in self.states]  # per block (1, start, width)
                features = encode_text_from_prefix_shared(
                    method.loaded.model, cached, prompts[:, 0, start:shared], prompts[:, :, shared:], method.eos
                )  # (variants, classes, embed)
            else:
                features = self._per_class(prompts, start)
        return F.normalize(features.float(), dim=-1)  # (variants, classes, embed)

    def _per_class(self, prompts: Tensor, start: int) -> Tensor:
        """Unnormalised features (variants, classes, embed): each class from ``start`` on, after its cached states."""
        method = self.method
        num_variants, num_classes, length, width = prompts.shape
        suffix = prompts[:, :, start:].reshape(num_variants * num_classes, length - start, width)
        prefix = [s[None, :, :start].expand(num_variants, -1, -1, -1).reshape(-1, start, width)
                  for s in self.per_class_states()]  # fmt: skip
        features = encode_text_from_prefix(method.loaded.model, prefix, suffix, method.eos.repeat(num_variants))
        return features.reshape(num_variants, num_classes, -1)
