"""nemesis evaluate and protocol runs: accuracies equal the run's own, rows are written once, 200-way equals masked 1,000-way."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from nemesis_analysis import evaluate, protocols
from nemesis_analysis.choices import Protocol
from nemesis_analysis.cli import app
from nemesis_analysis.clip.features import image_features
from nemesis_analysis.config import OptimConfig, PromptConfig, RunConfig
from nemesis_analysis.data.base import DatasetSplits
from nemesis_analysis.data.fewshot import sample_few_shot
from nemesis_analysis.data.fixtures import make_fixture_root
from nemesis_analysis.data.registry import load_dataset
from nemesis_analysis.errors import ConfigError
from nemesis_analysis.methods.coop import CoOp
from nemesis_analysis.metrics import top1_accuracy
from nemesis_analysis.storage import store
from nemesis_analysis.training.train import train_prompt

runner = CliRunner()


def _config(**overrides) -> RunConfig:
    base = dict(shots=2, seed=1, epochs=2, prompt=PromptConfig(n_ctx=4), optim=OptimConfig(batch_size=8))
    base.update(overrides)
    return RunConfig(**base)


def _evaluations(reports) -> pd.DataFrame:
    return store.read_table(reports, "evaluations", dedupe=False)


def test_evaluate_a_digits_run_equals_its_final_accuracy_and_reruns_add_nothing(tiny_context, session, checkpoints_dir):
    reports = session.reports_dir
    run = train_prompt(_config(), session)
    assert run.extra.get("evaluations", []) == [] and not store.table_path(reports, "evaluations").exists()
    args = [
        "evaluate",
        "--run",
        run.run_id,
        "--quiet",
        "--checkpoints",
        str(checkpoints_dir),
        "--reports",
        str(reports),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = _evaluations(reports)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row.acc == run.final_test_acc  # the same features, the same context: exactly equal
    assert (row.run_id, row.eval_dataset, row.eval_classes, row.protocol) == (run.run_id, "digits", "all", "fewshot")
    assert row.n_classes == 10 and row.n_test == len(tiny_context.dataset.test)
    assert row.regularizer == "coop" and row.n_ctx == 4 and row.shots == 2
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already recorded" in again.output
    assert len(_evaluations(reports)) == 1
    by_path = runner.invoke(app, [*args[:1], "--prompt", str(run.run_dir), *args[3:]])
    assert by_path.exit_code == 0 and len(_evaluations(reports)) == 1


def test_base2new_run_trains_on_base_and_records_base_and_new(tiny_context, session, checkpoints_dir):
    reports = session.reports_dir
    config = _config(protocol="base2new", seed=2)
    run = train_prompt(config, session)
    dataset = tiny_context.dataset
    split = json.loads((run.run_dir / "split.json").read_text())
    assert split["classnames"] == dataset.classnames[:5]
    drawn = sample_few_shot(dataset.train, 2, 2)  # the fewshot protocol's sample, over all ten classes
    assert [[source, label] for source, label, _ in split["train"]] == [
        [s.source, s.label] for s in drawn if s.label < 5
    ]
    rows = _evaluations(reports).set_index("eval_classes")
    assert sorted(rows.index) == ["base", "new"] and set(rows.protocol) == {"base2new"}
    assert rows.loc["base", "acc"] == run.final_test_acc
    assert rows.loc["base", "n_classes"] == 5 and rows.loc["new", "n_classes"] == 5
    n_new = sum(1 for s in dataset.test if s.label >= 5)
    assert rows.loc["new", "n_test"] == n_new and rows.loc["base", "n_test"] == len(dataset.test) - n_new
    runs = store.read_table(reports, "runs")
    assert list(runs.protocol) == ["base2new"]
    # the new-class accuracy by hand: new test images, new class names, the learned context
    prompt = evaluate.load_learned_prompt(run.run_dir)
    view = protocols.class_view(dataset, "new")
    learner = CoOp(tiny_context.loaded, view.classnames, PromptConfig(n_ctx=4))
    features = torch.stack([tiny_context.loaded.preprocess(dataset.load_image(s.source)) for s in view.test])
    with torch.no_grad():
        image = tiny_context.loaded.encode_images(features)
        text = learner.text_features(prompt.ctx[None])[0]
    expected = 100.0 * float(((image @ text.T).argmax(1) == torch.tensor([s.label for s in view.test])).double().mean())
    assert rows.loc["new", "acc"] == pytest.approx(expected, abs=100.0 / n_new + 1e-9)  # at most one float tie apart
    # a reused run writes nothing twice; `evaluate --classes new` finds the row already there
    again = train_prompt(config, session)
    assert again.reused and [e.reused for e in again.extra["evaluations"]] == [True, True]
    result = runner.invoke(app, ["evaluate", "--run", run.run_id, "--classes", "new", "--quiet",
                                 "--checkpoints", str(checkpoints_dir), "--reports", str(reports)])  # fmt: skip
    assert result.exit_code == 0 and "already recorded" in result.output
    assert len(_evaluations(reports)) == 2


@pytest.mark.parametrize("method", ["cocoop", "plot"])
def test_base2new_of_other_methods_evaluates_with_the_methods_own_scoring(method, tiny_context, session):
    """CoCoOp's meta-network and PLOT's transport take part in protocol evaluations: the base evaluation
    equals the run's own final accuracy (computed by the training loop with the method itself), and the
    new-class evaluation equals the rebuilt method's own scores on the new test images."""
    from nemesis_analysis.clip.features import local_image_features
    from nemesis_analysis.config import PLOTConfig
    from nemesis_analysis.methods import build_method_for_run

    options = {"plot": PLOTConfig(num_prompts=2)} if method == "plot" else {}
    config = _config(protocol="base2new", seed=3, prompt=PromptConfig(n_ctx=4, method=method), **options)
    run = train_prompt(config, session.replace(checkpoints_dir=session.reports_dir.parent / "ck"))
    rows = _evaluations(session.reports_dir).set_index("eval_classes")
    assert rows.loc["base", "acc"] == pytest.approx(run.final_test_acc, abs=1e-9)
    assert set(rows.prompt_method) == {method}
    dataset, loaded = tiny_context.dataset, tiny_context.loaded
    new = [i for i, s in enumerate(dataset.test) if s.label >= 5]
    features, _ = image_features(loaded, dataset, dataset.test, session.feature_cache, False)
    local = (
        local_image_features(loaded, dataset, dataset.test, session.feature_cache, False)[0][new]
        if method == "plot"
        else None
    )
    trained = build_method_for_run(run.config, loaded, dataset.classnames[5:])
    trained.load(run.run_dir)
    with torch.no_grad():
        scores = trained.variant_scores(trained.slots()["ctx"][None], features[new], local)[0]  # (n_new, 5)
    labels = torch.tensor([dataset.test[i].label - 5 for i in new])
    assert rows.loc["new", "acc"] == pytest.approx(top1_accuracy(scores, labels), abs=1e-9)


