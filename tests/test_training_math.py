"""The training math recomputed independently of the training code: PAN inside the loop, logits, CE, the
SGD step (momentum, weight decay, warm-up-shifted learning rate), omega, PAN's draws, the batch rules,
the paper recipe's losses on Food101/OxfordPets and the all-half (fp16) context update.

The independent text path builds each class prompt as the full context-length token sequence
``[SOS] X ... X name . [EOS]``, splices the context in at positions 1..M and reads the transformer's state
at EOS (``encode_text_from_embeddings(..., truncate=False)``); nothing of the method's prompt layout,
PAN's variants or the norm functions is used.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from nemesis_analysis.choices import Precision
from nemesis_analysis.clip.encoding import encode_text_from_embeddings
from nemesis_analysis.config import NemesisConfig, OptimConfig, PromptConfig, RunConfig, apply_recipe
from nemesis_analysis.methods.coop import CoOp, context_dtype
from nemesis_analysis.training import nemesis
from nemesis_analysis.training.train import build_optimizer, steps_per_epoch, train_prompt

ORD = {"l2": 2.0, "l1": 1.0, "inf": math.inf}


# ------------------------------------------------------------------------------ the independent path


def full_prompt_features(loaded, classnames: list[str], ctx: torch.Tensor) -> torch.Tensor:
    """L2-normalised class text features (classes, embed) of full-length prompts with ``ctx`` spliced in."""
    model = loaded.model
    n_ctx = ctx.shape[-2]
    texts = [" ".join(["X"] * n_ctx + [name.replace("_", " ")]) + "." for name in classnames]
    tokens = loaded.tokenizer(texts)  # (classes, context_length)
    assert tokens.shape[1] == model.positional_embedding.shape[0]  # the whole sequence, nothing cut
    embeddings = model.token_embedding(tokens).float()  # (classes, length, width)
    per_class = ctx.float().expand(len(classnames), -1, -1) if ctx.dim() == 2 else ctx.float()
    embeddings = torch.cat([embeddings[:, :1], per_class, embeddings[:, 1 + n_ctx :]], dim=1)
    features = encode_text_from_embeddings(model, embeddings, tokens.argmax(dim=-1), truncate=False)
    return F.normalize(features, dim=-1)


def class_norms(ctx: torch.Tensor, norm_type: str, reduction: str) -> torch.Tensor:
    """(n_ctx,) per-position norms; class-specific context reduced over classes by mean or sum."""
    norms = torch.stack(
        [
            torch.stack(
                [
                    row.abs().pow(ORD[norm_type]).sum().pow(1 / ORD[norm_type])
                    if norm_type != "inf"
                    else row.abs().max()
                    for row in block
                ]
            )
            for block in (ctx if ctx.dim() == 3 else ctx[None])
        ]
    )  # (classes or 1, n_ctx)
    return norms.sum(0) if reduction == "sum" else norms.mean(0)


def closed_omega(epoch: int, epochs: int, schedule: str) -> float:
    return 1.0 if schedule == "constant" else 1.0 / (1.0 + math.exp(0.2 * (epoch - epochs / 2)))


def closed_lr(epoch: int, config: RunConfig) -> float:
    """CoOp's schedule as Dassl runs it: constant warm-up epochs, then cosine started at the first later epoch."""
    optim = config.optim
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    return 0.5 * optim.lr * (1 + math.cos(math.pi * (epoch - optim.warmup_epochs) / config.epochs))


