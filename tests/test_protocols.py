"""Protocols: the base/new class split and relabelling on fixtures in the real layouts, target lists, refusals, run ids."""

from __future__ import annotations

import json
import math

import pytest

from nemesis_analysis import protocols
from nemesis_analysis.choices import EvalClasses, Protocol
from nemesis_analysis.config import PromptConfig, RunConfig
from nemesis_analysis.data.base import Sample
from nemesis_analysis.data.fewshot import sample_few_shot
from nemesis_analysis.data.fixtures import make_fixture_root
from nemesis_analysis.data.registry import load_dataset
from nemesis_analysis.errors import ConfigError


@pytest.mark.parametrize(
    "n, base, new", [(5, [0, 1, 2], [3, 4]), (4, [0, 1], [2, 3]), (1, [0], []), (10, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9])]
)
def test_split_rule_is_ceil_half_of_sorted_ids(n, base, new):
    labels = list(reversed(range(n))) * 2  # order and repeats do not matter
    assert protocols.split_base_new(labels) == (base, new)
    assert len(base) == math.ceil(n / 2)


def test_split_of_sparse_ids_and_relabeler():
    assert protocols.split_base_new([40, 7, 19, 3, 7]) == ([3, 7], [19, 40])
    assert protocols.relabeler([40, 19]) == {19: 0, 40: 1}
    samples = [Sample("a", 40), Sample("b", 3), Sample("c", 19)]
    assert protocols.restrict_samples(samples, [19, 40]) == [Sample("a", 1), Sample("c", 0)]


@pytest.mark.parametrize("num_classes", [5, 4])
@pytest.mark.parametrize("name", ["dtd", "caltech101", "fgvc_aircraft"])
def test_class_views_on_real_layouts(tmp_path, name, num_classes):
    root = make_fixture_root(tmp_path, [name], num_classes=num_classes, images_per_split=(3, 1, 2))
    dataset = load_dataset(name, root)
    cut = math.ceil(num_classes / 2)
    base = protocols.class_view(dataset, "base")
    new = protocols.class_view(dataset, "new")
    assert base.classnames == dataset.classnames[:cut]
    assert new.classnames == dataset.classnames[cut:]
    assert protocols.class_view(dataset, "all") is dataset
    for view, offset in ((base, 0), (new, cut)):
        for split in ("train", "val", "test"):
            original = {s.source: s.label for s in dataset.split(split)}
            kept = view.split(split)
            # every image of the half, none of the other, each relabelled to its position in the half
            assert len(kept) == sum(1 for label in original.values() if (label < cut) == (offset == 0))
            for sample in kept:
                assert original[sample.source] == sample.label + offset
                assert view.classnames[sample.label] == dataset.classnames[original[sample.source]]


def test_few_shot_sample_is_the_fewshot_protocols_before_restriction(tmp_path):
    root = make_fixture_root(tmp_path, ["oxford_pets"], num_classes=5, images_per_split=(6, 3, 2))
    dataset = load_dataset("oxford_pets", root)
    train = sample_few_shot(dataset.train, 2, 3)
    val = sample_few_shot(dataset.val, 2, 3)
    same, samples = protocols.training_view(Protocol.FEWSHOT, dataset, (train, val))
    assert same is dataset and samples == (train, val)
    view, (base_train, base_val) = protocols.training_view(Protocol.BASE2NEW, dataset, (train, val))
    assert view.classnames == dataset.classnames[:3]
    assert base_train == [s for s in train if s.label < 3]  # base ids 0..2 keep their numbers
    assert base_val == [s for s in val if s.label < 3]
    assert len(base_train) == 3 * 2


def test_evaluation_plans():
    assert protocols.evaluation_plan("fewshot", "dtd") == []
    assert protocols.evaluation_plan("base2new", "dtd") == [("dtd", EvalClasses.BASE), ("dtd", EvalClasses.NEW)]
    dg = protocols.evaluation_plan("dg", "imagenet")
    assert [d for d, _ in dg] == ["imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    cross = protocols.evaluation_plan("crossdataset", "imagenet")
    assert len(cross) == 11 and {c for _, c in cross} == {EvalClasses.ALL}
    assert "imagenet" not in protocols.CROSSDATASET_TARGETS[1:]


def test_refusals_are_one_line():
    with pytest.raises(ConfigError, match="class-specific context") as error:
        protocols.check_protocol("base2new", "digits", csc=True)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="set dataset = imagenet"):
        protocols.check_protocol("dg", "digits", csc=False)
    with pytest.raises(ConfigError, match="unknown protocol"):
        protocols.check_protocol("zeroshot", "digits", csc=False)
    assert protocols.check_protocol("fewshot", "digits", csc=True) is Protocol.FEWSHOT
    with pytest.raises(ConfigError):
        protocols.check_transfer(True, ["a", "b"], ["c"])
    protocols.check_transfer(True, ["a", "b"], ["a", "b"])
    protocols.check_transfer(False, ["a", "b"], ["c"])


