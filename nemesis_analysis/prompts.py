"""CoOp's learnable context: layout, prompt embeddings for stacks of context variants, artifacts.

A prompt for class c is ``[SOS] p_1 ... p_M name_c . [EOS]`` (class token at the end), or with the
name in the middle of the context or in front of it. The token embeddings of everything but the
context are fixed buffers; :meth:`PromptLearner.build_embeddings` splices any stack of contexts into
them, so corruption variants go through the text tower together.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nemesis_analysis.choices import ClassTokenPosition, plain
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.errors import ConfigError, ModelError
from nemesis_analysis.models import LoadedModel, eos_positions

PLACEHOLDER = "X"  # one BPE token per context slot in the tokenised layout


class PromptLearner(nn.Module):
    """Learnable context (fp32) plus the frozen token embeddings around it.

    ``ctx`` is (n_ctx, width) for generic context, (n_classes, n_ctx, width) with class-specific
    context. Buffers: ``base`` (n_classes, length, width), the embedded prompt with placeholders
    where the context goes; ``ctx_index`` (n_classes, n_ctx), each context slot's token position;
    ``eos`` (n_classes,), each prompt's EOS position. ``length`` is cut after the longest EOS.
    """

    def __init__(self, loaded: LoadedModel, classnames: list[str], config: PromptConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.classnames = list(classnames)
        self.loaded = loaded
        embedding = loaded.model.token_embedding
        width = embedding.embedding_dim
        device = embedding.weight.device

        if config.ctx_init:
            init_tokens = loaded.tokenize([config.ctx_init])
            n_ctx = int(eos_positions(init_tokens)[0]) - 1
            if n_ctx < 1:
                raise ConfigError(f"--ctx-init {config.ctx_init!r} has no tokens; give words or drop the flag")
            with torch.no_grad():
                init = embedding(init_tokens)[0, 1 : 1 + n_ctx].float().cpu()  # (n_ctx, width)
            ctx = init.repeat(len(classnames), 1, 1) if config.csc else init
        else:
            n_ctx = config.n_ctx
            shape = (len(classnames), n_ctx, width) if config.csc else (n_ctx, width)
            generator = torch.Generator().manual_seed(seed)
            ctx = torch.randn(shape, generator=generator) * config.init_std
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.to(device=device, dtype=torch.float32))

        tokens, ctx_index = _layout_tokens(loaded, self.classnames, n_ctx, config.class_token_position)
        eos = eos_positions(tokens)
        length = int(eos.max()) + 1
        with torch.no_grad():
            base = embedding(tokens[:, :length]).float()  # (n_classes, length, width)
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("ctx_index", ctx_index.to(device), persistent=False)
        self.register_buffer("eos", eos.to(device), persistent=False)
        self.register_buffer("tokens", tokens[:, :length], persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def width(self) -> int:
        return self.base.shape[-1]

    def build_embeddings(self, ctx_variants: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings for a stack of contexts.

        ``ctx_variants`` is (variants, n_ctx, width) or, with CSC, (variants, n_classes, n_ctx, width);
        returns (variants, n_classes, length, width). Differentiable in the context.
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

    def text_features(self, ctx_variants: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class text features for each context variant: (variants, n_classes, embed).

        With no argument, the learner's own context (one variant).
        """
        if ctx_variants is None:
            ctx_variants = self.ctx[None]
        prompts = self.build_embeddings(ctx_variants)
        num_variants, num_classes, length, width = prompts.shape
        flat = prompts.reshape(num_variants * num_classes, length, width)  # (variants * classes, length, width)
        features = self.loaded.encode_text_embeddings(flat, self.eos.repeat(num_variants))
        return features.reshape(num_variants, num_classes, -1)  # (variants, classes, embed)


class PrefixCache:
    """Text features of variants of ``ctx`` that each change a single context position.

    Everything before that position's first slot is the unchanged prompt, whose per-block states are
    computed once here; each variant then costs only its remaining tokens (on average about half).
    """

    def __init__(self, learner: PromptLearner, ctx: torch.Tensor):
        from nemesis_analysis.models import text_layer_inputs

        self.learner = learner
        prompts = learner.build_embeddings(ctx[None].to(learner.base.device))[0]  # (classes, length, width)
        with learner.loaded.autocast():
            self.states = text_layer_inputs(learner.loaded.model, prompts)  # per block: (classes, length, width)

    def start(self, position: int) -> int:
        """First token index that a change at ``position`` touches, over all classes."""
        return int(self.learner.ctx_index[:, position].min())

    def text_features(self, ctx_variants: torch.Tensor, position: int) -> torch.Tensor:
        """Like :meth:`PromptLearner.text_features` for variants that differ from ``ctx`` only at ``position``."""
        from nemesis_analysis.models import encode_text_from_prefix

        learner, start = self.learner, self.start(position)
        prompts = learner.build_embeddings(ctx_variants.to(learner.base.device))  # (variants, classes, length, width)
        num_variants, num_classes, length, width = prompts.shape
        suffix = prompts[:, :, start:].reshape(num_variants * num_classes, length - start, width)
        prefix = [s[None, :, :start].expand(num_variants, -1, -1, -1).reshape(-1, start, width) for s in self.states]
        with learner.loaded.autocast():
            features = encode_text_from_prefix(learner.loaded.model, prefix, suffix, learner.eos.repeat(num_variants))
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.reshape(num_variants, num_classes, -1)  # (variants, classes, embed)


