"""Mixed precision: bf16 autocast (``amp``) on CPU against fp32, like-with-like comparisons under ``amp``, and
the CUDA paths (marked ``cuda``: skipped without a CUDA device, run by ``pytest -m cuda``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nemesis_analysis.choices import Precision
from nemesis_analysis.clip.encoding import encode_text_from_embeddings
from nemesis_analysis.clip.features import encode_samples
from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.clip.textpass import encode_prompts, shared_prefix_length
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.methods.coop import CoOp, PrefixCache

# Stated tolerances of amp (bf16 autocast) against fp32 on the digits test set with the tiny CLIP.
MIN_AGREEMENT = 0.98  # share of test images with the same predicted class
MAX_ACC_GAP = 1.5  # accuracy points
MAX_FEATURE_GAP = 0.02  # largest difference of an L2-normalised feature entry


def _zero_shot(loaded, dataset, samples):
    images = encode_samples(loaded, dataset, samples, progress=False)  # (n, embed)
    texts = [dataset.template.format(name.replace("_", " ")) for name in dataset.classnames]
    text = loaded.encode_texts(texts)  # (classes, embed)
    return images, text, (images @ text.T).argmax(dim=1)


def _compare_amp_to_fp32(fp32, amp, dataset):
    labels = torch.tensor([s.label for s in dataset.test])
    images, text, predicted = _zero_shot(fp32, dataset, dataset.test)
    images_amp, text_amp, predicted_amp = _zero_shot(amp, dataset, dataset.test)
    gap = max(float((images.cpu() - images_amp.cpu()).abs().max()), float((text.cpu() - text_amp.cpu()).abs().max()))
    agreement = float((predicted.cpu() == predicted_amp.cpu()).double().mean())
    acc = 100 * float((predicted.cpu() == labels).double().mean())
    acc_amp = 100 * float((predicted_amp.cpu() == labels).double().mean())
    return gap, agreement, acc, acc_amp


def _tiny(session):
    """The session's cached tiny CLIP and digits dataset."""
    from nemesis_analysis.config import RunConfig
    from nemesis_analysis.training.train import load_model_and_data

    return load_model_and_data(RunConfig(), session)


def test_amp_on_cpu_matches_fp32_within_tolerance(tiny_session):
    fp32, dataset = _tiny(tiny_session)
    assert fp32.device.type == "cpu" and fp32.precision == Precision.FP32
    amp = dataclasses.replace(fp32, precision=Precision.AMP)
    gap, agreement, acc, acc_amp = _compare_amp_to_fp32(fp32, amp, dataset)
    assert 1e-4 < gap < MAX_FEATURE_GAP  # bf16 really ran (features differ), and only by rounding
    assert agreement >= MIN_AGREEMENT
    assert abs(acc - acc_amp) <= MAX_ACC_GAP


def test_amp_shared_prefix_training_pass_on_cpu(tiny_session):
    """Under CPU autocast the shared-prefix pass stays close to the plain one and the fp32 context gets its gradient."""
    loaded, dataset = _tiny(tiny_session)
    amp = dataclasses.replace(loaded, precision=Precision.AMP)
    learner = CoOp(amp, dataset.classnames, PromptConfig(n_ctx=16))
    shared = shared_prefix_length(learner.ctx_index, learner.eos)
    assert shared == 17
    results = []
    for share in (0, shared):
        ctx = learner.ctx.detach().clone().requires_grad_()
        with amp.autocast():
            features = encode_prompts(amp.model, learner.build_embeddings(ctx[None]), learner.eos, share)
        features = F.normalize(features.float(), dim=-1)[0]
        loss = features.sum()
        (gradient,) = torch.autograd.grad(loss, ctx)
        results.append((features.detach(), gradient))
    (plain, plain_grad), (ours, ours_grad) = results
    assert plain_grad.dtype == torch.float32 and float(plain_grad.abs().max()) > 0
    assert float((ours - plain).abs().max()) < MAX_FEATURE_GAP
    assert float((ours_grad - plain_grad).norm() / plain_grad.norm()) < 0.05


@pytest.mark.cuda
def test_amp_on_cuda_matches_fp32_on_cpu(tiny_session, checkpoints_dir):
    fp32, dataset = _tiny(tiny_session)
    amp = load_model("nemesis-tiny", "embedded", device="cuda", precision="amp", checkpoints_dir=checkpoints_dir)
    assert (fp32.device.type, fp32.precision, amp.device.type, amp.precision) == (
        "cpu",
        Precision.FP32,
        "cuda",
        Precision.AMP,
    )
    gap, agreement, acc, acc_amp = _compare_amp_to_fp32(fp32, amp, dataset)
    assert 1e-4 < gap < MAX_FEATURE_GAP  # bf16 really ran on the GPU, and differs from fp32 only by rounding
    assert agreement >= MIN_AGREEMENT and abs(acc - acc_amp) <= MAX_ACC_GAP


