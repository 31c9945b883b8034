"""The corruption engine: exact baseline, batched == naive, CSC, resume, kills, and the `corrupt` CLI."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from nemesis_analysis.cli import app
from nemesis_analysis.clip.features import image_features
from nemesis_analysis.config import PromptConfig, RunConfig
from nemesis_analysis.corruption.engine import auto_chunk, predict_corruptions
from nemesis_analysis.corruption.ops import Corruption, GridSpec, apply_corruptions, expand_grid
from nemesis_analysis.corruption.reference import evaluate_naive
from nemesis_analysis.corruption.sweep import format_summary, run_corruption_sweep
from nemesis_analysis.corruption.sweep_runs import load_run_config, method_for_identity, sweep_runs, sweep_trained_run
from nemesis_analysis.errors import ConfigError, ModelError, NoDataError
from nemesis_analysis.storage import store
from nemesis_analysis.storage.artifacts import check_fits, read_prompt
from nemesis_analysis.storage.schema import CORRUPTION_KEY
from nemesis_analysis.training.nemesis import position_norms
from nemesis_analysis.training.train import train_prompt

runner = CliRunner()
KEY = list(CORRUPTION_KEY)


@pytest.fixture(scope="module")
def generic_run(tiny_session, tmp_path_factory):
    session = tiny_session.replace(reports_dir=tmp_path_factory.mktemp("train-reports"))
    return train_prompt(RunConfig(shots=2, epochs=3), session)


@pytest.fixture(scope="module")
def csc_run(tiny_session, tmp_path_factory):
    session = tiny_session.replace(reports_dir=tmp_path_factory.mktemp("train-reports"))
    config = RunConfig(shots=2, epochs=2, prompt=PromptConfig(n_ctx=4, csc=True))
    return train_prompt(config, session)


def _identity(run, ctx):
    return run.config.identity(n_ctx=ctx.shape[-2])


def method_for_run(context, identity):
    return method_for_identity(context.loaded, context.dataset.classnames, identity)


def _table(session, dedupe=True) -> pd.DataFrame:
    return store.read_table(session.reports_dir, "corruptions", dedupe=dedupe)


def test_factor_one_reproduces_uncorrupted_accuracy(tiny_context, generic_run, session):
    grid = expand_grid(16, ops=["rescale", "replace"], factors=[1.0, 0.0], stds=[0.0], reps=1)
    summary = sweep_trained_run(session, generic_run, grid)
    rows = _table(session)
    assert len(rows) == len(grid) == 1 + 16 * 2 + 16
    identity_rows = rows[(rows.op == "rescale") & (rows.factor == 1.0)]
    assert len(identity_rows) == 16
    assert (identity_rows.acc == summary.acc_original).all()  # exactly, not approximately
    assert (identity_rows.delta == 0.0).all()
    assert not identity_rows.low_norm_effect.any()
    assert (identity_rows.norm_after == identity_rows.norm_before).all()
    # the baseline equals the accuracy the training loop reported for the same prompt
    assert summary.acc_original == pytest.approx(generic_run.final_test_acc, abs=1e-4)
    baseline = rows[rows.op == "none"].iloc[0]
    assert baseline.position == -1 and baseline.factor == 1.0 and baseline.acc == summary.acc_original
    assert baseline.norm_before == pytest.approx(sum(generic_run.position_norms) / 16, rel=1e-5)
    assert rows.n_test.unique().tolist() == [len(tiny_context.dataset.test)]
    assert set(rows.run_id) == {generic_run.run_id} and set(rows.regularizer) == {"coop"}
    # the summary is what the rows say
    corrupted = rows[rows.op != "none"]
    assert summary.best["acc"] == corrupted.acc.max() and summary.worst["acc"] == corrupted.acc.min()
    assert summary.num_norm_reducing == int((corrupted.norm_after < corrupted.norm_before).sum()) == 32
    assert summary.num_low_norm_effect == int(corrupted.low_norm_effect.sum())
    assert summary.rows_written == len(grid) and summary.num_corruptions == len(grid) - 1
    assert (rows.delta == rows.acc - rows.acc_original).all()
    zeroed = corrupted[corrupted.factor == 0.0]
    assert (zeroed.norm_after == 0.0).all()
    assert (zeroed.low_norm_effect == (zeroed.delta > 0)).all()
    assert "uncorrupted accuracy" in format_summary(summary)[0]


@pytest.mark.parametrize("which", ["generic", "csc"])
def test_batched_equals_naive(which, tiny_context, generic_run, csc_run, session):
    run = generic_run if which == "generic" else csc_run
    ctx = read_prompt(run.run_dir).ctx
    n_ctx = ctx.shape[-2]
    grid = expand_grid(n_ctx, positions=[0, n_ctx - 1], factors=[0, 10], stds=[0.5], reps=1)  # 7 variants
    identity = _identity(run, ctx)
    method = method_for_run(tiny_context, identity)
    features, labels = image_features(
        tiny_context.loaded, tiny_context.dataset, tiny_context.dataset.test, session.feature_cache, progress=False
    )
    batched = predict_corruptions(method, ctx, grid, run.run_id, features, chunk=4)
    assert batched.shape == (len(grid), len(labels))
    # The naive path re-encodes the images for every variant: a fixed sample of the test split keeps it fast.
    subset = list(range(0, len(labels), 9))  # 60 images, every class
    samples = [tiny_context.dataset.test[i] for i in subset]
    naive = evaluate_naive(method, tiny_context.dataset, ctx, grid, run.run_id, samples=samples)
    assert naive.shape == (len(grid), len(subset))
    assert torch.equal(batched[:, subset], naive)
    assert len(set(naive.flatten().tolist())) > 1  # not a degenerate all-one-class comparison
    # the sweep's accuracies are those predictions', row by row
    summary = run_corruption_sweep(session, method, ctx, identity, grid, chunk=5)
    expected = (100.0 * (batched == labels[None]).double().mean(1)).tolist()
    assert summary.rows["acc"].tolist() == pytest.approx(expected, abs=1e-9)


def test_csc_corrupts_the_position_of_every_class(tiny_context, csc_run, session):
    ctx = read_prompt(csc_run.run_dir).ctx
    assert ctx.shape == (10, 4, 128)
    identity = _identity(csc_run, ctx)
    method = method_for_run(tiny_context, identity)
    variants = apply_corruptions(ctx, [Corruption("rescale", 2, 0.0), Corruption("replace", 1, 0.5, 0)], "r")
    prompts = method.build_embeddings(variants)  # (2, classes, length, width)
    slots = method.ctx_index  # (classes, n_ctx)
    for c in range(10):
        assert torch.equal(prompts[0, c, slots[c, 2]], torch.zeros(128))
        assert torch.equal(prompts[0, c, slots[c, 1]], ctx[c, 1])
        assert not torch.equal(prompts[1, c, slots[c, 1]], ctx[c, 1])
        assert torch.equal(prompts[1, c, slots[c, 2]], ctx[c, 2])
    draws = variants[1, :, 1]  # (classes, width): independent draws per class
    assert not torch.equal(draws[0], draws[1])

    grid = expand_grid(4, positions=[2], factors=[0.0, 2.0], stds=[0.5], reps=1)
    run_corruption_sweep(session, method, ctx, identity, grid)
    rows = _table(session).set_index(KEY)
    per_class = torch.linalg.vector_norm(ctx[:, 2], dim=-1)  # (classes,)
    before = float(per_class.mean())
    assert rows.loc[("rescale", 0, 2, 0.0, 0, 0), "norm_before"] == pytest.approx(before, rel=1e-6)
    assert rows.loc[("rescale", 0, 2, 0.0, 0, 0), "norm_after"] == 0.0
    assert rows.loc[("rescale", 0, 2, 2.0, 0, 0), "norm_after"] == pytest.approx(2 * before, rel=1e-6)
    assert before == pytest.approx(float(position_norms(ctx)[2]), rel=1e-6)
    assert rows.loc[("replace", 0, 2, 0.5, 0, 0), "norm_after"] == pytest.approx(0.5 * 128**0.5, rel=0.2)
    assert bool(rows.csc.all()) and (rows.n_ctx == 4).all()


def test_resume_adds_only_missing_rows(tiny_context, generic_run, session):
    small = expand_grid(16, positions=[0, 1], factors=[0.5], stds=[0.1], reps=1)
    first = sweep_trained_run(session, generic_run, small)
    assert first.rows_written == 1 + 2 + 2
    again = sweep_trained_run(session, generic_run, small)
    assert again.rows_written == 0 and again.rows_reused == 5
    assert again.acc_original == first.acc_original and again.best == first.best
    assert len(_table(session, dedupe=False)) == 5

    wider = expand_grid(16, positions=[0, 1, 2], factors=[0.5, 2.0], stds=[0.1], reps=2)
    before = set(_table(session)[KEY].itertuples(index=False, name=None))
    widened = sweep_trained_run(session, generic_run, wider)
    after = _table(session, dedupe=False)
    assert len(after) == len(wider) == 1 + 3 * 2 + 3 * 2
    assert widened.rows_written == len(wider) - 5 and widened.rows_reused == 5
    new_keys = set(after[KEY].itertuples(index=False, name=None)) - before
    new_cells = {c.key() for c in wider} - {c.key() for c in small}  # (op, position, factor, rep)
    assert new_keys == {
        (op, 0, position, factor, rep, 0) for op, position, factor, rep in new_cells
    }  # prompt 0, layer 0
    assert not after.duplicated(KEY).any()


def test_killed_sweep_leaves_readable_tables_and_resumes(tiny_context, generic_run, session):
    grid = expand_grid(16, positions=[0, 1, 2, 3], factors=[0.0, 2.0], stds=[0.5], reps=1)  # 1 + 12 rows

    def die(index, rows):
        raise KeyboardInterrupt("killed after the first chunk")

    ctx, identity = _ctx_identity(generic_run)
    with pytest.raises(KeyboardInterrupt):
        method = method_for_run(tiny_context, identity)
        run_corruption_sweep(session, method, ctx, identity, grid, chunk=5, on_chunk=die)
    partial = _table(session, dedupe=False)
    assert len(partial) == 1 + 5  # the baseline and the first chunk, nothing else
    hidden = [p.name for p in (session.reports_dir / "corruptions").glob(".*") if not p.name.startswith(".lock-")]
    assert hidden == []  # no leftover temporary part (the run's claim lock file stays, by design)
    assert len(pd.read_parquet(session.reports_dir / "corruptions")) == 6

    done = sweep_trained_run(session, generic_run, grid, chunk=5)
    final = _table(session, dedupe=False)
    assert done.rows_written == 12 - 5
    assert len(final) == len(grid) and not final.duplicated(KEY).any()


def _ctx_identity(run):
    ctx = read_prompt(run.run_dir).ctx
    return ctx, _identity(run, ctx)


def test_auto_chunk_bounds_memory(tiny_context, generic_run):
    ctx, identity = _ctx_identity(generic_run)
    method = method_for_run(tiny_context, identity)
    per_variant = 10 * method.base.shape[1] * 128
    assert auto_chunk(method, memory_budget=per_variant * 7) == 7
    assert auto_chunk(method, memory_budget=1) == 1


def test_read_prompt_and_check_fits(tiny_context, generic_run, tmp_path):
    ctx, identity = _ctx_identity(generic_run)
    method = method_for_run(tiny_context, identity)
    prompt = read_prompt(generic_run.run_dir)
    check_fits(prompt.ctx, method, prompt.metadata)
    assert prompt.run_id == generic_run.run_id and torch.equal(prompt.ctx, ctx)
    assert prompt.prompt_config.n_ctx == 16 and not prompt.prompt_config.csc

    copy = tmp_path / "renamed"
    shutil.copytree(generic_run.run_dir, copy)
    meta = json.loads((copy / "prompt.json").read_text())
    meta["classnames"] = [f"class {i}" for i in range(10)]
    del meta["run_id"]
    (copy / "prompt.json").write_text(json.dumps(meta))
    loaded = read_prompt(copy)  # reading alone does not check
    assert loaded.run_id.startswith("file-") and len(loaded.run_id) == len("file-") + 12
    with pytest.raises(ModelError, match="other class names"):
        check_fits(loaded.ctx, method, loaded.metadata)


def test_sweep_a_recorded_run_by_id_prefix(generic_run, session):
    grid = GridSpec(positions=(0, range(1, 2)), factors=(0.0, 2.0), stds=(0.0,), reps=1)
    by_config = sweep_runs(generic_run.config, session, grid)[0]
    prefix = generic_run.run_id[:8]
    by_run = sweep_runs(RunConfig(dataset="digits", shots=7), session, grid, run_id=prefix)[0]
    assert by_run.run_id == generic_run.run_id and by_run.rows_written == 0 and by_run.rows_reused == 1 + 4 + 2
    pd.testing.assert_frame_equal(by_run.rows, by_config.rows)
    assert load_run_config(session, prefix).run_id == generic_run.run_id
    with pytest.raises(NoDataError, match="no run 'zzzz'"):
        load_run_config(session, "zzzz")
    elsewhere = session.replace(checkpoints_dir=session.reports_dir.parent / "ck")
    for run_id in ("abc123000000", "abc456000000"):
        elsewhere.run_dir(run_id).save_config(generic_run.config.to_dict())
    with pytest.raises(ConfigError, match="ambiguous"):
        load_run_config(elsewhere, "abc")
    assert load_run_config(elsewhere, "abc4").run_id == generic_run.run_id  # the recorded config decides


def test_huge_position_range_fails_before_expanding():
    grid = GridSpec.parse(positions="0-100000000")
    with pytest.raises(ConfigError, match="position 16 is outside 0..15"):
        grid.expand(16)
    assert GridSpec.parse(positions="1,3-4", factors="2", stds="0", reps=1).expand(16) == expand_grid(
        16, positions=[1, 3, 4], factors=[2.0], stds=[0.0], reps=1
    )


# ------------------------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize(
    "args, message",
    [
        (["--positions", "0,16"], "position 16 is outside 0..15"),
        (["--n-ctx", "4", "--positions", "2-5"], "position 4 is outside 0..3"),
        (["--stds", "0,-0.5"], "replace std -0.5 is invalid"),
        (["--ops", "rescale,shuffle"], "unknown corruption op 'shuffle'"),
        (["--ops", ""], "no corruption ops selected"),
        (["--positions", ""], "--positions: '' is not a comma-separated list"),
        (["--ops", "rescale", "--factors", "1,x"], "--factors: 'x' is not a number"),
        (["--reps", "0"], "reps must be >= 1"),
        (["--chunk", "0"], "chunk (variants per text pass) must be at least 1"),
        (["--seeds", "1,2", "--prompt", "somewhere"], "give only one"),
        (["--prompt", "/no/such/prompt"], "prompt /no/such/prompt does not exist"),
    ],
)
def test_corrupt_cli_errors_are_one_line_exit_2(args, message, tmp_path):
    result = runner.invoke(app, ["corrupt", "--quiet", "--checkpoints", str(tmp_path / "ck"),
                                 "--reports", str(tmp_path / "rep"), *args])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "rep").exists() and not (tmp_path / "ck").exists()  # checked before any work


def test_corrupt_cli_end_to_end(checkpoints_dir, tmp_path):
    args = ["corrupt", "--quiet", "--dataset", "digits", "--shots", "2", "--epochs", "2", "--positions", "0,1",
            "--factors", "0,2", "--stds", "0", "--reps", "1",
            "--checkpoints", str(checkpoints_dir), "--reports", str(tmp_path)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "corruptions")
    assert len(rows) == 1 + 2 * 2 + 2 * 1
    assert sorted(rows.op.unique()) == ["none", "replace", "rescale"]
    assert set(rows.position) == {-1, 0, 1} and set(rows[rows.op == "rescale"].factor) == {0.0, 2.0}
    assert set(rows.eval_classes) == {"all"}  # a fewshot run is swept on all its classes
    runs = pd.read_parquet(tmp_path / "runs")
    assert len(runs) == 1 and set(rows.run_id) == {runs.run_id.iloc[0]}
    assert rows.acc_original.iloc[0] == pytest.approx(runs.final_test_acc.iloc[0], abs=1e-4)
    assert f"uncorrupted accuracy {rows.acc_original.iloc[0]:.2f}%" in result.output
    assert "best:" in result.output and "worst:" in result.output and "Low-Norm Effect:" in result.output
    zeroed = rows[(rows.op == "replace") & (rows.factor == 0.0)]
    assert (zeroed.norm_after == 0.0).all()

    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 rows written" in again.output
    assert len(pd.read_parquet(tmp_path / "corruptions")) == 7

    # the same prompt through --prompt: same run_id, same numbers, nothing new
    run_dir = checkpoints_dir / runs.run_id.iloc[0]
    via_prompt = runner.invoke(app, ["corrupt", "--quiet", "--prompt", str(run_dir), "--positions", "0,1",
                                     "--factors", "0,2", "--stds", "0", "--reps", "1",
                                     "--checkpoints", str(checkpoints_dir), "--reports", str(tmp_path)])  # fmt: skip
    assert via_prompt.exit_code == 0, via_prompt.output
    assert "0 rows written" in via_prompt.output
    # two seeds in one call: the second run is trained and swept, the first reused
    seeds = runner.invoke(app, [*args, "--seeds", "1,2", "--positions", "0", "--ops", "rescale"])
    assert seeds.exit_code == 0, seeds.output
    table = pd.read_parquet(tmp_path / "corruptions")
    assert sorted(table.seed.unique()) == [1, 2] and len(table[table.seed == 2]) == 1 + 2


def test_corrupt_cli_on_a_base2new_run_sweeps_base_and_new_classes(checkpoints_dir, tmp_path):
    common = ["--quiet", "--checkpoints", str(checkpoints_dir), "--reports", str(tmp_path)]
    flags = ["--protocol", "base2new", "--shots", "2", "--epochs", "2", "--n-ctx", "4", "--seed", "3"]
    trained = runner.invoke(app, ["train", *flags, *common])
    assert trained.exit_code == 0, trained.output
    evaluations = store.read_table(tmp_path, "evaluations").set_index("eval_classes")
    run_id = evaluations.run_id.iloc[0]
    grid = ["--ops", "rescale", "--positions", "0,1", "--factors", "0,2"]
    result = runner.invoke(app, ["corrupt", "--run", run_id, *grid, *common])
    assert result.exit_code == 0, result.output
    assert "(base classes)" in result.output and "(new classes)" in result.output
    rows = _table(SimpleNamespace(reports_dir=tmp_path))
    assert set(rows.run_id) == {run_id} and sorted(rows.eval_classes.unique()) == ["base", "new"]
    for subset in ("base", "new"):
        part = rows[rows.eval_classes == subset]
        baseline = part[part.op == "none"].iloc[0]
        assert len(part) == 1 + 2 * 2
        # the uncorrupted prompt on the subset's images and class names is the run's own evaluation of it
        assert baseline.acc == evaluations.loc[subset, "acc"] and (part.acc_original == baseline.acc).all()
        assert baseline.n_test == evaluations.loc[subset, "n_test"]
        assert (part.delta == part.acc - baseline.acc).all()
    # resume by the full key (eval_classes included): the same sweep by flags reuses the run and adds nothing
    again = runner.invoke(app, ["corrupt", *flags, *grid, *common])
    assert again.exit_code == 0 and again.output.count("0 rows written") == 2, again.output
    assert len(_table(SimpleNamespace(reports_dir=tmp_path), dedupe=False)) == 10
    refused = runner.invoke(app, ["corrupt", "--run", run_id, "--protocol", "fewshot", *common])
    assert refused.exit_code == 2 and "drop --protocol" in refused.output
    as_prompt = runner.invoke(app, ["corrupt", "--prompt", str(checkpoints_dir / run_id), *grid, *common])
    assert as_prompt.exit_code == 2 and f"--run {run_id}" in as_prompt.output


def test_corrupt_cli_rejects_prompt_for_other_classes(checkpoints_dir, generic_run, tmp_path):
    copy = tmp_path / "prompt"
    shutil.copytree(generic_run.run_dir, copy)
    meta = json.loads((copy / "prompt.json").read_text())
    meta["classnames"] = list(reversed(meta["classnames"]))
    (copy / "prompt.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["corrupt", "--quiet", "--prompt", str(copy), "--checkpoints", str(checkpoints_dir),
                                 "--reports", str(tmp_path / "rep")])  # fmt: skip
    assert result.exit_code == 2 and "the order differs" in result.output, result.output
    assert not (tmp_path / "rep").exists()


def test_paired_counts_match_the_accuracy_change_and_scipy(tiny_context, generic_run, session):
    from scipy.stats import binomtest

    grid = expand_grid(16, positions=[0, 3, 7], factors=[0.0, 0.5, 2.0], stds=[0.5, 2.0], reps=2)
    summary = sweep_trained_run(session, generic_run, grid)
    rows = _table(session)
    assert len(rows) == len(grid) and summary.n_test == 540
    assert rows[["n_gained", "n_lost", "p_value"]].notna().all().all()
    change = rows["delta"] * rows["n_test"] / 100  # images newly right minus images newly wrong
    assert ((rows["n_gained"] - rows["n_lost"]) - change).abs().max() < 1e-6
    assert ((rows["n_gained"] + rows["n_lost"]) > 0).any()
    for row in rows.itertuples():
        n = int(row.n_gained + row.n_lost)
        expected = 1.0 if n == 0 else binomtest(int(row.n_gained), n, 0.5).pvalue
        assert row.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)
    baseline = rows[rows.op == "none"].iloc[0]
    assert (baseline.n_gained, baseline.n_lost, baseline.p_value) == (0, 0, 1.0)

    # The counts are those of the engine's predictions, image by image, against the uncorrupted prompt's.
    ctx, identity = _ctx_identity(generic_run)
    method = method_for_run(tiny_context, identity)
    features, labels = image_features(
        tiny_context.loaded, tiny_context.dataset, tiny_context.dataset.test, session.feature_cache, progress=False
    )
    predictions = predict_corruptions(method, ctx, [Corruption("none", -1, 1.0, 0), grid[5]], identity.run_id, features)
    correct = predictions == labels[None]
    by_key = rows.set_index(KEY)
    row = by_key.loc[(grid[5].op, 0, grid[5].position, float(grid[5].factor), grid[5].rep, 0)]
    assert row.n_gained == int((correct[1] & ~correct[0]).sum()) and row.n_lost == int((~correct[1] & correct[0]).sum())


def test_rerun_and_wider_grid_never_change_stored_counts(tiny_context, generic_run, session):
    small = expand_grid(16, positions=[1, 2], factors=[0.0, 0.5], stds=[1.0], reps=1)
    sweep_trained_run(session, generic_run, small)
    before = _table(session).set_index(KEY)[["n_gained", "n_lost", "p_value", "acc"]]
    sweep_trained_run(session, generic_run, small)
    sweep_trained_run(
        session, generic_run, expand_grid(16, positions=[1, 2, 5], factors=[0.0, 0.5, 3.0], stds=[1.0], reps=2)
    )
    after = _table(session, dedupe=False)
    assert not after.duplicated(KEY).any()
    pd.testing.assert_frame_equal(after.set_index(KEY).loc[before.index, before.columns], before)


def test_fill_counts_restores_the_counts_of_old_rows_in_place(tiny_context, generic_run, session):
    import pyarrow.parquet as pq

    from nemesis_analysis.corruption.sweep_runs import fill_run_counts

    grid = expand_grid(16, positions=[0, 4], factors=[0.0, 0.5], stds=[1.0], reps=2)
    sweep_trained_run(session, generic_run, grid, chunk=3)  # several parts
    original = _table(session).set_index(KEY)
    parts = sorted((session.reports_dir / "corruptions").glob("part-*.parquet"))
    assert len(parts) > 1
    for part in parts:  # parts as an older version wrote them: no count columns
        pq.write_table(pq.read_table(part).drop(["n_gained", "n_lost", "p_value"]), part)
    old = _table(session)
    assert old[["n_gained", "n_lost", "p_value"]].isna().all().all()

    assert fill_run_counts(session, generic_run.run_id[:8]) == {"all": len(grid)}
    filled = _table(session, dedupe=False)
    assert len(filled) == len(grid) and not filled.duplicated(KEY).any()
    pd.testing.assert_frame_equal(filled.set_index(KEY).loc[original.index], original, check_like=True)
    assert fill_run_counts(session, generic_run.run_id) == {"all": 0}  # nothing left to fill

    result = runner.invoke(app, ["fill-counts", "--run", "nope", "--checkpoints", str(session.checkpoints_dir),
                                 "--reports", str(session.reports_dir)])  # fmt: skip
    assert result.exit_code == 2 and "no run 'nope'" in result.output