def _layout_tokens(
    loaded: LoadedModel, classnames: list[str], n_ctx: int, position: ClassTokenPosition
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise every class prompt with placeholders; return (tokens, ctx_index (classes, n_ctx))."""
    name_tokens = loaded.tokenize([name.replace("_", " ") for name in classnames])
    name_lens = (eos_positions(name_tokens) - 1).tolist()
    half = n_ctx // 2
    texts, indices = [], []
    for name, name_len in zip(classnames, name_lens):
        name = name.replace("_", " ")
        if position == ClassTokenPosition.END:
            texts.append(" ".join([PLACEHOLDER] * n_ctx + [name]) + ".")
            indices.append(list(range(1, 1 + n_ctx)))
        elif position == ClassTokenPosition.MIDDLE:
            texts.append(" ".join([PLACEHOLDER] * half + [name] + [PLACEHOLDER] * (n_ctx - half)) + ".")
            indices.append(list(range(1, 1 + half)) + list(range(1 + half + name_len, 1 + n_ctx + name_len)))
        elif position == ClassTokenPosition.FRONT:
            texts.append(" ".join([name] + [PLACEHOLDER] * n_ctx) + ".")
            indices.append(list(range(1 + name_len, 1 + name_len + n_ctx)))
        else:
            raise ConfigError(f"unknown class-token position {position!r}")
    tokens = loaded.tokenize(texts).cpu()
    context_length = tokens.shape[1]
    eos = eos_positions(tokens)
    too_long = [classnames[i] for i in range(len(classnames)) if eos[i] >= context_length - 1]
    if too_long:
        raise ConfigError(
            f"prompt for class {too_long[0]!r} does not fit the {context_length}-token context; use a smaller --n-ctx"
        )
    index = torch.tensor(indices, dtype=torch.long)
    placeholder_id = int(loaded.tokenize([PLACEHOLDER])[0, 1])
    if not bool((tokens.gather(1, index) == placeholder_id).all()):  # the layout must match the tokenisation
        raise ModelError("internal error: context slots do not line up with the tokenised prompt")
    return tokens.to(loaded.device), index


# ----------------------------------------------------------------------------------------------- artifacts

ARTIFACT_TENSORS = "prompt.safetensors"
ARTIFACT_META = "prompt.json"


def save_prompt(directory: Path, ctx: torch.Tensor, metadata: dict) -> Path:
    """Write ``prompt.safetensors`` (the context) and ``prompt.json`` (config, class names...), atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{ARTIFACT_TENSORS}.{os.getpid()}.tmp"
    save_file({"ctx": ctx.detach().float().cpu().contiguous()}, str(tmp))
    tmp.replace(directory / ARTIFACT_TENSORS)
    tmp_meta = directory / f".{ARTIFACT_META}.{os.getpid()}.tmp"
    tmp_meta.write_text(json.dumps(plain(metadata), indent=1, sort_keys=True))
    tmp_meta.replace(directory / ARTIFACT_META)
    return directory


def load_prompt(path: Path) -> tuple[torch.Tensor, dict]:
    """Read a prompt artifact (its folder or its .safetensors/.json file): (ctx, metadata)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    tensors, meta = directory / ARTIFACT_TENSORS, directory / ARTIFACT_META
    if not tensors.is_file() or not meta.is_file():
        raise ModelError(f"{path} is not a prompt artifact: expected {ARTIFACT_TENSORS} and {ARTIFACT_META} there")
    return load_file(str(tensors))["ctx"], json.loads(meta.read_text())


def prompt_config_from_meta(meta: dict) -> PromptConfig:
    return PromptConfig(**meta["prompt"])


def learner_metadata(learner: PromptLearner, extra: dict) -> dict:
    prompt = asdict(learner.config)
    prompt["n_ctx"] = learner.n_ctx
    return {
        "prompt": prompt,
        "classnames": learner.classnames,
        "width": learner.width,
        "backbone": learner.loaded.backbone,
        "pretrained": learner.loaded.pretrained,
        **extra,
    }