def test_base2new_refuses_class_specific_context(session, checkpoints_dir, tmp_path):
    config = _config(protocol="base2new", prompt=PromptConfig(n_ctx=4, csc=True))
    with pytest.raises(ConfigError, match="class-specific"):
        train_prompt(config, session)
    result = runner.invoke(app, ["train", "--protocol", "base2new", "--csc", "--quiet", "--checkpoints", str(checkpoints_dir),
                                 "--reports", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "class-specific" in result.output


def test_masked_accuracy_equals_subset_way_on_random_scores():
    generator = torch.Generator().manual_seed(0)
    parent_text = torch.nn.functional.normalize(torch.randn(12, 8, generator=generator), dim=-1)
    features = torch.randn(50, 8, generator=generator)
    indices = [1, 4, 5, 9]
    labels = torch.randint(0, 4, (50,), generator=generator)
    subset_way = top1_accuracy(features @ parent_text[indices].T, labels)
    assert evaluate.masked_accuracy(features, labels, parent_text, indices) == subset_way
    unmasked = 100.0 * float(((features @ parent_text.T).argmax(1) == torch.tensor(indices)[labels]).double().mean())
    assert unmasked <= subset_way


def _imagenet_a_like(parent: DatasetSplits, keep: list[int]) -> DatasetSplits:
    """A test-only variant covering some of the parent's classes, labelled in the parent's order (like ImageNet-A)."""
    test = protocols.restrict_samples(parent.test, keep)
    return DatasetSplits("imagenet_a_like", [parent.classnames[k] for k in keep], [], [], test, parent.load_image)


def test_200_way_equals_masked_1000_way_on_an_imagenet_a_like_fixture(tiny_context, tmp_path):
    root = make_fixture_root(tmp_path / "data", ["imagenet"], num_classes=8, images_per_split=(1, 0, 3))
    parent = load_dataset("imagenet", root)
    child = _imagenet_a_like(parent, [1, 2, 5, 6])
    loaded = tiny_context.loaded
    learner = CoOp(loaded, parent.classnames, PromptConfig(n_ctx=4), seed=3)
    ctx = learner.ctx.detach()
    prompt = evaluate.LearnedPrompt(
        ctx, PromptConfig(n_ctx=4), parent.classnames, {"run_id": "x"}, Protocol.DG, tmp_path
    )
    subset_way = evaluate.evaluate_context(loaded, prompt, child, "all", tmp_path / "features", progress=False)
    assert subset_way.n_classes == 4 and subset_way.n_test == 4 * 3
    features, labels = evaluate.restrict_to_classes(
        *image_features(loaded, parent, parent.test, tmp_path / "features", False), [1, 2, 5, 6]
    )
    with torch.no_grad():
        parent_text = learner.text_features(ctx[None])[0]
    indices = protocols.subsequence_indices(child.classnames, parent.classnames)
    assert indices == [1, 2, 5, 6]
    assert evaluate.masked_accuracy(features, labels, parent_text, indices) == subset_way.acc
    masked = evaluate.evaluate_masked(loaded, prompt, child, parent, tmp_path / "features", progress=False)
    assert (masked.acc, masked.n_test, masked.n_classes) == (subset_way.acc, subset_way.n_test, subset_way.n_classes)


@pytest.mark.parametrize("protocol", ["dg", "crossdataset"])
def test_transfer_protocols_evaluate_every_target_on_fixtures(protocol, tiny_session, tmp_path):
    targets = list(protocols.DG_TARGETS if protocol == "dg" else protocols.CROSSDATASET_TARGETS)
    root = make_fixture_root(tmp_path / "data", ["imagenet", *targets], num_classes=3, images_per_split=(2, 1, 2))
    session = tiny_session.replace(checkpoints_dir=tmp_path / "ck", reports_dir=tmp_path / "reports", data_root=root)
    config = _config(dataset="imagenet", protocol=protocol, shots=1, epochs=1)
    run = train_prompt(config, session)
    rows = _evaluations(tmp_path / "reports")
    assert list(rows.eval_dataset) == ["imagenet", *targets] and set(rows.protocol) == {protocol}
    assert set(rows.eval_classes) == {"all"} and set(rows.dataset) == {"imagenet"}
    assert rows.acc.iloc[0] == run.final_test_acc
    for target, n_classes in zip(rows.eval_dataset, rows.n_classes):
        assert n_classes == load_dataset(target, root).num_classes
    with pytest.raises(ConfigError, match="set dataset = imagenet"):
        train_prompt(_config(protocol=protocol), session.replace(reports_dir=tmp_path / "r2", data_root=None))


def test_evaluate_run_resolves_a_unique_prefix_and_names_an_unfinished_run(tmp_path):
    from nemesis_analysis.errors import NoDataError
    from nemesis_analysis.storage.artifacts import ARTIFACT_TENSORS

    for run_id, finished in (("abc123000000", True), ("abc456000000", True), ("def789000000", False)):
        (tmp_path / run_id).mkdir()
        if finished:
            (tmp_path / run_id / ARTIFACT_TENSORS).write_bytes(b"")
    assert evaluate.run_prompt_dir(tmp_path, "abc4") == tmp_path / "abc456000000"
    assert evaluate.run_prompt_dir(tmp_path, "abc123000000") == tmp_path / "abc123000000"
    with pytest.raises(ConfigError, match=r"prefix 'abc' is ambiguous \(abc123000000, abc456000000\)"):
        evaluate.run_prompt_dir(tmp_path, "abc")
    with pytest.raises(NoDataError, match="run def789000000 .* has no saved prompt yet .* finish it"):
        evaluate.run_prompt_dir(tmp_path, "def")  # exists: never "train it first"
    with pytest.raises(NoDataError, match="no run 'xyz'"):
        evaluate.run_prompt_dir(tmp_path, "xyz")