def test_subsequence_indices_keep_repeated_names_apart():
    parent = ["crane", "goldfinch", "crane", "junco", "vulture"]
    assert protocols.subsequence_indices(["crane", "junco"], parent) == [0, 3]
    assert protocols.subsequence_indices(["goldfinch", "crane", "vulture"], parent) == [1, 2, 4]
    with pytest.raises(ConfigError):
        protocols.subsequence_indices(["junco", "goldfinch"], parent)


def test_default_protocol_leaves_run_ids_unchanged():
    # Values computed before the protocol field existed.
    assert RunConfig().run_id == "3be15d598b22"
    assert RunConfig(shots=4, seed=1).resolved("cpu").run_id == "ac8db8b0f988"
    config = RunConfig(shots=4, seed=1)
    assert config.run_id == "9aea4f507ebf"
    other = RunConfig(shots=4, seed=1, protocol="base2new")
    assert other.run_id != config.run_id and other.protocol is Protocol.BASE2NEW
    assert RunConfig.from_dict(json.loads(json.dumps(other.to_dict()))).run_id == other.run_id
    assert other.config_columns()["protocol"] == "base2new"
    with pytest.raises(ConfigError, match="unknown protocol"):
        RunConfig(protocol="nope")
    assert (
        RunConfig(prompt=PromptConfig(csc=True), protocol="fewshot").run_id
        == RunConfig(prompt=PromptConfig(csc=True)).run_id
    )


# ------------------------------------------------------------------------------ corruption under a protocol


def _identity(run_id: str = "r1", seed: int = 1) -> dict:
    return dict(run_id=run_id, dataset="digits", backbone="nemesis-tiny", pretrained="embedded", shots=2, seed=seed,
                regularizer="coop", n_ctx=2, csc=False, class_token_position="end", precision="fp32")  # fmt: skip


def _row(
    identity: dict,
    eval_classes: str,
    op: str,
    position: int,
    factor: float,
    acc: float,
    acc_original: float,
    norm_before: float,
    norm_after: float,
    n_test: int,
) -> dict:
    delta = acc - acc_original
    return {
        **identity,
        "eval_classes": eval_classes,
        "op": op,
        "position": position,
        "factor": factor,
        "rep": 0,
        "acc": acc,
        "acc_original": acc_original,
        "delta": delta,
        "norm_before": norm_before,
        "norm_after": norm_after,
        "low_norm_effect": norm_after < norm_before and delta > 0,
        "n_test": n_test,
    }


def _hand_rows(run_id="r1", seed=1, subsets=("base", "new")):
    """Per subset a baseline and two rescales of a 2-position context with norms (1, 2): on base the first
    lowers the norm and helps (+10), on new it lowers the norm and hurts (-10); the second raises the norm."""
    identity = _identity(run_id, seed)
    numbers = {"base": (50.0, 60.0, 40.0, 10), "new": (30.0, 20.0, 35.0, 8), "all": (40.0, 45.0, 30.0, 18)}
    rows = []
    for subset in subsets:
        original, first, second, n_test = numbers[subset]
        rows += [_row(identity, subset, "none", -1, 1.0, original, original, 1.5, 1.5, n_test),
                 _row(identity, subset, "rescale", 0, 0.5, first, original, 1.0, 0.5, n_test),
                 _row(identity, subset, "rescale", 1, 1.5, second, original, 2.0, 3.0, n_test)]  # fmt: skip
    return rows


def test_base_and_new_rows_are_separate_keys_and_old_parts_read_as_all(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nemesis_analysis.storage import schema, store

    rows = pd.DataFrame(_hand_rows())
    store.append_rows(tmp_path, "corruptions", rows)
    old = rows[rows.eval_classes == "base"].drop(columns=["eval_classes"]).assign(run_id="old")
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), tmp_path / "corruptions" / "part-0.parquet")
    table = store.read_table(tmp_path, "corruptions")
    assert len(table) == 9 and set(table[table.run_id == "old"].eval_classes) == {"all"}
    assert set(table[table.run_id == "r1"].eval_classes) == {"base", "new"}
    assert schema.KEYS["corruptions"][-1] == "eval_classes" and "eval_classes" not in schema.CORRUPTION_KEY
    with store.claim(tmp_path, "corruptions", "r1") as claim:
        assert ("rescale", 0, 0, 0.5, 0, 0, "base") in claim.existing_keys()  # (op, prompt_index, position, ...)
        assert claim.append(rows) is None  # every key is there already: nothing is written


