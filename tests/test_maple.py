"""MaPLe: the prompted towers against a per-layer computation written out here, the layer-state cache, Nemesis
and corruption per (layer, position), visibility, and official checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nemesis_analysis.config import NemesisConfig, OptimConfig, PromptConfig, RunConfig
from nemesis_analysis.corruption.engine import variant_outcomes
from nemesis_analysis.corruption.ops import GridSpec
from nemesis_analysis.errors import ConfigError, ModelError
from nemesis_analysis.methods import build_method
from nemesis_analysis.methods.declarations import MapleConfig
from nemesis_analysis.methods.maple import check_vit, official_tensors


def block_by_hand(block, x, mask=None):
    """One pre-LN residual block: LayerNorm, multi-head attention from its projection weights, MLP."""
    width = x.shape[-1]
    attn = block.attn
    h = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    q, k, v = (h @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, dim=-1)
    heads, (batch, tokens, _) = attn.num_heads, x.shape
    q, k, v = (t.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    weights = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    if mask is not None:
        weights = weights + mask
    out = (weights.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
    x = x + out @ attn.out_proj.weight.T + attn.out_proj.bias
    h = F.layer_norm(x, (width,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    hidden = block.mlp.gelu(h @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias)
    return x + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def reference_text(method, prompts):
    """Class text features (classes, embed): layer-0 context in the token embeddings, the compound prompts
    replacing tokens 1..M at the input of blocks 1..J-1."""
    model, n, depth = method.loaded.model, method.n_ctx, method.depth
    x = method.base.clone()
    x[:, 1 : 1 + n] = prompts[0]
    length = x.shape[1]
    x = x + model.positional_embedding[:length]
    mask = torch.full((length, length), float("-inf")).triu(1)
    for layer, block in enumerate(model.transformer.resblocks):
        if 1 <= layer < depth:
            x = torch.cat([x[:, :1], prompts[layer].expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)
        x = block_by_hand(block, x, mask)
    x = model.ln_final(x)[torch.arange(x.shape[0]), method.eos]
    return F.normalize(x @ model.text_projection, dim=-1)


def reference_image(method, prompts, pixels):
    """Image features (images, embed): coupled vision prompts appended before ln_pre, and replacing the last
    M tokens at the input of blocks 1..J-1."""
    visual, n, depth = method.loaded.model.visual, method.n_ctx, method.depth
    vision = [method.coupling[i].weight @ prompts[i].T for i in range(depth)]
    vision = [(v.T + method.coupling[i].bias) for i, v in enumerate(vision)]  # (M, vision width) per layer
    x = F.conv2d(pixels, visual.conv1.weight, stride=visual.conv1.stride)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = torch.cat([x, vision[0].expand(x.shape[0], -1, -1)], dim=1)
    x = F.layer_norm(x, (x.shape[-1],), visual.ln_pre.weight, visual.ln_pre.bias, visual.ln_pre.eps)
    for layer, block in enumerate(visual.transformer.resblocks):
        if 1 <= layer < depth:
            x = torch.cat([x[:, :-n], vision[layer].expand(x.shape[0], -1, -1)], dim=1)
        x = block_by_hand(block, x)
    return F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)


def randomised(method, seed=0):
    """Give every prompt and coupling layer random values (the defaults would hide a wrong layer)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in method.trainable().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
    return method


def maple(loaded, classnames, depth=9, n_ctx=2, ctx_init="a photo of a", seed=0):
    config = PromptConfig(method="maple", n_ctx=n_ctx, ctx_init=ctx_init)
    return build_method("maple", loaded, classnames, config, seed=seed, options=MapleConfig(depth=depth))


def check_exact(method, pixels):
    prompts = method.layered(method.position_tensor()[None].detach())[0]
    with torch.no_grad():
        assert torch.allclose(method.text_features()[0], reference_text(method, prompts), atol=2e-5)
        ours = method.image_features_of(prompts[None], pixels)[0]
        assert torch.allclose(ours, reference_image(method, prompts, pixels), atol=2e-5)


def test_towers_equal_the_per_layer_computation_on_the_tiny_clip(tiny_context):
    method = randomised(maple(tiny_context.loaded, tiny_context.dataset.classnames, depth=9))
    assert method.depth == 3  # capped at the tiny CLIP's 3 layers
    pixels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    check_exact(method, pixels)


def test_towers_equal_the_per_layer_computation_on_a_random_init_vit_b16():
    from nemesis_analysis.clip.loading import load_model

    loaded = load_model("ViT-B-16", pretrained="none", device="cpu", precision="fp32")
    method = randomised(maple(loaded, ["cat", "dog", "sea_lion"], depth=9))
    assert method.depth == 9 and method.ctx.shape == (9, 2, 512) and method.position_tensor().shape == (18, 512)
    assert [c.out_features for c in method.coupling] == [768] * 9  # vision width read from the model
    check_exact(method, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2)))