@pytest.mark.cuda
@pytest.mark.parametrize("backbone", ["ViT-B-16", "RN50"])
def test_shared_prefix_exact_on_cuda_fp32(backbone):
    loaded = load_model(backbone, "none", device="cuda", precision="fp32")
    learner = CoOp(loaded, ["cat", "sea lion", "hot air balloon"], PromptConfig(n_ctx=16))
    shared = shared_prefix_length(learner.ctx_index, learner.eos)
    ctx = learner.ctx.detach().clone().requires_grad_()
    with torch.no_grad():
        prompts = learner.build_embeddings(ctx[None])
        plain = encode_text_from_embeddings(loaded.model, prompts[0], learner.eos)
        ours = encode_prompts(loaded.model, prompts, learner.eos, shared)[0]
    assert ours.device.type == "cuda"
    torch.testing.assert_close(ours, plain, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_fp16_and_prefix_cache_on_cuda():
    loaded = load_model("ViT-B-16", "none", device="cuda", precision="fp16")
    learner = CoOp(loaded, ["cat", "sea lion"], PromptConfig(n_ctx=8))
    ctx = learner.ctx.detach()
    cache = PrefixCache(learner, ctx)
    assert all(state.device.type == "cuda" and state.dtype == torch.float16 for state in cache.states)
    variants = ctx.expand(2, -1, -1).clone()
    variants[:, 3] *= 2.0
    with torch.no_grad():
        cached = cache.text_features(variants, 3)
        full = learner.text_features(variants)
    assert torch.isfinite(cached).all()
    assert float((cached.float() - full.float()).abs().max()) < 1e-2  # fp16 rounding only


# ------------------------------------------------------------------------------- like with like under amp


def _own_folders(tiny_session, checkpoints_dir, tmp_path):
    """The tiny session on fresh checkpoints and reports folders sharing the encoded features (and models)."""
    session = tiny_session.replace(checkpoints_dir=tmp_path / "ck", reports_dir=tmp_path / "reports")
    session.checkpoints_dir.mkdir()
    (session.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
    return session


def _trained_context(tiny_session, checkpoints_dir, tmp_path):
    """A context trained for a few epochs (fp32, seconds): (session on its own folders, run config, context)."""
    from nemesis_analysis.config import OptimConfig, RunConfig
    from nemesis_analysis.storage.artifacts import read_prompt
    from nemesis_analysis.training.train import train_prompt

    session = _own_folders(tiny_session, checkpoints_dir, tmp_path)
    config = RunConfig(shots=4, epochs=10, prompt=PromptConfig(n_ctx=4), optim=OptimConfig(batch_size=8))
    run = train_prompt(config, session)
    return session, run.config, read_prompt(run.run_dir).ctx


def _amp_features(tiny_session):
    """The tiny CLIP under amp, the digits dataset, and its test features encoded under amp (cached)."""
    from nemesis_analysis.clip.features import image_features

    fp32, dataset = _tiny(tiny_session)
    amp = dataclasses.replace(fp32, precision=Precision.AMP)
    features, labels = image_features(amp, dataset, dataset.test, tiny_session.feature_cache, progress=False)
    return amp, dataset, features, labels


def test_identity_rescale_writes_delta_zero_under_amp_on_cpu(tiny_session, checkpoints_dir, tmp_path):
    """A sweep under ``amp`` on the CPU: rescaling any position by 1.0 changes nothing, so every row's delta is
    exactly 0 (the bf16 text passes of the plain baseline and of the prefix-cached variants used to round
    apart and flip predictions: -0.19 to -0.37 points on this prompt)."""
    from nemesis_analysis.corruption.ops import expand_grid
    from nemesis_analysis.corruption.sweep import run_corruption_sweep

    session, config, ctx = _trained_context(tiny_session, checkpoints_dir, tmp_path)
    amp, dataset, _, _ = _amp_features(tiny_session)
    method = CoOp(amp, dataset.classnames, config.prompt)
    identity = dataclasses.replace(config, precision="amp").identity()
    grid = expand_grid(4, ops=["rescale"], factors=[1.0], stds=[], reps=1)
    summary = run_corruption_sweep(session, method, ctx, identity, grid)
    rows = summary.rows[summary.rows["op"] == "rescale"]
    assert sorted(rows["position"]) == [0, 1, 2, 3] and set(rows["precision"]) == {"amp"}
    assert rows["delta"].tolist() == [0.0] * 4 and (rows["acc"] == summary.acc_original).all()


def test_pan_with_factor_one_never_marks_a_position_under_amp(tiny_session):
    """Under amp PAN's base count comes from the same fp32 text pass as its rescaled counts, not from the
    training pass's bf16 logits: with those logits rounded differently (simulated by bf16-sized noise), a
    rescale by 1.0 still never raises the count, so no position is ever marked."""
    from nemesis_analysis.config import NemesisConfig
    from nemesis_analysis.training.train import nemesis_term

    amp, dataset, images, labels = _amp_features(tiny_session)
    learner = CoOp(amp, dataset.classnames, PromptConfig(n_ctx=8), seed=3)
    spec = NemesisConfig(beta=0.0, pan_positions=8, pan_factor=1.0)
    generator, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    marked_by_logits = 0
    for start in range(0, len(labels), 30):
        features, batch_labels = images[start : start + 30], labels[start : start + 30]
        logits = learner.logits(features)  # the training pass, under bf16 autocast
        logits = logits + 0.2 * logits.std() * torch.randn(logits.shape, generator=noise)  # another rounding
        term = nemesis_term(learner, features, batch_labels, logits, spec, 1.0, generator)
        assert (term.correct_rescaled == term.correct_base).all()
        assert float(term.alpha.abs().sum()) == 0.0 and float(term.hits.sum()) == 0.0
        marked_by_logits += int((term.correct_rescaled > (logits.argmax(-1) == batch_labels).sum()).sum())
    assert marked_by_logits > 0  # comparing with the noisy training logits would have marked positions


def test_pan_under_fp32_counts_the_base_from_the_training_logits(tiny_session):
    """fp32 runs keep PAN's base count from the training pass (same precision, unchanged behaviour)."""
    from nemesis_analysis.training.train import pan_counts

    fp32, dataset = _tiny(tiny_session)
    learner = CoOp(fp32, dataset.classnames, PromptConfig(n_ctx=8), seed=3)
    features = encode_samples(fp32, dataset, dataset.test[:20], progress=False)
    labels = torch.tensor([s.label for s in dataset.test[:20]])
    logits = torch.zeros(20, dataset.num_classes)
    logits[torch.arange(20), labels] = 1.0  # every image right
    base, rescaled = pan_counts(learner, learner.ctx, torch.arange(8), 1.0, features, labels, logits)
    assert int(base) == 20 and rescaled.shape == (8,) and bool((rescaled < 20).all())


@pytest.mark.cuda
def test_identity_rescale_writes_delta_zero_under_amp_on_cuda(tiny_session, checkpoints_dir, tmp_path):
    """The CPU test above on the GPU, where ``amp`` is the default: every identity rescale has delta 0."""
    from nemesis_analysis.corruption.ops import expand_grid
    from nemesis_analysis.corruption.sweep import run_corruption_sweep

    session, config, ctx = _trained_context(tiny_session, checkpoints_dir, tmp_path)
    session = session.replace(device="cuda")
    amp = session.model("nemesis-tiny", "embedded", "amp")
    assert amp.device.type == "cuda" and amp.precision == Precision.AMP
    method = CoOp(amp, tiny_session.dataset("digits").classnames, config.prompt)
    identity = dataclasses.replace(config, precision="amp").identity()
    grid = expand_grid(4, ops=["rescale"], factors=[1.0], stds=[], reps=1)
    rows = run_corruption_sweep(session, method, ctx, identity, grid).rows
    assert rows.loc[rows["op"] == "rescale", "delta"].tolist() == [0.0] * 4


@pytest.mark.cuda
def test_plot_local_features_stay_pinned_on_the_host_on_cuda(tiny_session):
    from nemesis_analysis.config import PLOTConfig
    from nemesis_analysis.corruption.sweep import load_test_set
    from nemesis_analysis.methods.plot import PLOTMethod

    session = tiny_session.replace(device="cuda")
    loaded = session.model("nemesis-tiny", "embedded")
    method = PLOTMethod(
        loaded, session.dataset("digits").classnames, PromptConfig(n_ctx=2), options=PLOTConfig(num_prompts=2)
    )
    test = load_test_set(session, method, "digits")
    assert test.features.device.type == "cuda"
    assert test.local_features.device.type == "cpu" and test.local_features.is_pinned()
