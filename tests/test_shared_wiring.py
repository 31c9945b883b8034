"""CoOp's text path with the class-shared prefix against the plain per-class pass: features, context gradients,
the sweep's prefix cache, a training run's trajectory rows and a sweep's predictions."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.config import NemesisConfig, OptimConfig, PromptConfig, RunConfig
from nemesis_analysis.corruption.engine import predict_corruptions
from nemesis_analysis.corruption.ops import apply_corruptions, expand_grid, rescale
from nemesis_analysis.methods.coop import CoOp, PrefixCache
from nemesis_analysis.metrics import differing_predictions
from nemesis_analysis.training.train import train_prompt

NAMES = ["cat", "sea lion", "hot air balloon", "dog"]
TOL = dict(atol=1e-5, rtol=1e-5)
N_CTX = 6


@pytest.fixture(scope="module")
def tiny_random():
    return load_model("nemesis-tiny", "none", device="cpu")


def _learner(loaded, position="end", csc=False, share=True):
    learner = CoOp(loaded, NAMES, PromptConfig(n_ctx=N_CTX, csc=csc, class_token_position=position), seed=3)
    learner.share_prefix = share
    return learner


def _random_ctx(learner, seed=0, variants=None):
    shape = learner.ctx.shape if variants is None else (variants, *learner.ctx.shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.3


@pytest.mark.parametrize(
    "position, csc, expected",
    [
        ("end", False, 1 + N_CTX),
        ("middle", False, 1 + N_CTX // 2),
        ("front", False, 1),
        ("end", True, 0),
        ("middle", True, 0),
    ],  # fmt: skip
)
def test_shared_tokens_of_each_layout(tiny_random, position, csc, expected):
    learner = _learner(tiny_random, position, csc)
    assert learner.prefix_tokens == learner.shared_tokens == expected
    learner.share_prefix = False
    assert learner.shared_tokens == 0 and learner.prefix_tokens == expected


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_text_features_and_context_gradients_equal_plain_pass(tiny_random, position, csc):
    images = F.normalize(torch.randn(6, tiny_random.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    results = []
    for share in (False, True):
        learner = _learner(tiny_random, position, csc, share)
        with torch.no_grad():
            learner.ctx.copy_(_random_ctx(learner))
        loss = F.cross_entropy(learner.logits(images), labels)  # the training step's path
        loss.backward()
        variants = _random_ctx(learner, seed=2, variants=3)
        with torch.no_grad():
            stacked = learner.text_features(variants)  # the PAN pre-inference / sweep path
        results.append((learner.text_features().detach(), learner.ctx.grad.clone(), stacked, float(loss.detach())))
    (plain, plain_grad, plain_stack, plain_loss), (ours, ours_grad, ours_stack, ours_loss) = results
    assert float(plain_grad.abs().max()) > 1e-3  # the comparison is not between zeros
    torch.testing.assert_close(ours, plain, **TOL)
    torch.testing.assert_close(ours_grad, plain_grad, **TOL)
    torch.testing.assert_close(ours_stack, plain_stack, **TOL)
    assert ours_loss == pytest.approx(plain_loss, rel=1e-6)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_prefix_cache_equals_plain_pass_at_every_position(tiny_random, position, csc):
    learner = _learner(tiny_random, position, csc)
    plain = _learner(tiny_random, position, csc, share=False)
    ctx = _random_ctx(learner)
    cache = PrefixCache(learner, ctx)
    with torch.no_grad():
        for p in range(N_CTX):
            variants = torch.stack([rescale(ctx, p, factor) for factor in (0.0, 0.5, 4.0)])
            torch.testing.assert_close(cache.text_features(variants, p), plain.text_features(variants), **TOL)
    # with the class name at the end every position lies in the shared part: no per-class states are kept
    if position == "end" and not csc:
        assert cache.class_states is None and cache.states[0].shape[:2] == (1, 1 + N_CTX)


def test_towers_that_do_not_fit_use_the_plain_pass(tiny_random, caplog):
    model = tiny_random.model
    saved = model.attn_mask
    model.attn_mask = None  # not causal: prefix states would depend on the class tokens
    try:
        with caplog.at_level("INFO", logger="nemesis_analysis.clip.textpass"):
            learner = _learner(tiny_random)
        assert learner.prefix_tokens == 0
        assert PrefixCache(learner, _random_ctx(learner)).class_states is not None
    finally:
        model.attn_mask = saved


def test_training_rows_equal_with_and_without_sharing(tiny_session, checkpoints_dir, tmp_path, monkeypatch):
    # PUN and PAN both on: PAN's pre-inference goes through the stacked text pass as well
    config = RunConfig(shots=2, epochs=3, optim=OptimConfig(batch_size=8), nemesis=NemesisConfig(beta=0.5))
    tables = {}
    for share in (False, True):
        monkeypatch.setattr(CoOp, "share_prefix", share)
        # own checkpoints folders (sharing the feature cache): both runs train, neither reuses a finished one
        session = tiny_session.replace(
            checkpoints_dir=tmp_path / f"ck-{share}", reports_dir=tmp_path / f"share-{share}"
        )
        session.checkpoints_dir.mkdir()
        (checkpoints_dir / "features").mkdir(exist_ok=True)  # the link must not dangle when this test runs first
        (session.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
        assert not train_prompt(config, session).reused
        tables[share] = pd.read_parquet(tmp_path / f"share-{share}" / "trajectories").sort_values(["epoch", "position"])
    plain, ours = (tables[s].reset_index(drop=True) for s in (False, True))
    assert len(ours) == 3 * 16
    for column in ["norm", "norm_l1", "norm_inf", "train_loss", "ce_loss", "norm_loss"]:
        assert (ours[column] - plain[column]).abs().max() <= 1e-5 * max(1.0, plain[column].abs().max()), column
    for column in ["test_acc", "alpha", "omega", "lr", "epoch", "position"]:
        pd.testing.assert_series_equal(ours[column], plain[column])


@pytest.mark.parametrize("position, csc", [("end", False), ("middle", False), ("end", True)])
def test_sweep_predictions_equal_with_and_without_sharing(tiny_random, position, csc):
    learner = _learner(tiny_random, position, csc)
    plain = _learner(tiny_random, position, csc, share=False)
    ctx = _random_ctx(learner)
    grid = expand_grid(N_CTX)
    features = F.normalize(torch.randn(50, tiny_random.embed_dim, generator=torch.Generator().manual_seed(4)), dim=-1)
    with torch.no_grad():
        reference_text = plain.text_features(apply_corruptions(ctx, grid, "run"))  # (variants, classes, embed)
    reference_scores = features[None] @ reference_text.transpose(1, 2)  # (variants, n_test, classes)
    for reuse_prefix in (True, False):
        ours = predict_corruptions(learner, ctx, grid, "run", features, chunk=40, reuse_prefix=reuse_prefix)
        assert ours.shape == (len(grid), 50)
        assert differing_predictions(reference_scores, ours) <= 0.01 * ours.numel()  # float ties only