def test_default_views_never_pool_base_and_new_rows():
    import pandas as pd

    from nemesis_analysis.report import analysis

    only_subsets = pd.DataFrame(_hand_rows())
    assert analysis.low_norm_frequency(only_subsets).empty  # the default view reads "all" rows only
    assert analysis.summarize_corruptions(only_subsets).empty
    assert analysis.delta_grid(only_subsets, "digits").empty
    mixed = pd.DataFrame(_hand_rows() + _hand_rows("r1", 1, ("all",)))
    frequency = analysis.low_norm_frequency(mixed)
    assert len(frequency) == 1 and frequency.n_reducing.iloc[0] == 1 and frequency.frequency_mean.iloc[0] == 100.0
    by_subset = analysis.low_norm_frequency(mixed, by=(*analysis.GROUP_COLUMNS, "eval_classes"))
    assert by_subset.set_index("eval_classes").frequency_mean.to_dict() == {"all": 100.0, "base": 100.0, "new": 0.0}
    assert analysis.delta_grid(mixed, "digits").loc[0, 0.5] == 5.0  # the "all" rows' delta, not a pooled mean
    assert analysis.delta_grid(mixed, "digits", eval_classes="new").loc[0, 0.5] == -10.0
    assert analysis.low_norm_positions(mixed, "r1", eval_classes="new") == []
    assert analysis.low_norm_positions(mixed, "r1", eval_classes="base") == [0]


def test_summary_tables_say_which_class_subset(tmp_path):
    import pandas as pd

    from nemesis_analysis.report import summaries
    from nemesis_analysis.storage import store

    store.append_rows(tmp_path, "corruptions", pd.DataFrame(_hand_rows() + _hand_rows("r1", 1, ("all",))))
    tables = summaries.summary_tables(tmp_path)
    frequency = tables["frequency"].set_index("eval_classes")
    assert frequency.frequency_mean.to_dict() == {"all": 100.0, "base": 100.0, "new": 0.0}
    accuracy = tables["corruptions"].set_index("eval_classes").acc_original_mean.to_dict()
    assert accuracy == {"all": 40.0, "base": 50.0, "new": 30.0}


def test_base_new_frequency_and_figure():
    import pandas as pd

    from nemesis_analysis.report.figures_protocols import base_new_frequency, base_new_frequency_figure

    rows = pd.DataFrame(_hand_rows("r1", 1) + _hand_rows("r2", 2))
    frequency = base_new_frequency(rows).set_index("eval_classes")
    assert frequency.loc["base", "frequency_mean"] == 100.0  # 1 of 1 norm-reducing corruption helped
    assert frequency.loc["new", "frequency_mean"] == 0.0
    assert frequency.loc["base", "num_seeds"] == 2 and frequency.loc["base", "frequency_std"] == 0.0
    figure = base_new_frequency_figure(frequency.reset_index())
    from matplotlib.container import BarContainer

    bars = [c for c in figure.axes[0].containers if isinstance(c, BarContainer)]
    heights = [[patch.get_height() for patch in container.patches] for container in bars]
    assert heights == [[100.0], [0.0]]


def test_class_subsets_for_a_sweep():
    import torch

    from nemesis_analysis.evaluate import restrict_to_classes

    assert [c.value for c in protocols.sweep_classes("base2new")] == ["base", "new"]
    assert [c.value for c in protocols.sweep_classes("fewshot")] == ["all"]
    assert protocols.subset_classnames(list("abcde"), "base") == ["a", "b", "c"]
    assert protocols.subset_classnames(list("abcde"), "new") == ["d", "e"]
    assert protocols.subset_classnames(list("abcde"), "all") == list("abcde")
    features = torch.arange(10.0)[:, None]
    labels = torch.tensor([4, 0, 3, 1, 2, 4, 0, 3, 1, 2])
    base_features, base_labels = restrict_to_classes(features, labels, [0, 1, 2])
    assert base_features[:, 0].tolist() == [1, 3, 4, 6, 8, 9] and base_labels.tolist() == [0, 1, 2, 0, 1, 2]
    new_features, new_labels = restrict_to_classes(features, labels, [3, 4])
    assert new_features[:, 0].tolist() == [0, 2, 5, 7] and new_labels.tolist() == [1, 0, 1, 0]


def test_plot_base_new_command_writes_the_figure(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from nemesis_analysis.cli import app
    from nemesis_analysis.storage import store

    runner = CliRunner()
    empty = runner.invoke(app, ["plot", "base-new", "--reports", str(tmp_path)])
    assert empty.exit_code == 2 and "base2new" in empty.output
    store.append_rows(tmp_path, "corruptions", pd.DataFrame(_hand_rows()))
    result = runner.invoke(app, ["plot", "base-new", "--reports", str(tmp_path), "--format", "svg"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "figures" / "frequency_base_new.svg"
    assert path.is_file() and path.read_text().lstrip().startswith("<?xml")
