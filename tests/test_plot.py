"""PLOT: Sinkhorn against a plain loop, local image features, OT logits against a per-image path, training,
resume and the corruption sweep on the embedded digits.

Training selects PLOT by ``prompt.method = "plot"`` with ``plot.num_prompts`` (``--method plot
--plot-prompts N`` on the command line); each run trains in a checkpoints folder of its own.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nemesis_analysis.clip.encoding import encode_text_from_embeddings, eos_positions
from nemesis_analysis.clip.features import (
    encode_images_with_local,
    feature_cache_key,
    image_features,
    local_image_features,
)
from nemesis_analysis.clip.loading import load_model
from nemesis_analysis.config import OptimConfig, PLOTConfig, PromptConfig, RunConfig
from nemesis_analysis.corruption.ops import expand_grid, rescale
from nemesis_analysis.corruption.sweep import run_corruption_sweep
from nemesis_analysis.errors import ConfigError, ModelError
from nemesis_analysis.methods import method_class
from nemesis_analysis.methods.ot import ot_similarity, sinkhorn_plan
from nemesis_analysis.methods.plot import PLOTMethod
from nemesis_analysis.storage import store
from nemesis_analysis.training.train import train_prompt


def plain_sinkhorn(cost: torch.Tensor, epsilon=0.1, max_iter=100, threshold=1e-2) -> torch.Tensor:
    """One problem (rows, cols), uniform marginals, float64, one scaling update after the other."""
    cost = cost.double()
    rows, cols = cost.shape
    kernel = torch.exp(-cost / epsilon)
    a, b = torch.full((rows,), 1.0 / rows, dtype=torch.float64), torch.full((cols,), 1.0 / cols, dtype=torch.float64)
    r, c = torch.ones(rows, dtype=torch.float64), torch.ones(cols, dtype=torch.float64)
    for _ in range(max_iter):
        previous = r
        r = a / (kernel @ c)
        c = b / (kernel.T @ r)
        if (r - previous).abs().mean() < threshold:
            break
    return torch.diag(r) @ kernel @ torch.diag(c)


def similarities(shape, seed, width=32) -> torch.Tensor:
    """Cosines between random unit vectors: (..., rows, cols)."""
    generator = torch.Generator().manual_seed(seed)
    *batch, rows, cols = shape
    x = F.normalize(torch.randn(*batch, rows, width, generator=generator), dim=-1)
    y = F.normalize(torch.randn(*batch, cols, width, generator=generator), dim=-1)
    return x @ y.transpose(-1, -2)


# ------------------------------------------------------------------------------------------- Sinkhorn


@pytest.mark.parametrize("shape", [(6, 49, 4), (2, 3, 16, 2), (1, 5, 5)])
def test_batched_sinkhorn_equals_a_plain_float64_loop(shape):
    cost = 1 - similarities(shape, seed=sum(shape)).double()
    batched = sinkhorn_plan(cost)
    flat_cost, flat_plan = cost.reshape(-1, *shape[-2:]), batched.reshape(-1, *shape[-2:])
    for one_cost, one_plan in zip(flat_cost, flat_plan):
        torch.testing.assert_close(one_plan, plain_sinkhorn(one_cost), atol=1e-12, rtol=1e-10)
    # float32 (what PLOT runs in) agrees with float64 to float precision
    torch.testing.assert_close(sinkhorn_plan(cost.float()).double(), batched, atol=1e-6, rtol=1e-4)


def test_each_problem_converges_on_its_own():
    # a problem's plan does not depend on the others in its batch (chunking cannot change scores)
    cost = 1 - similarities((5, 9, 4), seed=3)
    cost[2] = cost[2] * 8  # a slower problem in the same batch
    together = sinkhorn_plan(cost)
    for i in range(5):
        torch.testing.assert_close(sinkhorn_plan(cost[i : i + 1])[0], together[i], atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(8, 49, 4), (8, 196, 4), (4, 16, 8)])
def test_plan_marginals_are_uniform(shape):
    plan = sinkhorn_plan(1 - similarities(shape, seed=7).double())
    rows, cols = shape[-2:]
    torch.testing.assert_close(plan.sum(-1), torch.full(plan.shape[:-1], 1 / rows, dtype=plan.dtype), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(-2), torch.full(plan.shape[:-2] + (cols,), 1 / cols, dtype=plan.dtype),
                               atol=1e-4, rtol=0)  # fmt: skip


def test_ot_similarity_is_one_minus_the_ot_distance_and_differentiates_through_the_cost_only():
    sim = similarities((3, 10, 4), seed=11).double().requires_grad_(True)
    score = ot_similarity(sim)
    plan = sinkhorn_plan(1 - sim.detach())
    distance = (plan * (1 - sim.detach())).sum(dim=(-2, -1))
    torch.testing.assert_close(score.detach(), 1 - distance, atol=1e-6, rtol=0)  # the plan's mass is 1
    score.sum().backward()
    torch.testing.assert_close(sim.grad, plan)  # d score / d sim is the (constant) plan


# ------------------------------------------------------------------------------------- local features


@pytest.fixture(scope="module", params=["RN50", "ViT-B-16", "nemesis-tiny"])
def random_model(request):
    return load_model(request.param, "none", device="cpu")


def test_local_features_shape_and_global_token(random_model):
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    expected = {
        "RN50": (ModifiedResNet, 49),
        "ViT-B-16": (VisionTransformer, 196),
        "nemesis-tiny": (VisionTransformer, 16),
    }
    tower, locations = expected[random_model.backbone]
    assert isinstance(random_model.model.visual, tower)  # the tiny CLIP is a ViT (16 px, 4 px patches)
    size = random_model.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    global_, local = encode_images_with_local(random_model, images)
    assert local.shape == (3, locations, random_model.embed_dim)
    torch.testing.assert_close(global_, random_model.encode_images(images), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(local.norm(dim=-1), torch.ones(3, locations))
    torch.testing.assert_close(local, naive_local_features(random_model.model.visual, images), atol=1e-5, rtol=1e-4)


def naive_local_features(visual, images: torch.Tensor) -> torch.Tensor:
    """Normalised local features the plain way: a ViT's own token output projected; a ResNet's attention pool
    written out as per-head softmax attention with each spatial token as the query."""
    from open_clip.transformer import VisionTransformer

    with torch.no_grad():
        if isinstance(visual, VisionTransformer):
            visual.output_tokens = True
            try:
                _, tokens = visual(images)  # (batch, patches, width) after ln_post
            finally:
                visual.output_tokens = False
            return F.normalize(tokens @ visual.proj, dim=-1)
        captured = []
        handle = visual.attnpool.register_forward_hook(lambda module, args, out: captured.append(args[0]))
        visual(images)
        handle.remove()
        pool, x = visual.attnpool, captured[0]  # (batch, C, H, W)
        x = x.flatten(2).transpose(1, 2)  # (batch, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pool.positional_embedding  # (batch, 1 + HW, C)
        heads, width = pool.num_heads, x.shape[-1]
        q, k, v = pool.q_proj(x), pool.k_proj(x), pool.v_proj(x)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, width // heads).transpose(1, 2)  # noqa: E731
        attention = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads), dim=-1)
        out = (attention @ split(v)).transpose(1, 2).reshape(x.shape)  # (batch, 1 + HW, C)
        return F.normalize(pool.c_proj(out)[:, 1:], dim=-1)


def test_local_feature_cache_is_keyed_beside_the_global_one(tiny_session, tmp_path):
    loaded = tiny_session.model("nemesis-tiny", "embedded")
    dataset = tiny_session.dataset("digits")
    samples = dataset.test[:40]
    local, labels = local_image_features(loaded, dataset, samples, tmp_path, progress=False)
    global_, _ = image_features(loaded, dataset, samples, tmp_path, progress=False)
    key = feature_cache_key(loaded, dataset, samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}-local.safetensors", f"{key}.safetensors"]
    assert local.shape == (40, 16, loaded.embed_dim)
    again, _ = local_image_features(loaded, dataset, samples, tmp_path, progress=False)
    assert torch.equal(again, local) and torch.equal(labels, torch.tensor([s.label for s in samples]))
    # the cached local features belong to the cached global ones (same images, same transform)
    images = torch.stack([loaded.preprocess(dataset.load_image(s.source)) for s in samples])
    direct_global, direct_local = encode_images_with_local(loaded, images)
    torch.testing.assert_close(direct_global, global_, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(direct_local, local, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------- PLOT logits


@pytest.fixture(scope="module")
def tiny_random():
    return load_model("nemesis-tiny", "none", device="cpu")


def test_plot_is_registered_and_refuses_csc(tiny_random):
    assert method_class("plot") is PLOTMethod
    with pytest.raises(ConfigError, match="plot learns generic context only .*; set prompt.csc = false"):
        PLOTMethod(tiny_random, ["a", "b"], PromptConfig(n_ctx=2, csc=True))
    with pytest.raises(ConfigError, match="num_prompts must be at least 1"):
        PLOTMethod(tiny_random, ["a", "b"], PromptConfig(n_ctx=2), options=PLOTConfig(num_prompts=0))


def test_plot_logits_equal_a_per_image_per_class_computation(tiny_random):
    classnames = ["cat", "dog", "small red bird"]
    num_prompts, n_ctx = 3, 4
    options = PLOTConfig(num_prompts=num_prompts)
    method = PLOTMethod(tiny_random, classnames, PromptConfig(n_ctx=n_ctx, init_std=0.5), seed=5, options=options)
    assert method.ctx.shape == (num_prompts, n_ctx, tiny_random.text_width)
    generator = torch.Generator().manual_seed(1)
    batch, locations = 4, 16
    local = F.normalize(torch.randn(batch, locations, tiny_random.embed_dim, generator=generator), dim=-1)
    global_ = F.normalize(torch.randn(batch, tiny_random.embed_dim, generator=generator), dim=-1)
    logits = method.logits(global_, local)
    assert logits.shape == (batch, len(classnames))

    # the straightforward path: each prompt tokenised and encoded alone, one image and one class at a time
    model = tiny_random.model
    expected = torch.empty(batch, len(classnames), dtype=torch.float64)
    for k, name in enumerate(classnames):
        tokens = tiny_random.tokenize([" ".join(["X"] * n_ctx) + f" {name}."])
        prompt_features = []
        for n in range(num_prompts):
            with torch.no_grad():
                embeddings = model.token_embedding(tokens).clone()
                embeddings[0, 1 : 1 + n_ctx] = method.ctx[n]
                feature = encode_text_from_embeddings(model, embeddings, eos_positions(tokens))[0]
            prompt_features.append(F.normalize(feature.double(), dim=-1))
        text = torch.stack(prompt_features)  # (N, embed)
        for b in range(batch):
            sim = local[b].double() @ text.T  # (L, N)
            expected[b, k] = (plain_sinkhorn(1 - sim) * sim).sum() * float(tiny_random.logit_scale)
    torch.testing.assert_close(logits.detach().double(), expected, atol=1e-3, rtol=1e-4)

    # gradients reach every prompt's context through the cost
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert method.ctx.grad.shape == method.ctx.shape
    assert (method.ctx.grad.flatten(1).norm(dim=1) > 0).all()


def test_plot_positions_are_prompt_position_pairs(tiny_random):
    method = PLOTMethod(tiny_random, ["a", "b"], PromptConfig(n_ctx=3), seed=0, options=PLOTConfig(num_prompts=2))
    flat = method.position_tensor()
    assert flat.shape == (6, tiny_random.text_width) and method.n_positions == 6
    assert method.position_pairs() == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert torch.equal(flat[4], method.ctx[1, 1])  # flat position p is (p // n_ctx, p % n_ctx)
    # a variant of the flat slot gives the same text features as the (N, n_ctx, width) layout
    variant = rescale(flat.detach(), 4, 0.0)
    with torch.no_grad():
        by_flat = method.text_features(variant[None])
        by_prompt = method.text_features(variant.reshape(2, 3, -1)[None])
    assert torch.equal(by_flat, by_prompt) and by_flat.shape == (1, 2, 2, tiny_random.embed_dim)
    with pytest.raises(ModelError, match="plot-prompts"):
        method.positions_of(torch.zeros(3, 3, tiny_random.text_width))


# ------------------------------------------------------------------------------ training and the sweep


COOP_CONFIG = RunConfig(shots=4, epochs=8, prompt=PromptConfig(n_ctx=4), optim=OptimConfig(batch_size=16))
CONFIG = RunConfig(shots=4, epochs=8, prompt=PromptConfig(method="plot", n_ctx=4), optim=OptimConfig(batch_size=16),
                   plot=PLOTConfig(num_prompts=4))  # fmt: skip


@pytest.fixture(scope="module")
def plot_runs(tiny_session, tmp_path_factory):
    """A PLOT run and a CoOp run of the same config (split, seed, epochs), each in its own folder."""
    runs = {}
    for name, config in (("coop", COOP_CONFIG), ("plot", CONFIG)):
        root = tmp_path_factory.mktemp(name)
        session = tiny_session.replace(checkpoints_dir=root / "checkpoints", reports_dir=root / "reports")
        runs[name] = (train_prompt(config, session, save_every=1), session)
    return runs


def test_plot_training_lowers_the_loss_and_beats_a_uniform_guess(plot_runs):
    result, session = plot_runs["plot"]
    traj = store.read_table(session.reports_dir, "trajectories")
    per_epoch = traj.groupby("epoch").train_loss.first()
    assert per_epoch.iloc[-1] < per_epoch.iloc[0] - 0.1
    # a uniform guess over ten classes scores 10% with a standard error of sqrt(10 * 90 / n_test) points
    n_test = len(session.dataset(CONFIG.dataset).test)
    assert result.final_test_acc > 10 + 3 * math.sqrt(10 * 90 / n_test)
    # one trajectory row per (epoch, prompt, position); n_ctx is the context length of one prompt
    assert len(traj) == CONFIG.epochs * 4 * 4 and (traj.n_ctx == 4).all()
    assert sorted(set(zip(traj.prompt_index, traj.position))) == [(n, m) for n in range(4) for m in range(4)]
    coop, _ = plot_runs["coop"]
    print(
        f"digits {CONFIG.shots}-shot seed {CONFIG.seed}, {CONFIG.epochs} epochs: "
        f"PLOT {result.final_test_acc:.2f}% CoOp {coop.final_test_acc:.2f}% zero-shot {coop.zero_shot_acc:.2f}%"
    )


def test_resumed_plot_run_equals_uninterrupted(plot_runs, tiny_session, tmp_path):
    full, full_session = plot_runs["plot"]
    session = tiny_session.replace(checkpoints_dir=tmp_path / "checkpoints", reports_dir=tmp_path / "reports")
    stopped = train_prompt(CONFIG, session, save_every=1, should_stop=lambda epoch: epoch >= 2)
    assert stopped.stopped
    resumed = train_prompt(CONFIG, session, save_every=1)
    assert not resumed.reused and resumed.final_test_acc == full.final_test_acc
    a = store.read_table(full_session.reports_dir, "trajectories")
    b = store.read_table(session.reports_dir, "trajectories")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_sweep_on_a_plot_prompt(plot_runs):
    result, session = plot_runs["plot"]
    loaded = session.model(CONFIG.backbone, CONFIG.pretrained, "fp32")
    classnames = session.dataset(CONFIG.dataset).classnames
    method = PLOTMethod(loaded, classnames, PromptConfig(n_ctx=4))
    metadata = method.load(result.run_dir)
    assert metadata["num_prompts"] == 4 and metadata["method"] == "plot"
    ctx = method.ctx.detach().clone()  # (N, n_ctx, width), as saved
    identity = result.config.identity(n_ctx=method.n_ctx)
    grid = expand_grid(method.n_positions, factors=(0.0, 2.0), stds=(0.5,), reps=1)
    summary = run_corruption_sweep(session, method, ctx, identity, grid, chunk=7)

    rows = summary.rows
    baseline = rows[rows.op == "none"].iloc[0]
    assert baseline.acc == result.final_test_acc and summary.acc_original == result.final_test_acc
    corrupted = rows[rows.op != "none"]
    assert len(corrupted) == 16 * 3
    assert sorted(set(zip(corrupted.prompt_index, corrupted.position))) == [(n, m) for n in range(4) for m in range(4)]
    # a row equals scoring the corrupted context directly: prompt 2, position 1 set to zero
    row = corrupted[(corrupted.op == "rescale") & (corrupted.prompt_index == 2) & (corrupted.position == 1)
                    & (corrupted.factor == 0.0)].iloc[0]  # fmt: skip
    zeroed = ctx.clone()
    zeroed[2, 1] = 0
    dataset = session.dataset(CONFIG.dataset)
    features, labels = image_features(loaded, dataset, dataset.test, session.feature_cache, False)
    local, _ = local_image_features(loaded, dataset, dataset.test, session.feature_cache, False)
    with torch.no_grad():
        predictions = method.variant_scores(zeroed[None], features, local)[0].argmax(-1)
    assert row.acc == pytest.approx(100.0 * (predictions == labels).double().mean().item(), abs=1e-9)
    assert row.norm_after == 0.0 and row.norm_before == pytest.approx(float(ctx[2, 1].norm()), rel=1e-6)
    # a rerun finds every key and writes nothing
    again = run_corruption_sweep(session, method, ctx, identity, grid)
    assert again.rows_written == 0 and math.isclose(again.acc_original, summary.acc_original)


# ------------------------------------------------------------------------------- official checkpoints


def write_plot_checkpoint(folder, ctx: torch.Tensor, num_classes: int, epoch: int = 50):
    """The official PLOT trainer's prompt-learner file: ctx (N, n_ctx, width), buffers with N * classes rows."""
    folder = folder / "prompt_learner"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.pth.tar-{epoch}"
    rows, width = ctx.shape[0] * num_classes, ctx.shape[-1]
    state = {
        "ctx": ctx.half(),
        "token_prefix": torch.randn(rows, 1, width),
        "token_suffix": torch.randn(rows, 60, width),
    }
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": None, "scheduler": None}, path)
    return path