def hand_step(loaded, classnames, config: RunConfig, record, ctx: torch.Tensor) -> dict:
    """Every quantity of one step, recomputed from its inputs (image features, labels, PAN's positions)."""
    spec = config.nemesis
    text = full_prompt_features(loaded, classnames, ctx)
    logits = loaded.model.logit_scale.exp().float() * record.features @ text.T  # (batch, classes)
    ce = F.cross_entropy(logits, record.labels)
    out = {"logits": logits, "ce": ce, "pun": torch.zeros(()), "pan": torch.zeros(()), "alpha": None}
    if spec.beta is None:
        out["loss"] = ce
        return out
    reduction = spec.csc_reduction.value
    norms = class_norms(ctx, spec.norm_type.value, reduction)
    out["pun"] = spec.weight * norms.mean() if spec.beta > 0 else torch.zeros(())
    if spec.beta < 1:
        base = int((logits.argmax(-1) == record.labels).sum())
        pan_weight = spec.weight if spec.pan_weight is None else spec.pan_weight
        alpha, counts = [], []
        for position in record.positions.tolist():
            rescaled = ctx.detach().clone()
            rescaled[..., position, :] *= spec.pan_factor  # this position alone (in every class)
            scores = record.features @ full_prompt_features(loaded, classnames, rescaled).T
            counts.append(int((scores.argmax(-1) == record.labels).sum()))
            alpha.append(pan_weight if counts[-1] > base else 0.0)
        alpha_t = torch.tensor(alpha)
        active = max(1, int((alpha_t != 0).sum()))
        out["pan"] = (alpha_t * norms[record.positions]).sum() / active
        out.update(alpha=alpha_t, base=base, counts=counts)
    omega = closed_omega(record.epoch, config.epochs, spec.omega.value)
    out["omega"] = omega
    out["loss"] = ce + omega * (spec.beta * out["pun"] + (1 - spec.beta) * out["pan"])
    return out


# ------------------------------------------------------------------------------------------ helpers


def train_recorded(tiny_session, checkpoints_dir, tmp_path, config: RunConfig):
    """Train ``config`` from scratch in a fresh folder; return (resolved config, every step's record)."""
    session = tiny_session.replace(checkpoints_dir=tmp_path / "ck", reports_dir=tmp_path / "reports")
    session.checkpoints_dir.mkdir(exist_ok=True)
    link = session.checkpoints_dir / "features"
    if not link.exists():
        link.symlink_to(checkpoints_dir / "features")
    records: list = []
    result = train_prompt(config, session, on_step=records.append)
    assert not result.reused
    return result.config, records


def context(tiny_session):
    return tiny_session.model("nemesis-tiny", "embedded"), tiny_session.dataset("digits").classnames


def base_config(**nemesis) -> RunConfig:
    # weight decay and momentum large enough that dropping either moves the update far beyond rounding
    return RunConfig(
        shots=1,
        epochs=3,
        optim=OptimConfig(batch_size=4, weight_decay=0.05, momentum=0.9),
        nemesis=NemesisConfig(**nemesis) if nemesis else NemesisConfig(),
    )


