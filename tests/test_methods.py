"""Prompt methods behind one interface: the method choice in configs and tables, KgCoOp and CoCoOp."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from nemesis_analysis.clip.encoding import encode_text_from_embeddings, eos_positions
from nemesis_analysis.config import (
    KgCoOpConfig,
    NemesisConfig,
    OptimConfig,
    PLOTConfig,
    PromptConfig,
    RunConfig,
    apply_recipe,
)
from nemesis_analysis.corruption.ops import GridSpec
from nemesis_analysis.corruption.sweep import stratified_subsample
from nemesis_analysis.corruption.sweep_runs import sweep_runs
from nemesis_analysis.errors import ConfigError, ModelError
from nemesis_analysis.methods import METHODS, build_method
from nemesis_analysis.methods.cocoop import CoCoOp
from nemesis_analysis.methods.kgcoop import KgCoOp, knowledge_distance
from nemesis_analysis.storage import store
from nemesis_analysis.storage.artifacts import read_prompt
from nemesis_analysis.storage.schema import IDENTITY_COLUMNS, RunIdentity
from nemesis_analysis.training.train import train_prompt

# ------------------------------------------------------------------------------------------- config, tables


def test_coop_run_ids_do_not_change_and_other_methods_get_their_own():
    # Known value from before the method choice existed: CoOp runs keep their ids.
    assert RunConfig().run_id == "3be15d598b22"
    assert RunConfig(prompt=PromptConfig(method="coop")).run_id == "3be15d598b22"
    ids = {RunConfig(prompt=PromptConfig(method=m)).run_id for m in ("coop", "cocoop", "plot", "kgcoop")}
    assert len(ids) == 4
    # A method's options enter the hash only for that method.
    kg = RunConfig(prompt=PromptConfig(method="kgcoop"))
    assert kg.run_id != RunConfig(prompt=PromptConfig(method="kgcoop"), kgcoop=KgCoOpConfig(weight=2.0)).run_id
    assert (
        RunConfig(prompt=PromptConfig(method="plot")).run_id
        != RunConfig(prompt=PromptConfig(method="plot"), plot=PLOTConfig(num_prompts=2)).run_id
    )


def test_options_of_another_method_are_refused_with_the_field():
    with pytest.raises(ConfigError, match=r"kgcoop.weight applies to prompt.method = kgcoop only") as info:
        RunConfig(kgcoop=KgCoOpConfig(weight=2.0))
    assert info.value.field == "kgcoop.weight"
    with pytest.raises(ConfigError, match=r"plot.num_prompts applies to prompt.method = plot only"):
        RunConfig(prompt=PromptConfig(method="cocoop"), plot=PLOTConfig(num_prompts=3))
    with pytest.raises(ConfigError, match="unknown prompt method 'promptsrc'"):
        PromptConfig(method="promptsrc")


def test_identity_records_the_prompt_method_and_old_parts_read_as_coop(tmp_path):
    config = RunConfig(prompt=PromptConfig(method="cocoop"))
    assert config.identity().prompt_method == "cocoop" and "prompt_method" in IDENTITY_COLUMNS
    assert RunIdentity.from_row({k: v for k, v in RunConfig().identity_columns().items() if k != "prompt_method"}
                                ).prompt_method == "coop"  # fmt: skip
    # A part written before the column existed reads as CoOp.
    from nemesis_analysis.storage.schema import SCHEMAS

    measures = {name: 0.0 for name in SCHEMAS["trajectories"].names if name not in IDENTITY_COLUMNS}
    measures.update(epoch=0, position=0)
    row = {k: v for k, v in RunConfig().identity_columns().items() if k != "prompt_method"}
    old = pd.DataFrame([{**row, **measures, "norm": 1.0}])
    folder = tmp_path / "trajectories"
    folder.mkdir()
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), folder / "part-old.parquet")
    store.append_rows(tmp_path, "trajectories", [{**config.identity_columns(), **measures, "norm": 2.0}])
    table = store.read_table(tmp_path, "trajectories").sort_values("norm")
    assert table["prompt_method"].tolist() == ["coop", "cocoop"]


def test_cocoop_recipe():
    config, changed = apply_recipe(RunConfig(dataset="caltech101"), "cocoop")
    assert (config.prompt_method, config.backbone, config.shots, config.epochs, config.optim.batch_size) == (
        "cocoop",
        "ViT-B-16",
        16,
        10,
        1,
    )
    assert (config.prompt.ctx_init, config.prompt.class_token_position.value, config.optim.lr) == (
        "a photo of a",
        "end",
        0.002,
    )


def test_registered_methods_are_prompt_method_choices():
    from nemesis_analysis.methods import method_class, method_names

    assert set(method_names()) >= {"coop", "cocoop", "kgcoop", "plot"}
    assert all(method_class(name).name == name for name in method_names()) and set(method_names()) <= set(METHODS)


def test_stratified_subsample_is_seeded_and_balanced():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    keep = stratified_subsample(labels, 20)
    assert torch.equal(keep, stratified_subsample(labels, 20)) and len(set(keep.tolist())) == 20
    counts = torch.bincount(labels[keep], minlength=3).tolist()
    assert counts == [8, 7, 5]  # round-robin: the small class gives all it has, the others share the rest


# -------------------------------------------------------------------------------------------------- KgCoOp


@pytest.fixture(scope="module")
def tiny(tiny_session):
    loaded = tiny_session.model("nemesis-tiny", "embedded", "fp32")
    return loaded, tiny_session.dataset("digits").classnames


def test_kgcoop_extra_term_equals_a_hand_computation(tiny):
    loaded, classnames = tiny
    method = KgCoOp(loaded, classnames, PromptConfig(n_ctx=4), seed=3, options=KgCoOpConfig(weight=8.0))
    features = torch.randn(5, loaded.embed_dim)
    logits = method.logits(F.normalize(features, dim=-1))
    term = method.extra_loss(features, torch.zeros(5, dtype=torch.long), logits)
    learned = method.text_features()[0].detach().double()
    hand = loaded.encode_texts([f"a photo of a {name.replace('_', ' ')}." for name in classnames]).double()
    expected = 8.0 * sum(float(((learned[c] - hand[c]) ** 2).sum()) for c in range(len(classnames))) / len(classnames)
    assert float(term) == pytest.approx(expected, rel=1e-5) and expected > 0
    assert term.requires_grad
    # Without a preceding logits call the term is recomputed and equal.
    assert float(method.extra_loss(features, None, logits)) == pytest.approx(expected, rel=1e-5)


def test_kgcoop_term_is_zero_when_the_context_is_the_handcrafted_prompt(tiny):
    loaded, classnames = tiny
    method = KgCoOp(loaded, classnames, PromptConfig(ctx_init="a photo of a"))
    logits = method.logits(torch.zeros(1, loaded.embed_dim))
    assert float(method.extra_loss(None, None, logits)) == pytest.approx(0.0, abs=1e-10)
    assert float(knowledge_distance(torch.eye(3), torch.zeros(3, 3))) == pytest.approx(1.0)


# -------------------------------------------------------------------------------------------------- CoCoOp


def naive_cocoop_scores(method: CoCoOp, images: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """Per image, build each class prompt at full length and encode it alone (no EOS cut, no sharing)."""
    loaded = method.loaded
    n_ctx = ctx.shape[0]
    texts = [" ".join(["X"] * n_ctx + [name.replace("_", " ")]) + "." for name in method.classnames]
    tokens = loaded.tokenize(texts)
    base = loaded.model.token_embedding(tokens).double()  # (classes, 77, width)
    eos = eos_positions(tokens)
    model = loaded.model.double()
    meta = method.meta_net.double()
    out = torch.zeros(images.shape[0], len(method.classnames), dtype=torch.float64)
    for b, image in enumerate(images.double()):
        shift = meta(image)  # (width,)
        for c in range(len(method.classnames)):
            prompt = base[c].clone()
            prompt[1 : 1 + n_ctx] = ctx.double() + shift
            text = encode_text_from_embeddings(model, prompt[None], eos[c : c + 1], truncate=False)[0]
            out[b, c] = image @ (text / text.norm())
    model.float(), meta.float()
    return out


def test_cocoop_scores_equal_per_image_prompts_encoded_one_by_one(tiny_session):
    loaded = tiny_session.model("nemesis-tiny", "none", "fp32")
    classnames = tiny_session.dataset("digits").classnames
    method = CoCoOp(loaded, classnames, PromptConfig(ctx_init="a photo of a"), seed=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        method.ctx.add_(0.05 * torch.randn(method.ctx.shape, generator=generator))
        for p in method.meta_net.parameters():
            p.mul_(20.0)  # a shift large enough to matter
    images = F.normalize(torch.randn(3, loaded.embed_dim, generator=generator), dim=-1)
    with torch.no_grad():
        fast = method.scores(images).double()
        expected = naive_cocoop_scores(method, images, method.ctx.detach())
        assert float(method.shift(images).norm(dim=-1).min()) > 0.1
        assert torch.allclose(fast, expected, atol=2e-5)
        # Variants: the engine's stacked path equals the same computation per variant.
        variants = torch.stack([method.ctx, 2 * method.ctx])
        stacked = method.variant_scores(variants, images).double()
        assert torch.allclose(stacked[1], naive_cocoop_scores(method, images, 2 * method.ctx.detach()), atol=2e-5)
        # Image chunking does not change the scores.
        method.image_chunk = lambda num_variants: 1
        assert torch.allclose(method.variant_scores(variants, images).double(), stacked, atol=1e-6)


def test_cocoop_refuses_class_specific_context(tiny):
    loaded, classnames = tiny
    with pytest.raises(ConfigError, match="cocoop learns generic context only .*; set prompt.csc = false"):
        CoCoOp(loaded, classnames, PromptConfig(csc=True))


def _cocoop_config(**kwargs) -> RunConfig:
    base = dict(shots=2, epochs=3, prompt=PromptConfig(method="cocoop", ctx_init="a photo of a"),
                optim=OptimConfig(batch_size=8), nemesis=NemesisConfig(beta=1.0))  # fmt: skip
    base.update(kwargs)
    return RunConfig(**base)


def test_cocoop_trains_resumes_and_sweeps(tiny_session, checkpoints_dir, tmp_path):
    config = _cocoop_config()
    full_session = tiny_session.replace(checkpoints_dir=tmp_path / "full", reports_dir=tmp_path / "full-reports")
    resumed_session = tiny_session.replace(checkpoints_dir=tmp_path / "ck", reports_dir=tmp_path / "resumed")
    for session in (full_session, resumed_session):
        session.checkpoints_dir.mkdir()
        (session.checkpoints_dir / "features").symlink_to(checkpoints_dir / "features")
    full = train_prompt(config, full_session, save_every=1)
    rows = store.read_table(full_session.reports_dir, "trajectories")
    losses = rows.groupby("epoch")["train_loss"].first().tolist()
    assert losses[-1] < losses[0] and full.final_test_acc > 10.0  # beats a uniform guess over 10 digits
    assert set(rows["prompt_method"]) == {"cocoop"}

    stopped = train_prompt(config, resumed_session, save_every=1, should_stop=lambda epoch: epoch >= 1)
    assert stopped.stopped
    resumed = train_prompt(config, resumed_session, save_every=1)
    assert resumed.run_id == full.run_id and not resumed.reused
    b = store.read_table(resumed_session.reports_dir, "trajectories")
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), b.reset_index(drop=True))

    # The artifact holds the meta-network; a sweep's uncorrupted accuracy is the run's final accuracy.
    saved = read_prompt(full.run_dir)
    assert set(saved.tensors) == {"meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
                                  "meta_net.linear2.bias"}  # fmt: skip
    grid = GridSpec.parse("rescale", "0", "0.5", None, 1)
    [summary] = sweep_runs(config, full_session, grid)
    assert summary.acc_original == pytest.approx(full.final_test_acc)
    table = store.read_table(full_session.reports_dir, "corruptions")
    assert set(table["prompt_method"]) == {"cocoop"} and len(table) == 2
    # --max-test: a stratified subsample, recorded in n_test; mixing sizes in one run's rows is refused.
    other = full_session.replace(reports_dir=tmp_path / "sub")
    [small] = sweep_runs(config, other, grid, max_test=50)
    assert small.n_test == 50 and set(store.read_table(other.reports_dir, "corruptions")["n_test"]) == {50}
    with pytest.raises(ConfigError, match="--max-test"):
        sweep_runs(config, other, grid, max_test=60)


def test_kgcoop_trains_and_sweeps(tiny_session, tmp_path):
    config = RunConfig(
        shots=2, epochs=3, prompt=PromptConfig(method="kgcoop", n_ctx=4), optim=OptimConfig(batch_size=8)
    )
    session = tiny_session.replace(reports_dir=tmp_path / "reports")
    run = train_prompt(config, session)
    rows = store.read_table(session.reports_dir, "trajectories")
    losses = rows.groupby("epoch")["train_loss"].first().tolist()
    ce = rows.groupby("epoch")["ce_loss"].first().tolist()
    assert losses[-1] < losses[0] and run.final_test_acc > 10.0
    assert all(total > c for total, c in zip(losses, ce))  # the knowledge term is part of the loss
    [summary] = sweep_runs(config, session, GridSpec.parse("rescale", "0", "0.5", None, 1))
    assert summary.acc_original == pytest.approx(run.final_test_acc)


def test_dassl_cocoop_checkpoint_is_imported_with_its_meta_net(tiny, tmp_path):
    loaded, classnames = tiny
    method = CoCoOp(loaded, classnames, PromptConfig(n_ctx=4), seed=2)
    state = {"ctx": method.ctx.detach().half(), "token_prefix": torch.zeros(1),
             **{f"meta_net.{k}": v.detach().half() for k, v in method.meta_net.state_dict().items()}}  # fmt: skip
    folder = tmp_path / "prompt_learner"
    folder.mkdir()
    torch.save({"state_dict": state, "epoch": 10}, folder / "model.pth.tar-10")
    prompt = read_prompt(tmp_path)
    assert prompt.metadata["prompt_method"] == "cocoop" and len(prompt.tensors) == 4
    other = build_method("cocoop", loaded, classnames, PromptConfig(n_ctx=4), seed=9)
    other.load_tensors({**prompt.tensors, "ctx": prompt.ctx})
    assert torch.equal(other.meta_net.linear2.bias, method.meta_net.linear2.bias.half().float())
    state["meta_net.linear2.bias"] = torch.zeros(3)
    torch.save({"state_dict": state}, folder / "model.pth.tar-10")
    with pytest.raises(ModelError, match="meta-network shapes"):
        read_prompt(tmp_path)


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_method_flags_help_panels_and_refusals():
    from typer.testing import CliRunner

    from nemesis_analysis.cli import app

    runner = CliRunner()
    for command in ("train", "corrupt"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        for item in ("--method", "--plot-prompts", "--kg-weight", "(PLOT only)", "(KgCoOp only)"):
            assert item in text, f"{command} --help lacks {item}"
    assert "--max-test" in runner.invoke(app, ["corrupt", "--help"], env={"COLUMNS": "200"}).output
    refused = runner.invoke(app, ["train", "--kg-weight", "2", "--print-config"])
    assert refused.exit_code == 2
    assert (
        "kgcoop.weight applies to prompt.method = kgcoop only" in refused.output
        and "(flag --kg-weight)" in refused.output
    )
    assert len(refused.output.strip().splitlines()) == 1
    shown = runner.invoke(app, ["train", "--method", "kgcoop", "--kg-weight", "2", "--print-config"])
    assert shown.exit_code == 0 and 'method = "kgcoop"' in shown.output and "weight = 2.0" in shown.output
    config = RunConfig.from_dict({"prompt": {"method": "kgcoop"}, "kgcoop": {"weight": 2.0}})
    assert config.method_options() == KgCoOpConfig(weight=2.0) and RunConfig().method_options() is None
    unknown = runner.invoke(app, ["train", "--method", "promptsrc", "--print-config"])
    assert unknown.exit_code == 2 and "unknown prompt method 'promptsrc'" in unknown.output


def test_summaries_group_by_prompt_method():
    from nemesis_analysis.report import analysis

    row = {"dataset": "digits", "backbone": "nemesis-tiny", "shots": 4, "regularizer": "coop", "seed": 1,
           "final_test_acc": 50.0, "zero_shot_acc": 10.0, "mean_norm": 1.0}  # fmt: skip
    runs = pd.DataFrame([{**row, "prompt_method": "coop"}, {**row, "prompt_method": "cocoop", "final_test_acc": 60.0}])
    summary = analysis.summarize_runs(runs)
    assert sorted(zip(summary["prompt_method"], summary["final_test_acc_mean"])) == [("cocoop", 60.0), ("coop", 50.0)]
    legacy = analysis.summarize_runs(pd.DataFrame([row]))  # a table from before the column: CoOp
    assert legacy["prompt_method"].tolist() == ["coop"]
