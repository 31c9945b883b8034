"""Mixed precision: bf16 autocast (``amp``) on CPU against fp32, and the CUDA paths (marked ``cuda``, skipped without one)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nemesis_analysis.choices import Precision
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.clip.features import encode_samples
from nemesis_analysis.clip.encoding import encode_text_from_embeddings
from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.methods.coop import CoOp, PrefixCache
from nemesis_analysis.clip.textpass import encode_prompts, shared_prefix_length

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

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
@cuda
def test_amp_on_cuda_matches_fp32_on_cpu(tiny_session, checkpoints_dir):
    fp32, dataset = _tiny(tiny_session)
    amp = load_model("nemesis-tiny", "embedded", device="cuda", precision="amp", checkpoints_dir=checkpoints_dir)
    gap, agreement, acc, acc_amp = _compare_amp_to_fp32(fp32, amp, dataset)
    assert gap < MAX_FEATURE_GAP and agreement >= MIN_AGREEMENT and abs(acc - acc_amp) <= MAX_ACC_GAP


@pytest.mark.cuda
@cuda
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
@cuda
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

