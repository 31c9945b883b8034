"""Text-tower shim, truncation and prompt layouts, on random-init open_clip models and the tiny CLIP."""

from __future__ import annotations

import pytest
import torch

from nemesis_analysis.clip.encoding import encode_text_from_embeddings, eos_positions
from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.clip.prompts import PLACEHOLDER
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.methods.coop import CoOp

TEXTS = ["a photo of a dog.", "x", "an unusually long sentence about a small red bicycle near the river bank."]


@pytest.fixture(scope="module", params=["RN50", "ViT-B-16", "nemesis-tiny"])
def random_model(request):
    return load_model(request.param, "none", device="cpu")


def test_shim_equals_encode_text(random_model):
    model = random_model.model
    tokens = random_model.tokenize(TEXTS)
    with torch.no_grad():
        reference = model.encode_text(tokens)
        ours = encode_text_from_embeddings(model, model.token_embedding(tokens), eos_positions(tokens))
    assert ours.shape == reference.shape == (len(TEXTS), random_model.embed_dim)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_truncation_equals_full_length(random_model):
    model = random_model.model
    tokens = random_model.tokenize(TEXTS[:2])
    embeddings = model.token_embedding(tokens)
    eos = eos_positions(tokens)
    with torch.no_grad():
        full = encode_text_from_embeddings(model, embeddings, eos, truncate=False)
        cut = encode_text_from_embeddings(model, embeddings, eos, truncate=True)
    assert int(eos.max()) + 1 < tokens.shape[1]  # the cut really is shorter
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)


def test_dimensions_read_from_model(random_model):
    # RN50's text tower is 512 wide and projects to 1024; nothing may assume 512 everywhere.
    expected = {"RN50": (512, 1024), "ViT-B-16": (512, 512), "nemesis-tiny": (128, 128)}[random_model.backbone]
    assert (random_model.text_width, random_model.embed_dim) == expected
    learner = CoOp(random_model, ["cat", "dog"], PromptConfig(n_ctx=4))
    assert learner.ctx.shape == (4, expected[0])
    assert learner.text_features().shape == (1, 2, expected[1])


@pytest.fixture(scope="module")
def tiny_random():
    return load_model("nemesis-tiny", "none", device="cpu")


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_class_tokens_placed_where_expected(tiny_random, position):
    names = ["cat", "sea lion", "hot air balloon"]
    learner = CoOp(tiny_random, names, PromptConfig(n_ctx=4, class_token_position=position))
    placeholder = int(tiny_random.tokenize([PLACEHOLDER])[0, 1])
    for c, name in enumerate(names):
        tokens = learner.tokens[c]
        name_tokens = tiny_random.tokenize([name])[0]
        name_ids = name_tokens[1 : int(eos_positions(name_tokens[None])[0])].tolist()
        n = len(name_ids)
        if position == "end":
            start = 1 + 4
        elif position == "middle":
            start = 1 + 2
        else:
            start = 1
        assert tokens[start : start + n].tolist() == name_ids
        slots = learner.ctx_index[c].tolist()
        assert all(int(tokens[s]) == placeholder for s in slots)
        assert set(slots).isdisjoint(range(start, start + n))
        assert int(learner.eos[c]) == 1 + 4 + n + 1  # SOS, 4 context, name, "." then EOS


def test_prompt_embeddings_splice_context(tiny_random):
    learner = CoOp(tiny_random, ["cat", "dog"], PromptConfig(n_ctx=3, class_token_position="middle"))
    variants = torch.randn(5, 3, learner.width)
    prompts = learner.build_embeddings(variants)
    assert prompts.shape == (5, 2, learner.base.shape[1], learner.width)
    for c in range(2):
        torch.testing.assert_close(prompts[:, c, learner.ctx_index[c]], variants)
        untouched = [i for i in range(prompts.shape[2]) if i not in learner.ctx_index[c].tolist()]
        torch.testing.assert_close(prompts[:, c, untouched], learner.base[c, untouched].expand(5, -1, -1))


def test_batched_variants_equal_one_at_a_time(tiny_random):
    learner = CoOp(tiny_random, ["cat", "dog", "bird"], PromptConfig(n_ctx=4, csc=True))
    variants = torch.randn(3, 3, 4, learner.width) * 0.05
    with torch.no_grad():
        batched = learner.text_features(variants)
        single = torch.cat([learner.text_features(variants[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_context_is_fp32_and_init_from_words(tiny_random):
    learner = CoOp(tiny_random, ["cat"], PromptConfig(ctx_init="a photo of a"))
    assert learner.ctx.dtype == torch.float32 and learner.n_ctx == 4
    tokens = tiny_random.tokenize(["a photo of a"])
    torch.testing.assert_close(learner.ctx.detach(), tiny_random.model.token_embedding(tokens)[0, 1:5])
    # With the init words as context, the prompt equals the plain text "a photo of a cat."
    with torch.no_grad():
        plain = tiny_random.encode_texts(["a photo of a cat."])
    torch.testing.assert_close(learner.text_features()[0], plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_prefix_reuse_equals_full_pass(random_model, position, csc):
    from nemesis_analysis.clip.encoding import supports_prefix_reuse
    from nemesis_analysis.corruption.ops import rescale
    from nemesis_analysis.methods.coop import PrefixCache

    assert supports_prefix_reuse(random_model.model)
    learner = CoOp(random_model, ["cat", "sea lion"], PromptConfig(n_ctx=4, csc=csc, class_token_position=position))
    ctx = torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(0)) * 0.3
    cache = PrefixCache(learner, ctx)
    with torch.no_grad():
        for p in range(4):
            variants = torch.stack([rescale(ctx, p, factor) for factor in (0.0, 0.5, 4.0)])
            torch.testing.assert_close(
                cache.text_features(variants, p), learner.text_features(variants), atol=1e-5, rtol=1e-5
            )
    # a change at the last position leaves the longest prefix to reuse
    assert cache.start(3) > cache.start(0) >= 1


def test_coop_through_the_method_interface(tiny_random, tmp_path):
    from nemesis_analysis.methods import METHODS, method_class

    assert METHODS["coop"] is CoOp and method_class("coop") is CoOp
    method = method_class("coop")(tiny_random, ["cat", "dog", "bird"], PromptConfig(n_ctx=4, csc=True), seed=3)
    assert list(method.slots()) == ["ctx"] and method.position_tensor() is method.ctx
    assert method.ctx.shape == (3, 4, method.width) and method.n_positions == 4  # positions on axis -2
    features = torch.nn.functional.normalize(torch.randn(5, tiny_random.embed_dim), dim=-1)
    with torch.no_grad():
        text = method.text_features()[0]  # (classes, embed)
        assert torch.equal(method.scores(features), features @ text.T)
        assert torch.equal(method.logits(features), tiny_random.logit_scale * features @ text.T)
        assert float(method.extra_loss(features, torch.zeros(5, dtype=torch.long), method.logits(features))) == 0.0
    method.save(tmp_path / "artifact", {"run_id": "r"})
    other = method_class("coop")(tiny_random, ["cat", "dog", "bird"], PromptConfig(n_ctx=4, csc=True), seed=4)
    assert not torch.equal(other.ctx, method.ctx)
    metadata = other.load(tmp_path / "artifact")
    assert torch.equal(other.ctx, method.ctx) and metadata["run_id"] == "r" and metadata["prompt"]["n_ctx"] == 4
    with pytest.raises(ConfigError, match="unknown prompt method 'promptsrc'"):
        method_class("promptsrc")