def test_official_plot_checkpoint_imports_with_shapes_checked(tiny_random, tmp_path):
    from nemesis_analysis.storage.artifacts import read_prompt

    classes = ["face", "leopard", "motorbike"]
    method = PLOTMethod(tiny_random, classes, PromptConfig(n_ctx=4), seed=2, options=PLOTConfig(num_prompts=2))
    ctx = method.ctx.detach().half().float()  # exactly representable in the file's fp16
    path = write_plot_checkpoint(tmp_path / "run", ctx, len(classes))
    prompt = read_prompt(tmp_path / "run")
    assert prompt.is_plot and not prompt.csc and prompt.n_ctx == 4
    loaded, meta = read_and_check(path, method)
    assert torch.equal(loaded, ctx) and loaded.shape == (2, 4, tiny_random.text_width)
    assert meta["source"] == "plot-checkpoint" and meta["num_prompts"] == 2 and meta["num_classes"] == 3
    two, four = PLOTConfig(num_prompts=2), PLOTConfig(num_prompts=4)
    checks = [
        (
            PLOTMethod(tiny_random, classes, PromptConfig(n_ctx=4), options=four),
            "has 2 prompts .* set plot.num_prompts = 2",
        ),
        (
            PLOTMethod(tiny_random, classes, PromptConfig(n_ctx=3), options=two),
            "4 context vectors per prompt .* prompt.n_ctx = 4",
        ),
        (PLOTMethod(tiny_random, classes[:2], PromptConfig(n_ctx=4), options=two), "learned for 3 classes .* has 2"),
        (
            method_class("coop")(tiny_random, classes, PromptConfig(n_ctx=4)),
            "holds PLOT prompts .* prompt.method = plot",
        ),
    ]
    for other, message in checks:
        with pytest.raises(ModelError, match=message) as excinfo:
            read_and_check(path, other)
        assert "\n" not in str(excinfo.value)
    # the loaded context drives the method exactly as the saved one
    with torch.no_grad():
        method.position_tensor().copy_(method.positions_of(loaded))
    assert torch.equal(method.ctx.detach(), ctx)