def test_official_context_handling_with_two_words_of_a_photo_of_a(tiny_context):
    method = maple(tiny_context.loaded, ["cat"], n_ctx=2, ctx_init="a photo of a")
    tokens = tiny_context.loaded.tokenize(["a photo of a cat."])
    embedded = tiny_context.loaded.model.token_embedding(tokens)[0].float()
    length = method.base.shape[1]
    assert torch.equal(method.base[0], embedded[:length].to(method.base))  # "of a" stays as fixed text
    assert torch.allclose(method.ctx[0].detach(), embedded[1:3])  # "a photo" is learned
    first = method.coupling[0]
    assert all(torch.equal(c.weight, first.weight) and torch.equal(c.bias, first.bias) for c in method.coupling)


def test_layer_state_cache_equals_the_full_pass_in_any_layer_order(tiny_context):
    method = randomised(maple(tiny_context.loaded, tiny_context.dataset.classnames, n_ctx=2), seed=3)
    ctx = method.position_tensor().detach().clone()
    pixels = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    cache = method.prefix_cache(ctx)
    with torch.no_grad():
        for position in [0, 2, 5, 3, 1]:  # forward, then back to an earlier layer (states rebuilt)
            variants = ctx[None].repeat(3, 1, 1)
            variants[0, position] *= 0.5
            variants[1, position] = torch.randn(ctx.shape[-1], generator=torch.Generator().manual_seed(position))
            variants[2, position] *= 3.0
            full = method.variant_scores(variants, pixels)
            assert torch.allclose(cache.scores(variants, position, pixels), full, atol=2e-6)
            assert (full[0] - full[2]).abs().max() > 1e-3  # the variants do change the scores


def rescale_visibility(method, pixels, positions, factor=2.0):
    """``invisible`` of rescaling each flat position by ``factor`` (the engine's cached path)."""
    ctx = method.position_tensor().detach().clone()
    original = method.variant_scores(ctx[None], pixels)[0]
    variants = ctx[None].repeat(len(positions), 1, 1)
    for row, position in enumerate(positions):
        variants[row, position] *= factor
    _, invisible = variant_outcomes(method, method.prefix_cache(ctx), variants, positions, pixels, None, original)
    return invisible.tolist()


def test_a_rescale_is_invisible_only_where_layernorm_hides_it(tiny_context):
    """With bias-free coupling a positive rescale of a prompt that the next layer replaces, or whose own
    outputs nothing reads (the last block), changes nothing (every other token reads it through a LayerNorm);
    layer 0 (added to the positional embedding), a layer whose outputs later blocks read, and a coupling
    bias make it seen."""
    classnames = tiny_context.dataset.classnames
    pixels = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        method = randomised(maple(tiny_context.loaded, classnames, n_ctx=2, depth=3), seed=5)
        for linear in method.coupling:
            linear.bias.zero_()
        # layer 1 (replaced at layer 2), layer 2 (the tiny CLIP's last block), layer 0
        assert rescale_visibility(method, pixels, [2, 4, 0]) == [True, True, False]
        assert rescale_visibility(method, pixels, [2, 0], factor=1.0) == [True, True]  # the identity
        # the coupled vision prompt is no longer proportional (a constant bias would not do: LayerNorm removes
        # the mean)
        method.coupling[1].bias.copy_(
            torch.randn(method.coupling[1].bias.shape, generator=torch.Generator().manual_seed(8))
        )
        assert rescale_visibility(method, pixels, [2, 4]) == [False, True]
        shallow = randomised(maple(tiny_context.loaded, classnames, n_ctx=2, depth=2), seed=5)
        for linear in shallow.coupling:
            linear.bias.zero_()
        assert rescale_visibility(shallow, pixels, [2]) == [False]  # layer 1's outputs enter block 2


