"""Class-shared prefix pass: features and context gradients equal the plain per-class pass (random-init towers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemesis_analysis.clip.encoding import encode_text_from_embeddings, text_layer_inputs
from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.clip.textpass import (
    SharedPrefixUnsupported,
    encode_prompts,
    encode_text_from_prefix_shared,
    encode_text_shared_prefix,
    shared_prefix_length,
    supports_shared_prefix,
)
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.methods.coop import CoOp

NAMES = ["cat", "sea lion", "hot air balloon"]  # 1, 2 and 3 BPE tokens: unequal prompt lengths
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module", params=["RN50", "ViT-B-16", "nemesis-tiny"])
def random_model(request):
    return load_model(request.param, "none", device="cpu")


def _plain(model, prompts, eos):
    """The reference: every class's full prompt through the plain pass, (V, C, embed)."""
    num_variants, num_classes, length, width = prompts.shape
    flat = prompts.reshape(num_variants * num_classes, length, width)
    return encode_text_from_embeddings(model, flat, eos.repeat(num_variants)).reshape(num_variants, num_classes, -1)


def _loss(features, image_features, labels):
    """A training-like loss: cross-entropy of scaled cosines against fixed image features, per variant."""
    logits = 100.0 * F.normalize(image_features, dim=-1) @ F.normalize(features, dim=-1).transpose(-1, -2)
    return sum(F.cross_entropy(variant_logits, labels) for variant_logits in logits)


def _assert_close_to_scale(actual, expected, tolerance=1e-5):
    """Largest difference at most ``tolerance`` times the largest entry (fp32 sums of many terms)."""
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) <= tolerance * max(scale, 1.0), (actual - expected).abs().max()


def _learner(loaded, position, csc, n_ctx=4):
    return CoOp(loaded, NAMES, PromptConfig(n_ctx=n_ctx, csc=csc, class_token_position=position))


@pytest.mark.parametrize("position, expected", [("end", 5), ("middle", 3), ("front", 1)])
def test_shared_prefix_length_of_layouts(random_model, position, expected):
    learner = _learner(random_model, position, csc=False)
    assert shared_prefix_length(learner.ctx_index, learner.eos) == expected
    assert shared_prefix_length(learner.ctx_index, learner.eos, csc=True) == 0
    # the shared tokens really are the same for every class, the next one is not
    tokens = learner.tokens
    assert bool((tokens[:, :expected] == tokens[:1, :expected]).all())
    assert not bool((tokens[:, expected] == tokens[0, expected]).all())


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_features_and_gradients_equal_plain_pass(random_model, position, csc):
    model = random_model.model
    assert supports_shared_prefix(model)
    learner = _learner(random_model, position, csc)
    shared = shared_prefix_length(learner.ctx_index, learner.eos, csc)
    generator = torch.Generator().manual_seed(0)
    ctx = torch.randn(2, *learner.ctx.shape, generator=generator) * 0.3  # two variants
    images = torch.randn(4, random_model.embed_dim, generator=generator)
    labels = torch.tensor([0, 1, 2, 1])

    results = []
    for encode in (lambda p: _plain(model, p, learner.eos), lambda p: encode_prompts(model, p, learner.eos, shared)):
        leaf = ctx.clone().requires_grad_()
        features = encode(learner.build_embeddings(leaf))
        (gradient,) = torch.autograd.grad(_loss(features, images, labels), leaf)
        results.append((features.detach(), gradient))
    (plain, plain_grad), (ours, ours_grad) = results
    assert ours.shape == (2, len(NAMES), random_model.embed_dim)
    assert plain_grad.abs().max() > 1e-3  # the comparison is not between zeros
    torch.testing.assert_close(ours, plain, **TOL)
    torch.testing.assert_close(ours_grad, plain_grad, **TOL)


def test_gradients_reach_prefix_and_suffix(random_model):
    model = random_model.model
    learner = _learner(random_model, "middle", csc=False)
    prompts = learner.build_embeddings(learner.ctx.detach()[None])  # (1, C, L, W)
    shared = shared_prefix_length(learner.ctx_index, learner.eos)
    prefix = prompts[:, 0, :shared].clone().requires_grad_()
    suffix = prompts[:, :, shared:].clone().requires_grad_()
    features = encode_text_shared_prefix(model, prefix, suffix, learner.eos)
    weights = torch.randn(features.shape, generator=torch.Generator().manual_seed(1))
    prefix_grad, suffix_grad = torch.autograd.grad((features * weights).sum(), [prefix, suffix])

    full = prompts.clone().requires_grad_()
    (full_grad,) = torch.autograd.grad((_plain(model, full, learner.eos) * weights).sum(), full)
    # summed over classes; these raw-feature gradients reach a few hundred, so 1e-5 is relative to the largest
    _assert_close_to_scale(prefix_grad[0], full_grad[0, :, :shared].sum(0))
    _assert_close_to_scale(suffix_grad, full_grad[:, :, shared:])


@pytest.mark.parametrize("position", [0, 2, 3])
def test_sweep_variants_reuse_cached_states_and_shared_positions(random_model, position):
    """Variants changing one context position: tokens before it cached, from it to the shared end once per variant."""
    model = random_model.model
    learner = _learner(random_model, "end", csc=False)
    generator = torch.Generator().manual_seed(2)
    ctx = torch.randn(learner.ctx.shape, generator=generator) * 0.3
    variants = ctx.expand(3, -1, -1).clone()
    variants[:, position] = torch.randn(3, learner.width, generator=generator)
    original = learner.build_embeddings(ctx[None])[0]  # (C, L, W)
    prompts = learner.build_embeddings(variants)  # (3, C, L, W)
    start = int(learner.ctx_index[:, position].min())
    shared = shared_prefix_length(learner.ctx_index, learner.eos)
    with torch.no_grad():
        states = [state[0, :start] for state in text_layer_inputs(model, original)]  # (start, W) per block
        ours = encode_text_from_prefix_shared(
            model, states, prompts[:, 0, start:shared], prompts[:, :, shared:], learner.eos
        )
        plain = _plain(model, prompts, learner.eos)
    torch.testing.assert_close(ours, plain, **TOL)


def test_other_text_towers_fall_back_to_the_plain_pass(random_model, caplog):
    model = random_model.model
    learner = _learner(random_model, "end", csc=False)
    prompts = learner.build_embeddings(learner.ctx.detach()[None])
    saved = model.attn_mask
    model.attn_mask = None  # a bidirectional text tower: prefix states would depend on the class tokens
    try:
        assert not supports_shared_prefix(model)
        with pytest.raises(SharedPrefixUnsupported):
            encode_text_shared_prefix(model, prompts[:, 0, :5], prompts[:, :, 5:], learner.eos)
        with caplog.at_level("INFO", logger="nemesis_analysis.clip.textpass"), torch.no_grad():
            fallback = encode_prompts(model, prompts, learner.eos, shared=5)
            plain = _plain(model, prompts, learner.eos)
    finally:
        model.attn_mask = saved
    torch.testing.assert_close(fallback, plain, atol=0.0, rtol=0.0)
    assert sum("plain pass" in record.getMessage() for record in caplog.records) <= 1
