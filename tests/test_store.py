"""The Parquet store: permissions, old-schema parts, claims against concurrent writers, superseding runs."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time

import pandas as pd
import pyarrow as pa
import pytest

from nemesis_analysis.storage import schema, store

IDENTITY = {
    "dataset": "digits",
    "backbone": "tiny",
    "pretrained": "tiny",
    "shots": 4,
    "seed": 1,
    "regularizer": "coop",
    "n_ctx": 4,
    "csc": False,
    "class_token_position": "end",
    "precision": "fp32",
}


def corruption_rows(run_id: str, positions, factors=(0.5,), acc=50.0) -> list[dict]:
    return [
        {"run_id": run_id, **IDENTITY, "op": "rescale", "position": p, "factor": f, "rep": 0, "acc": acc,
         "acc_original": 50.0, "delta": acc - 50.0, "norm_before": 1.0, "norm_after": f, "low_norm_effect": False, "n_test": 10}
        for p in positions
        for f in factors
    ]  # fmt: skip


def run_row(run_id: str, acc: float) -> dict:
    row = {name: None for name in schema.columns("runs")}
    row.update(run_id=run_id, **IDENTITY, epochs=1, beta=1.0, norm_weight=1.0, final_test_acc=acc, seconds=1.0)
    return row


def test_parts_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        part = store.append_rows(tmp_path, "corruptions", corruption_rows("r1", [0]))
        assert stat.S_IMODE(part.stat().st_mode) == 0o644
        os.umask(0o002)
        part = store.append_rows(tmp_path, "corruptions", corruption_rows("r1", [1]))
        assert stat.S_IMODE(part.stat().st_mode) == 0o664
    finally:
        os.umask(old)
    assert not [p for p in (tmp_path / "corruptions").iterdir() if p.name.endswith(".tmp")]


def test_old_parts_read_with_a_new_column_default(tmp_path, monkeypatch):
    current = schema.SCHEMAS["corruptions"]  # prompt_method is an identity column now: write r1 without it
    monkeypatch.setitem(schema.SCHEMAS, "corruptions", pa.schema([f for f in current if f.name != "prompt_method"]))
    store.append_rows(tmp_path, "corruptions", corruption_rows("r1", [0, 1]))
    assert "prompt_method" not in pd.read_parquet(tmp_path / "corruptions").columns
    extended = current.append(pa.field("n_extra", pa.int64()))
    monkeypatch.setitem(schema.SCHEMAS, "corruptions", extended)
    new_rows = [dict(r, prompt_method="kgcoop", n_extra=7) for r in corruption_rows("r2", [0])]
    store.append_rows(tmp_path, "corruptions", new_rows)
    table = store.read_table(tmp_path, "corruptions")
    assert list(table.columns) == extended.names
    old = table[table["run_id"] == "r1"]
    assert list(old["prompt_method"]) == ["coop", "coop"]  # the declared default
    assert old["n_extra"].isna().all()  # no declared default: null
    new = table[table["run_id"] == "r2"]
    assert list(new["prompt_method"]) == ["kgcoop"] and list(new["n_extra"]) == [7]
    assert schema.column_default("evaluations", "protocol") == "fewshot"


def test_claim_appends_only_missing_keys(tmp_path):
    with store.claim(tmp_path, "corruptions", "r1") as claim:
        assert claim.existing_keys() == set()
        claim.append(corruption_rows("r1", [0, 1]))
    with store.claim(tmp_path, "corruptions", "r1") as claim:
        # (op, prompt_index, position, factor, rep, layer, eval_classes)
        assert claim.existing_keys() == {("rescale", 0, 0, 0.5, 0, 0, "all"), ("rescale", 0, 1, 0.5, 0, 0, "all")}
        claim.append(corruption_rows("r1", [1, 2, 2]))
        with pytest.raises(ValueError):
            claim.append(corruption_rows("r9", [0]))
    raw = pd.read_parquet(tmp_path / "corruptions")
    assert sorted(raw["position"]) == [0, 1, 2]


def _sweep(reports: str, positions: list[int], chunk: int) -> None:
    """What a corruption sweep does per run: claim, skip what exists, append chunk by chunk."""
    with store.claim(reports, "corruptions", "r1") as claim:
        done = {key[2] for key in claim.existing_keys()}  # the position
        todo = [p for p in positions if p not in done]
        for start in range(0, len(todo), chunk):
            time.sleep(0.01)
            claim.append(corruption_rows("r1", todo[start : start + chunk]))


def test_two_processes_never_duplicate_keys(tmp_path):
    context = multiprocessing.get_context("spawn")
    jobs = [
        context.Process(target=_sweep, args=(str(tmp_path), list(range(0, 30)), 4)),
        context.Process(target=_sweep, args=(str(tmp_path), list(range(10, 40)), 3)),
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
        assert job.exitcode == 0
    raw = pd.read_parquet(tmp_path / "corruptions")  # plain pandas, no dedupe
    key = list(schema.KEYS["corruptions"])
    assert not raw.duplicated(subset=key).any()
    assert sorted(raw["position"]) == list(range(40))


def test_supersede_run_removes_old_rows_everywhere(tmp_path):
    store.append_rows(tmp_path, "runs", [run_row("r1", 40.0), run_row("r2", 41.0)])
    store.append_rows(tmp_path, "corruptions", corruption_rows("r1", [0, 1]) + corruption_rows("r2", [0]))
    store.append_rows(tmp_path, "corruptions", corruption_rows("r1", [2]))
    removed = store.supersede_run(tmp_path, "r1", ("runs", "corruptions"))
    assert removed == 1 + 3
    store.append_rows(tmp_path, "runs", [run_row("r1", 55.0)])
    runs = pd.read_parquet(tmp_path / "runs")
    assert sorted(zip(runs["run_id"], runs["final_test_acc"])) == [("r1", 55.0), ("r2", 41.0)]
    corruptions = pd.read_parquet(tmp_path / "corruptions")
    assert list(corruptions["run_id"]) == ["r2"]
    assert len(list((tmp_path / "corruptions").glob("part-*.parquet"))) == 1  # the emptied part is gone
    assert store.supersede_run(tmp_path, "r1", ("corruptions",)) == 0


def test_compact_keeps_the_newest_row_per_key(tmp_path):
    store.append_rows(tmp_path, "corruptions", corruption_rows("r1", [0, 1], acc=40.0))
    store.append_rows(tmp_path, "corruptions", corruption_rows("r1", [1, 2], acc=60.0))
    store.append_rows(tmp_path, "corruptions", corruption_rows("r1", [2], acc=70.0))
    before = store.read_table(tmp_path, "corruptions")
    assert store.compact(tmp_path, "corruptions") == 2
    raw = pd.read_parquet(tmp_path / "corruptions").sort_values("position")
    assert list(zip(raw["position"], raw["acc"])) == [(0, 40.0), (1, 60.0), (2, 70.0)]
    after = store.read_table(tmp_path, "corruptions")
    pd.testing.assert_frame_equal(
        before.sort_values("position").reset_index(drop=True), after.sort_values("position").reset_index(drop=True)
    )
    assert store.compact(tmp_path, "corruptions") == 0


def test_a_run_folder_saved_before_the_regularizer_rename_reports_into_a_new_folder(tmp_path):
    """A finished run's own copy of its rows, written with the old ``method`` column, is re-reported into an
    empty reports folder under the current schema (the regularizer column filled from ``method``)."""
    import pyarrow.parquet as pq

    from nemesis_analysis.storage.rundir import RunDir

    run = RunDir(tmp_path / "checkpoints" / "r-old")
    run.path.mkdir(parents=True)
    old = {**{k: v for k, v in IDENTITY.items() if k != "regularizer"}, "method": "nemesis-pun", "run_id": "r-old",
           "epochs": 5, "final_test_acc": 61.5}  # fmt: skip
    pq.write_table(pa.Table.from_pylist([old]), run.file("runs.parquet"))
    run.ensure_reported(tmp_path / "reports")
    runs = store.read_table(tmp_path / "reports", "runs")
    assert runs[["run_id", "regularizer", "final_test_acc"]].values.tolist() == [["r-old", "nemesis-pun", 61.5]]
    assert "method" not in runs.columns