def check_sgd_chain(loaded, classnames, config, records) -> None:
    """Each step's update equals SGD by hand on the independent gradient: d = g + wd * p, buf = m * buf + d,
    p -= lr * buf, with lr the warm-up-shifted cosine of the step's epoch."""
    optim, buffer = config.optim, None
    for index, record in enumerate(records):
        if index:
            assert torch.equal(record.slot_before, records[index - 1].slot_after)
        lr = closed_lr(record.epoch, config)
        assert record.lr == pytest.approx(lr, rel=1e-12)
        ctx = record.slot_before.clone().requires_grad_()
        hand = hand_step(loaded, classnames, config, record, ctx)
        (grad,) = torch.autograd.grad(hand["loss"], ctx)
        torch.testing.assert_close(record.grad, grad, rtol=1e-3, atol=1e-4 * float(grad.abs().max()))
        decay = optim.weight_decay * record.slot_before
        previous = torch.zeros_like(grad) if buffer is None else buffer
        buffer = grad + decay if buffer is None else optim.momentum * buffer + grad + decay
        expected = -lr * buffer
        update = record.slot_after - record.slot_before
        torch.testing.assert_close(update, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
        if lr >= 1e-3:  # the weight-decay term alone, isolated from the update (well above rounding there)
            residual = -update / lr - optim.momentum * previous - grad
            torch.testing.assert_close(residual, decay, rtol=0, atol=1e-2 * float(decay.abs().max()))


# ---------------------------------------------------------------------- logits, CE and the SGD step


@pytest.mark.parametrize("beta", [None, 1.0], ids=["coop", "pun"])
def test_logits_ce_and_sgd_steps_match_an_independent_computation(tiny_session, checkpoints_dir, tmp_path, beta):
    config = base_config(beta=beta, weight=2.0) if beta is not None else base_config()
    config, records = train_recorded(tiny_session, checkpoints_dir, tmp_path, config)
    loaded, classnames = context(tiny_session)
    assert [r.epoch for r in records] == [0] * 3 + [1] * 3 + [2] * 3  # 10 images in batches of 4: 3 steps
    for record in records:
        with torch.no_grad():
            hand = hand_step(loaded, classnames, config, record, record.slot_before)
        torch.testing.assert_close(record.logits, hand["logits"], rtol=1e-4, atol=1e-4)
        assert record.ce == pytest.approx(float(hand["ce"]), rel=1e-5)
        assert record.pun == pytest.approx(float(hand["pun"]), rel=1e-5)
        assert record.loss == pytest.approx(float(hand["loss"]), rel=1e-5)
        if beta is not None:
            assert record.omega == pytest.approx(closed_omega(record.epoch, config.epochs, "sigmoid"), rel=1e-12)
    check_sgd_chain(loaded, classnames, config, records)


# ---------------------------------------------------------------------------------- PAN in the loop

PAN_CASES = {
    "generic-l2-np1": dict(beta=0.0, weight=3.0, pan_positions=1, pan_factor=0.0),
    "csc-inf-np3-mix": dict(beta=0.5, weight=3.0, norm_type="inf", pan_positions=3, pan_factor=0.05),
    "csc-l2-np2-sum-panweight": dict(
        beta=0.0, weight=1.0, pan_weight=5.0, pan_positions=2, pan_factor=0.05, csc_reduction="sum"
    ),
}


@pytest.mark.parametrize("case", list(PAN_CASES))
def test_pan_inside_the_loop_matches_an_independent_recount(tiny_session, checkpoints_dir, tmp_path, case):
    spec = PAN_CASES[case]
    csc = case.startswith("csc")
    config = dataclasses.replace(base_config(**spec), prompt=PromptConfig(n_ctx=4, csc=csc), epochs=8)
    config, records = train_recorded(tiny_session, checkpoints_dir, tmp_path, config)
    loaded, classnames = context(tiny_session)
    alphas = []
    for record in records:
        assert len(set(record.positions.tolist())) == spec["pan_positions"]
        with torch.no_grad():
            hand = hand_step(loaded, classnames, config, record, record.slot_before)
        assert record.correct_base == hand["base"] and record.correct_rescaled.tolist() == hand["counts"]
        assert record.alpha.tolist() == hand["alpha"].tolist()
        assert record.pan == pytest.approx(float(hand["pan"]), rel=1e-5, abs=1e-7)
        assert record.norm_loss == pytest.approx(float(hand["loss"] - hand["ce"]), rel=1e-4, abs=1e-6)
        alphas.append(hand["alpha"])
    flat = torch.cat(alphas)
    assert (flat > 0).any() and (flat == 0).any()  # both decisions occur: the check is not vacuous
    ties = sum(c == r.correct_base for r in records for c in r.correct_rescaled.tolist())
    assert ties > 0  # ties occur, and they gave alpha 0
    if spec["pan_positions"] > 1:
        assert any(len(set(a.tolist())) > 1 for a in alphas)  # positions decided one by one
    check_sgd_chain(loaded, classnames, config, records)  # the (CSC) gradient of CE + PAN as well


# ------------------------------------------------------------------------- the paper recipe's losses


@pytest.mark.parametrize("beta", [1.0, 0.0, 0.5])
def test_paper_recipe_on_food101_fixes_omega_and_weighs_only_pan(tiny_session, checkpoints_dir, tmp_path, beta):
    weight = 2.0
    food, changed = apply_recipe(
        RunConfig(
            dataset="food101",
            shots=1,
            nemesis=NemesisConfig(beta=beta, weight=weight, pan_factor=0.05, pan_positions=3),
        ),
        "paper",
    )
    assert changed["nemesis.omega"] == "constant" and changed["optim.drop_last"] is True
    assert ("nemesis.pan_weight" in changed) == (beta < 1) and "nemesis.weight" not in changed
    assert food.recipe_changes.startswith("epochs=50 (CoOp table), optim.drop_last=True")
    # The same settings trained on the embedded data (Food101 itself is not at hand in tests), shorter.
    config = dataclasses.replace(
        food,
        dataset="digits",
        shots=2,
        epochs=3,
        prompt=PromptConfig(n_ctx=4),
        optim=dataclasses.replace(food.optim, batch_size=6),
    )
    config, records = train_recorded(tiny_session, checkpoints_dir, tmp_path, config)
    loaded, classnames = context(tiny_session)
    assert len(records) == 3 * 3 and all(len(r.labels) == 6 for r in records)  # 20 images: the last 2 dropped
    for record in records:
        assert record.omega == 1.0
        with torch.no_grad():
            ctx = record.slot_before
            text = full_prompt_features(loaded, classnames, ctx)
            ce = F.cross_entropy(loaded.model.logit_scale.exp() * record.features @ text.T, record.labels)
            norms = ctx.norm(dim=-1)  # (n_ctx,)
            pun = weight * norms.mean()
            pan = torch.zeros(())
            if beta < 1:  # alpha_j in {0, 50}, whatever A is
                assert set(record.alpha.tolist()) <= {0.0, 50.0}
                active = max(1, int((record.alpha > 0).sum()))
                pan = (record.alpha * norms[record.positions]).sum() / active
        assert record.pun == pytest.approx(float(pun) if beta > 0 else 0.0, rel=1e-5)
        expected = float(ce + 1.0 * (beta * pun + (1 - beta) * pan))
        assert record.loss == pytest.approx(expected, rel=1e-4)
    if beta < 1:
        assert any(float(r.alpha.max()) == 50.0 for r in records)


def test_paper_recipe_epochs_follow_the_corruption_scripts_for_a_sweep():
    expected = {1: (50, 50), 2: (100, 50), 4: (100, 100), 8: (200, 100), 16: (200, 200)}
    for shots, (train_epochs, corrupt_epochs) in expected.items():
        trained, _ = apply_recipe(RunConfig(dataset="caltech101", shots=shots), "paper", purpose="train")
        swept, _ = apply_recipe(RunConfig(dataset="caltech101", shots=shots), "paper", purpose="corrupt")
        assert (trained.epochs, swept.epochs) == (train_epochs, corrupt_epochs)
        assert f"epochs={corrupt_epochs} (corruption-script table)" in swept.recipe_changes
        assert f"epochs={train_epochs} (CoOp table)" in trained.recipe_changes
    csc, changed = apply_recipe(RunConfig(prompt=PromptConfig(csc=True), nemesis=NemesisConfig(beta=1.0)), "paper")
    assert changed["nemesis.csc_reduction"] == "sum" and csc.nemesis.csc_reduction.value == "sum"


# ----------------------------------------------------------------------------- omega and PAN draws


@pytest.mark.parametrize("epochs", [1, 2, 50, 200])
def test_omega_closed_form(epochs):
    for epoch in sorted({0, epochs // 2, epochs - 1}):
        expected = 1.0 / (1.0 + math.exp(0.2 * (epoch - epochs / 2)))
        assert nemesis.omega(epoch, epochs, "sigmoid") == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert nemesis.omega(epoch, epochs, "constant") == 1.0
    assert nemesis.omega(epochs // 2, epochs) == pytest.approx(1 / (1 + math.exp(0.2 * (epochs // 2 - epochs / 2))))


@pytest.mark.parametrize("n_ctx, count", [(16, 1), (16, 3), (4, 2)])
def test_pan_positions_are_distinct_and_uniform(n_ctx, count):
    generator = torch.Generator().manual_seed(1234)
    draws = 6000
    hits = torch.zeros(n_ctx)
    for _ in range(draws):
        positions = nemesis.choose_pan_positions(n_ctx, count, generator)
        assert len(set(positions.tolist())) == count
        hits[positions] += 1
    expected = draws * count / n_ctx
    chi2 = float(((hits - expected) ** 2 / expected).sum())
    # chi-square with n_ctx - 1 degrees of freedom; the 0.999 quantile (df 15: 37.70, df 3: 16.27)
    assert chi2 < {16: 37.70, 4: 16.27}[n_ctx]


# ---------------------------------------------------------------------------------- the batch rules


@pytest.mark.parametrize(
    "n, batch, ours, reference",
    [(20, 8, 3, 2), (16, 8, 2, 2), (8, 8, 1, 1), (5, 8, 1, 1), (1, 32, 1, 1), (37 * 16, 32, 19, 18), (33, 32, 2, 1)],
)
def test_steps_per_epoch_under_both_rules(n, batch, ours, reference):
    assert steps_per_epoch(n, batch, drop_last=False) == ours
    assert steps_per_epoch(n, batch, drop_last=True) == reference


@pytest.mark.parametrize("drop_last, batch, sizes", [(False, 4, [4, 4, 2]), (True, 4, [4, 4]), (True, 16, [10])])
def test_the_loop_follows_the_batch_rule(tiny_session, checkpoints_dir, tmp_path, drop_last, batch, sizes):
    config = RunConfig(
        shots=1, epochs=2, prompt=PromptConfig(n_ctx=2), optim=OptimConfig(batch_size=batch, drop_last=drop_last)
    )
    _, records = train_recorded(tiny_session, checkpoints_dir, tmp_path, config)
    assert [len(r.labels) for r in records] == sizes * 2
    # one image per class: an epoch's batches hold distinct images (classes), as many as the rule keeps
    for epoch in range(2):
        seen = torch.cat([r.labels for r in records if r.epoch == epoch]).tolist()
        assert len(set(seen)) == len(seen) == sum(sizes)


# ------------------------------------------------------------------------- fp16: the all-half mode


def test_context_dtype_follows_the_precision(tiny_session):
    loaded, _ = context(tiny_session)
    assert context_dtype(dataclasses.replace(loaded, precision=Precision.FP16)) == torch.float16
    assert context_dtype(dataclasses.replace(loaded, precision=Precision.AMP)) == torch.float32
    assert context_dtype(loaded) == torch.float32


def test_fp16_context_is_updated_in_half_precision(tiny_session):
    loaded, classnames = context(tiny_session)
    method = CoOp(loaded, classnames, PromptConfig(n_ctx=4), seed=3, ctx_dtype=torch.float16)
    assert method.ctx.dtype == torch.float16
    optim = OptimConfig(lr=0.002, momentum=0.9, weight_decay=5e-4)
    optimizer = build_optimizer([method.ctx], optim)
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(8, loaded.embed_dim, generator=generator), dim=-1)
    labels = torch.arange(8) % len(classnames)
    F.cross_entropy(method.logits(features), labels).backward()
    p0, grad = method.ctx.detach().clone(), method.ctx.grad.clone()
    assert grad.dtype == torch.float16 and bool(grad.abs().max() > 0)
    optimizer.step()

    # by hand, in half: each operation's result rounded to fp16, its scalars (lr, weight decay) too, as
    # torch's half kernels do (fp32 arithmetic inside one operation)
    def half(x: float) -> float:
        return float(torch.tensor(x, dtype=torch.float16))

    d = (grad.float() + half(optim.weight_decay) * p0.float()).half()  # first step: the momentum buffer is d
    expected = (p0.float() + half(-optim.lr) * d.float()).half()
    assert method.ctx.dtype == torch.float16 and torch.equal(method.ctx.detach(), expected)
    assert optimizer.state[method.ctx]["momentum_buffer"].dtype == torch.float16
    single = p0.float() - optim.lr * (grad.float() + optim.weight_decay * p0.float())
    assert not torch.equal(method.ctx.detach().float(), single)  # an fp32 update would differ
    # weight decay alone is below half's resolution: the context does not move (in fp32 it would)
    method.ctx.grad = torch.zeros_like(method.ctx)
    fresh = build_optimizer([method.ctx], optim)
    before = method.ctx.detach().clone()
    fresh.step()
    assert torch.equal(method.ctx.detach(), before)
    moved = before.float() * (1 - optim.lr * optim.weight_decay)
    assert not torch.equal(moved, before.float())


@pytest.mark.cuda
def test_fp16_training_on_cuda_keeps_the_context_in_half(tiny_session, checkpoints_dir, tmp_path):
    session = tiny_session.replace(device="cuda")
    config = RunConfig(
        shots=1,
        epochs=1,
        precision="fp16",
        prompt=PromptConfig(n_ctx=2),
        nemesis=NemesisConfig(beta=0.5),
        optim=OptimConfig(batch_size=4),
    )
    config, records = train_recorded(session, checkpoints_dir, tmp_path, config)
    assert records and all(r.slot_after.dtype == torch.float16 and r.grad.dtype == torch.float16 for r in records)
