"""CoOp's prompt layout: class prompts tokenised with one placeholder token per context slot.

A prompt for class c is ``[SOS] p_1 ... p_M name_c . [EOS]`` (class token at the end), or with the
name in the middle of the context or in front of it. The number of context vectors M is resolved here,
once: ``n_ctx``, or the token count of ``ctx_init`` when the context starts from words.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from nemesis_analysis.choices import ClassTokenPosition
from nemesis_analysis.clip.encoding import LoadedModel, eos_positions
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.errors import ConfigError, ModelError

PLACEHOLDER = "X"  # one BPE token per context slot in the tokenised layout


def resolve_n_ctx(prompt: PromptConfig, tokenize: Callable[[list[str]], torch.Tensor]) -> int:
    """The number of context vectors: ``prompt.n_ctx``, or the token count of ``prompt.ctx_init``."""
    if not prompt.ctx_init:
        return prompt.n_ctx
    n_ctx = int(eos_positions(tokenize([prompt.ctx_init]))[0]) - 1
    if n_ctx < 1:
        raise ConfigError(f"--ctx-init {prompt.ctx_init!r} has no tokens; give words or drop the flag")
    return n_ctx


@functools.cache
def backbone_tokenizer(backbone: str) -> Callable[[list[str]], torch.Tensor]:
    """The backbone's tokenizer without loading its weights (to resolve n_ctx before any model loads); built
    once per backbone (reading its vocabulary takes a large part of a second, and a plan asks per job)."""
    import open_clip

    from nemesis_analysis.clip.architectures import register_model_configs

    register_model_configs()
    return open_clip.get_tokenizer(backbone)


def layout_tokens(
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