# ---------------------------------------------------------------------------------------------- the CLI


def test_plot_train_and_corrupt_through_the_cli(checkpoints_dir, tmp_path):
    from typer.testing import CliRunner

    from nemesis_analysis.cli import app

    runner = CliRunner()
    run_flags = [
        "--method",
        "plot",
        "--plot-prompts",
        "2",
        "--pan",
        "--dataset",
        "digits",
        "--shots",
        "2",
        "--epochs",
        "2",
        "--n-ctx",
        "4",
        "--checkpoints",
        str(checkpoints_dir),
        "--reports",
        str(tmp_path),
    ]
    trained = runner.invoke(app, ["train", "--quiet", *run_flags])
    assert trained.exit_code == 0, trained.output
    runs = store.read_table(tmp_path, "runs")
    assert len(runs) == 1 and runs.prompt_method.iloc[0] == "plot" and runs.n_ctx.iloc[0] == 4
    traj = store.read_table(tmp_path, "trajectories")
    assert len(traj) == 2 * 2 * 4  # epochs * prompts * positions
    assert sorted(set(zip(traj.prompt_index, traj.position))) == [(n, m) for n in range(2) for m in range(4)]

    # flat positions 1 and 6: prompt 0 position 1, prompt 1 position 2 (n_ctx 4)
    grid = ["--ops", "rescale", "--positions", "1,6", "--factors", "0,2"]
    swept = runner.invoke(app, ["corrupt", "--quiet", *run_flags, *grid])
    assert swept.exit_code == 0, swept.output
    assert "prompt " in swept.output  # describe_corruption names the prompt of a PLOT position
    rows = store.read_table(tmp_path, "corruptions")
    assert len(rows) == 1 + 2 * 2 and set(rows.run_id) == set(runs.run_id)
    corrupted = rows[rows.op == "rescale"]
    assert sorted(set(zip(corrupted.prompt_index, corrupted.position))) == [(0, 1), (1, 2)]
    baseline = rows[rows.op == "none"].iloc[0]
    assert baseline.acc == pytest.approx(runs.final_test_acc.iloc[0], abs=1e-9)  # the trained prompt, unchanged
    # a 0-rescale of prompt 1 position 2 zeroes that vector: its norm after is 0
    zeroed = corrupted[(corrupted.prompt_index == 1) & (corrupted.factor == 0.0)].iloc[0]
    assert zeroed.norm_after == 0.0 and zeroed.norm_before > 0

    # the saved prompt through --prompt: N read from the artifact, the same keys, nothing new
    run_dir = checkpoints_dir / runs.run_id.iloc[0]
    again = runner.invoke(app, ["corrupt", "--quiet", "--prompt", str(run_dir), *grid,
                                "--checkpoints", str(checkpoints_dir), "--reports", str(tmp_path)])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "0 rows written" in again.output


def read_and_check(path, method=None):
    """(ctx, metadata) of any prompt file, checked against ``method`` when given."""
    from pathlib import Path

    from nemesis_analysis.storage.artifacts import check_fits, read_prompt

    prompt = read_prompt(path)
    if method is not None:
        check_fits(prompt.ctx, method, prompt.metadata, source=Path(path).name)
    return prompt.ctx, prompt.metadata
