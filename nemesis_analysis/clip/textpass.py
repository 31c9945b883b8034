"""Class-shared text pass: encode the tokens every class prompt shares once, then each class over its own tokens.

With a generic context, every prompt starts with the same tokens (``[SOS] p_1 ... p_M`` with the class
name at the end, ``[SOS] p_1 ... p_M/2`` with it in the middle, ``[SOS]`` in front). Under CLIP's
causal text mask their hidden states are then the same for every class, so they are computed once (per
context variant) and each class runs only over its remaining tokens, attending to the shared keys and
values plus its own. Exact, differentiable, and built from the model's own block weights (attention
in/out projections, layer norms, MLP, final norm, projection, positional embedding and mask).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nemesis_analysis.clip.encoding import encode_text_from_embeddings, pool_and_project, supports_prefix_reuse
from nemesis_analysis.errors import ModelError

logger = logging.getLogger(__name__)
_LOGGED_FALLBACKS: set[str] = set()


class SharedPrefixUnsupported(ModelError):
    """This text tower does not fit the shared-prefix pass (use the plain one)."""


def shared_prefix_length(ctx_index: torch.Tensor, eos: torch.Tensor, csc: bool = False) -> int:
    """How many leading tokens are the same for every class: SOS plus the context slots before any class name.

    ``ctx_index`` (classes, n_ctx) holds each context slot's token position and ``eos`` (classes,) each
    prompt's EOS position. Class-specific context shares nothing (0); otherwise SOS and every leading slot
    ``j`` at token ``1 + j`` for all classes (class name at the end: ``1 + n_ctx``; middle: ``1 + n_ctx // 2``;
    front: ``1``), never past the first EOS.
    """
    if csc:
        return 0
    shared = 1  # SOS
    for slot in range(ctx_index.shape[1]):
        if not bool((ctx_index[:, slot] == 1 + slot).all()):
            break
        shared += 1
    return min(shared, int(eos.min()))


def usable_shared_prefix(model: torch.nn.Module, ctx_index: torch.Tensor, eos: torch.Tensor, csc: bool = False) -> int:
    """:func:`shared_prefix_length` when the text tower fits the shared pass, else 0 (said once in the log)."""
    shared = shared_prefix_length(ctx_index, eos, csc)
    if shared > 0 and not supports_shared_prefix(model):
        _log_fallback(model)
        return 0
    return shared


def _log_fallback(model: torch.nn.Module) -> None:
    name = type(model).__name__
    if name not in _LOGGED_FALLBACKS:
        _LOGGED_FALLBACKS.add(name)
        logger.info("%s's text tower does not fit the class-shared prefix pass; using the plain pass", name)


_SUPPORT: weakref.WeakKeyDictionary[torch.nn.Module, tuple] = weakref.WeakKeyDictionary()


def supports_shared_prefix(model: torch.nn.Module) -> bool:
    """Whether this text tower fits: open_clip's plain residual blocks, standard attention, a causal mask, EOS
    pooling. Checked once per model and mask (the mask test syncs with the device; every text pass asks)."""
    mask = getattr(model, "attn_mask", None)
    cached = _SUPPORT.get(model)
    if cached is None or cached[0] is not mask:
        cached = _SUPPORT[model] = (mask, _fits_shared_prefix(model))
    return cached[1]


def _fits_shared_prefix(model: torch.nn.Module) -> bool:
    if not supports_prefix_reuse(model) or getattr(model, "text_pool_type", "argmax") not in ("argmax", "eos"):
        return False
    mask = getattr(model, "attn_mask", None)
    if mask is None or mask.dim() != 2:
        return False
    causal = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    if not torch.equal(torch.isneginf(mask), causal) or bool(mask[~causal].ne(0).any()):
        return False
    for block in model.transformer.resblocks:
        attn = block.attn
        if not (isinstance(attn, torch.nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim):
            return False
        if attn.bias_k is not None or attn.add_zero_attn:
            return False
    return True


def _check_supported(model: torch.nn.Module) -> None:
    if not supports_shared_prefix(model):
        raise SharedPrefixUnsupported(
            f"{type(model).__name__}'s text tower is not open_clip's plain causal residual attention; "
            "use the plain text pass (encode_text_from_embeddings)"
        )


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., tokens, width) -> (..., heads, tokens, head_dim)."""
    *lead, tokens, width = x.shape
    return x.reshape(*lead, tokens, num_heads, width // num_heads).transpose(-3, -2)


def _qkv(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (each (..., heads, tokens, head_dim)) of the block's attention for states ``x``."""
    attn = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return _heads(q, attn.num_heads), _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def _finish_block(block: torch.nn.Module, x: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
    """Residual updates after attention: ``heads_out`` (..., tokens, width) merged heads, before out_proj."""
    attn = block.attn
    x = x + block.ls_1(F.linear(heads_out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _shared_block(
    block: torch.nn.Module,
    cached: torch.Tensor | None,
    shared: torch.Tensor,
    suffix: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One residual block over the shared tokens (V, S1, W) and the per-class tokens (V, C, T, W).

    ``cached`` (1 or V, S0, W): input states of already-encoded tokens before both; ``mask`` the model's
    additive mask rows/columns for positions ``[S0, S0 + S1 + T)`` x ``[0, S0 + S1 + T)``.
    """
    num_variants, num_classes, tokens, width = suffix.shape
    start, shared_len = (0 if cached is None else cached.shape[1]), shared.shape[1]
    context = shared_len + start
    mask = mask.to(shared.dtype)
    q_sh, k, v = _qkv(block, shared)  # (V, H, S1, d)
    if cached is not None:
        _, k_c, v_c = _qkv(block, cached.to(shared.dtype))  # (1 or V, H, S0, d)
        k = torch.cat([k_c.expand(num_variants, -1, -1, -1), k], dim=-2)  # (V, H, S0 + S1, d)
        v = torch.cat([v_c.expand(num_variants, -1, -1, -1), v], dim=-2)
    scale = q_sh.shape[-1] ** -0.5  # applied to the queries before QK^T, which stays small enough for fp16
    heads, head_dim = q_sh.shape[1], q_sh.shape[-1]

    weights = torch.softmax((q_sh * scale) @ k.transpose(-1, -2) + mask[:shared_len, :context], dim=-1)
    out_shared = (weights @ v).transpose(1, 2).reshape(num_variants, shared_len, width)  # (V, S1, W)

    q_s, k_s, v_s = (t.transpose(1, 2) for t in _qkv(block, suffix))  # (V, H, C, T, d)
    q_s = q_s * scale
    to_shared = q_s.reshape(num_variants, heads, -1, head_dim) @ k.transpose(-1, -2)  # (V, H, C*T, S0+S1)
    to_shared = to_shared.view(num_variants, heads, num_classes, tokens, context)
    logits = torch.cat([to_shared, q_s @ k_s.transpose(-1, -2)], dim=-1) + mask[shared_len:]
    weights = torch.softmax(logits, dim=-1)  # (V, H, C, T, S0 + S1 + T)
    from_shared = weights[..., :context].reshape(num_variants, heads, -1, context) @ v  # (V, H, C*T, d)
    out = from_shared.view_as(q_s) + weights[..., context:] @ v_s  # (V, H, C, T, d)
    out_suffix = out.permute(0, 2, 3, 1, 4).reshape(num_variants, num_classes, tokens, width)
    return _finish_block(block, shared, out_shared), _finish_block(block, suffix, out_suffix)


def encode_text_from_prefix_shared(
    model: torch.nn.Module,
    prefix_states: Sequence[torch.Tensor] | None,
    shared: torch.Tensor,
    suffix: torch.Tensor,
    eos: torch.Tensor,
) -> torch.Tensor:
    """Text features (unnormalised, (V, C, embed)) of V x C prompts made of three runs of tokens.

    ``prefix_states``: per residual block, the input states (1 or V, S0, W) of the first S0 tokens, already
    encoded and the same for every class (e.g. the uncorrupted tokens before a corrupted position, from
    :func:`nemesis_analysis.clip.encoding.text_layer_inputs`), or None for S0 = 0; ``shared`` (V, S1, W): the
    embeddings (before positions) of the next tokens, common to all classes of a variant, computed once
    per variant; ``suffix`` (V, C, T, W): each class's remaining token embeddings; ``eos`` (C,): each
    class's EOS index in the whole sequence (at least S0 + S1). Equals the plain pass on the
    concatenated prompts; differentiable in ``shared`` and ``suffix``.
    Raises :class:`SharedPrefixUnsupported` for text towers that do not fit.
    """
    _check_supported(model)
    cached_len = prefix_states[0].shape[-2] if prefix_states else 0
    if prefix_states and prefix_states[0].dim() == 2:
        prefix_states = [state[None] for state in prefix_states]
    num_variants, num_classes, tokens, _ = suffix.shape
    start, length = cached_len + shared.shape[1], cached_len + shared.shape[1] + tokens
    if int(eos.min()) < start:
        raise ModelError(
            f"an EOS at {int(eos.min())} lies inside the shared prefix of {start} tokens; share fewer tokens"
        )
    cast_dtype = model.transformer.get_cast_dtype()
    positions = model.positional_embedding.to(cast_dtype)
    x_shared = shared.to(cast_dtype) + positions[cached_len:start]  # (V, S1, W)
    x_suffix = suffix.to(cast_dtype) + positions[start:length]  # (V, C, T, W)
    mask = model.attn_mask[cached_len:length, :length]
    blocks = model.transformer.resblocks
    for index, block in enumerate(blocks):
        cached = prefix_states[index] if prefix_states else None
        x_shared, x_suffix = _shared_block(block, cached, x_shared, x_suffix, mask)
    flat = x_suffix.reshape(num_variants * num_classes, tokens, -1)
    features = pool_and_project(model, flat, (eos - start).repeat(num_variants))
    return features.reshape(num_variants, num_classes, -1)


def encode_text_shared_prefix(
    model: torch.nn.Module, prefix: torch.Tensor, suffix: torch.Tensor, eos: torch.Tensor
) -> torch.Tensor:
    """Text features (V, C, embed) of prompts whose first S tokens ``prefix`` (V, S, W) every class shares.

    ``suffix`` (V, C, L - S, W) holds each class's remaining token embeddings, ``eos`` (C,) each class's
    EOS index in the whole prompt. The prefix is encoded once per variant, with gradients.
    """
    return encode_text_from_prefix_shared(model, None, prefix, suffix, eos)


def encode_prompts(model: torch.nn.Module, prompts: torch.Tensor, eos: torch.Tensor, shared: int) -> torch.Tensor:
    """Text features (unnormalised, (V, C, embed)) of prompt embeddings (V, C, L, W), sharing the first ``shared`` tokens.

    The first ``shared`` tokens must be the same for every class (see :func:`shared_prefix_length`); they
    are taken from class 0. With ``shared`` 0, or a text tower that does not fit (said once in the log),
    the plain pass (cut at the longest EOS) runs instead.
    """
    num_variants, num_classes, length, width = prompts.shape
    if shared > 0 and not supports_shared_prefix(model):
        _log_fallback(model)
        shared = 0
    if shared == 0:
        flat = prompts.reshape(num_variants * num_classes, length, width)
        features = encode_text_from_embeddings(model, flat, eos.repeat(num_variants))
        return features.reshape(num_variants, num_classes, -1)
    longest = int(eos.max()) + 1
    return encode_text_shared_prefix(model, prompts[:, 0, :shared], prompts[:, :, shared:longest], eos)