def test_official_checkpoint_import_checks_shapes(tiny_context):
    method = maple(tiny_context.loaded, tiny_context.dataset.classnames, n_ctx=2)
    width, vision = method.width, method.coupling[0].out_features
    generator = torch.Generator().manual_seed(7)
    state = {"prompt_learner.ctx": torch.randn(2, width, generator=generator),
             "prompt_learner.token_prefix": torch.zeros(10, 1, width),
             "image_encoder.conv1.weight": torch.zeros(1)}  # fmt: skip
    for i in range(method.depth - 1):
        state[f"prompt_learner.compound_prompts_text.{i}"] = torch.randn(2, width, generator=generator)
        state[f"prompt_learner.compound_prompt_projections.{i}.weight"] = torch.randn(
            vision, width, generator=generator
        )
        state[f"prompt_learner.compound_prompt_projections.{i}.bias"] = torch.randn(vision, generator=generator)
    state["prompt_learner.proj.weight"] = torch.randn(vision, width, generator=generator)
    state["prompt_learner.proj.bias"] = torch.randn(vision, generator=generator)
    method.load_official({"state_dict": state, "epoch": 5})
    assert torch.equal(method.ctx[0].detach(), state["prompt_learner.ctx"])
    assert torch.equal(method.ctx[2].detach(), state["prompt_learner.compound_prompts_text.1"])
    assert torch.equal(method.coupling[0].weight.detach(), state["prompt_learner.proj.weight"])
    assert torch.equal(method.coupling[2].bias.detach(), state["prompt_learner.compound_prompt_projections.1.bias"])
    with pytest.raises(ModelError, match="maple.depth=2"):
        official_tensors({k: v for k, v in state.items() if ".1" not in k}, method.depth, 2)
    with pytest.raises(ModelError, match="--n-ctx"):
        official_tensors({**state, "prompt_learner.ctx": torch.zeros(4, width)}, method.depth, 2)
    bad = {**state, "prompt_learner.proj.weight": torch.zeros(vision + 1, width)}
    with pytest.raises(ModelError, match="coupling.0.weight"):
        method.load_official(bad)


def test_maple_refuses_resnet_towers_and_class_specific_context(tiny_context):
    from open_clip.modified_resnet import ModifiedResNet

    with pytest.raises(ModelError, match="ViT"):
        check_vit(ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=32, width=8))
    with pytest.raises(ConfigError, match="--csc"):
        build_method("maple", tiny_context.loaded, ["a", "b"], PromptConfig(method="maple", csc=True))


def test_maple_trains_with_pun_and_sweeps_every_layer(tiny_session, tmp_path):
    from nemesis_analysis.corruption.sweep_runs import sweep_runs
    from nemesis_analysis.storage import store

    session = tiny_session.replace(reports_dir=tmp_path / "reports")
    config = RunConfig(shots=2, epochs=2, prompt=PromptConfig(method="maple", n_ctx=2),
                       nemesis=NemesisConfig(beta=1.0), optim=OptimConfig(lr=0.01))  # fmt: skip
    grid = GridSpec(ops=("rescale", "replace"), factors=(0.5, 1.0), stds=(0.05,), reps=1)
    summary = sweep_runs(config, session, grid)[0]
    rows = summary.rows
    run = store.read_table(session.reports_dir, "runs")
    assert summary.acc_original == pytest.approx(float(run["final_test_acc"].iloc[0]), abs=1e-9)
    assert sorted(rows["layer"].unique()) == [0, 1, 2]
    corrupted = rows[rows["op"] != "none"]
    assert len(corrupted) == 3 * 2 * 3  # 3 layers x 2 positions x (2 factors + 1 draw)
    assert corrupted[corrupted["factor"].eq(1.0) & corrupted["op"].eq("rescale")]["invisible"].all()
    assert (rows[rows["invisible"]]["delta"] == 0).all()
    assert summary.num_invisible == int(corrupted["invisible"].sum()) >= 6
    trajectories = store.read_table(session.reports_dir, "trajectories")
    last = trajectories[trajectories["epoch"] == 1]
    assert sorted(last["layer"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert (last["norm"] > 0).all()


def test_a_maple_study_sweeps_the_deep_layers_its_plan_expects(tmp_path, checkpoints_dir):
    """A study's corrupt job expands its grid over MaPLe's J * n_ctx flat positions, as the plan does: flat
    position 5 (layer 1, position 1) is swept and the plan then finds every job done."""
    from study_helpers import write_tiny_study
    from typer.testing import CliRunner

    from nemesis_analysis.cli import app
    from nemesis_analysis.storage import store
    from nemesis_analysis.study.plan import make_plan
    from nemesis_analysis.study.spec import load_study

    path = write_tiny_study(tmp_path, checkpoints_dir)
    text = (
        path.read_text()
        .replace("seeds = [1, 2]", "seeds = [1]")
        .replace('methods = ["coop", "pun"]', 'methods = ["coop"]')
    )
    text = text.replace("positions = [0, 1]", "positions = [0, 5]").replace(
        "epochs = 2\n", 'epochs = 1\n"prompt.method" = ["maple"]\n'
    )
    path.write_text(text)
    result = CliRunner().invoke(app, ["study", "run", str(path), "--quiet", "--no-figures"])
    assert result.exit_code == 0, result.output
    study = load_study(path)
    plan = make_plan(study)
    assert plan.done == {job.id for job in plan.jobs} and not plan.todo
    rows = store.read_table(study.outputs.reports, "corruptions")
    assert sorted(set(zip(rows["layer"], rows["position"]))) == [(0, -1), (0, 0), (1, 1)]
