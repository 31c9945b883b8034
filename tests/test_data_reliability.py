"""Custom datasets never give silent wrong results: one class list for all splits, short classes reported
before training, an identity that follows the files, and missing or damaged images named in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from nemesis_analysis.clip.features import feature_cache_key
from nemesis_analysis.data import integrity
from nemesis_analysis.data.custom import load_image_folder, load_manifest
from nemesis_analysis.data.diagnose import diagnose_custom, diagnose_datasets
from nemesis_analysis.data.fewshot import ShortClass, check_shots, sample_train_shots
from nemesis_analysis.data.fixtures import (
    class_colour,
    damage_image,
    make_custom_folder,
    make_custom_manifest,
    make_fixture_root,
)
from nemesis_analysis.data.registry import load_dataset
from nemesis_analysis.errors import DataError

# train: dog's folder is empty, owl has none; test: every class, owl only there; val: only fox.
UNEVEN = {
    "train": {"cat": 3, "dog": 0, "fox": 2},
    "val": {"fox": 1},
    "test": {"cat": 2, "dog": 2, "fox": 2, "owl": 2},
}


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def colour_of(path: str) -> tuple[int, int, int]:
    with Image.open(path) as image:
        pixels = list(image.convert("RGB").getdata())
    return tuple(round(sum(p[c] for p in pixels) / len(pixels)) for c in range(3))


def assert_label_is_colour(path: str, label: int, num_classes: int) -> None:
    expected = class_colour(label, num_classes)
    assert all(abs(a - b) <= 4 for a, b in zip(colour_of(path), expected)), (path, label)


# ------------------------------------------------------------------------------------------ class lists


def test_folder_with_uneven_splits_labels_every_image_by_one_class_list(tmp_path):
    path = make_custom_folder(tmp_path / "ds", UNEVEN)
    data = load_image_folder(path)
    assert data.classnames == ["cat", "dog", "fox", "owl"]
    assert (len(data.train), len(data.val), len(data.test)) == (5, 1, 8)
    for split in ("train", "val", "test"):
        for sample in data.split(split):
            class_folder = Path(sample.source).parent.name
            assert sample.label == data.classnames.index(class_folder), sample
            assert_label_is_colour(sample.source, sample.label, 4)
    assert [s.label for s in data.test] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [s.label for s in data.val] == [2]


def test_manifest_with_uneven_splits_labels_every_image_by_one_class_list(tmp_path):
    rows = [
        ("train", "b", 2),
        ("train", "a", 3),
        ("val", "c", 1),
        ("test", "a", 2),
        ("test", "b", 2),
        ("test", "c", 2),
        ("test", "d", 2),
    ]  # d: test only
    manifest = make_custom_manifest(tmp_path / "m", rows, name="m.parquet")
    data = load_manifest(manifest)
    assert data.classnames == ["a", "b", "c", "d"]
    for split in ("train", "val", "test"):
        for sample in data.split(split):
            name = Path(sample.source).name.split("_")[1]  # img/<split>_<label>_<k>.png
            assert sample.label == "abcd".index(name)
            assert_label_is_colour(sample.source, sample.label, 4)
    # A declared class list (classnames.txt beside the manifest) fixes the order for every split alike.
    (tmp_path / "m" / "classnames.txt").write_text("d\nc\nb\na\n")
    declared = load_dataset(f"manifest:{manifest}")
    assert declared.classnames == ["d", "c", "b", "a"]
    assert [(s.source, 3 - s.label) for s in declared.test] == [(s.source, s.label) for s in data.test]


def test_class_names_that_collide_in_prompts_are_rejected(tmp_path):
    path = make_custom_folder(tmp_path / "ds", {"train": {"black_cat": 1}, "test": {"black cat": 1}})
    with pytest.raises(DataError) as excinfo:
        load_image_folder(path)
    assert "classes 'black cat' and 'black_cat' both read as 'black cat'" in one_line(excinfo)


# ----------------------------------------------------------------------------------- short classes


def test_check_shots_names_short_and_missing_classes_with_counts(tmp_path):
    data = load_image_folder(make_custom_folder(tmp_path / "ds", UNEVEN))
    with pytest.raises(DataError) as excinfo:
        check_shots(data, 3)
    assert one_line(excinfo) == (
        "3 of 4 classes of ds have fewer than 3 training images (images in parentheses): dog (0), fox (2), owl (0); "
        "add images, lower --shots, or pass --allow-missing-classes to train with what exists"
    )
    with pytest.raises(DataError) as excinfo:
        check_shots(data, 1)
    assert "2 of 4 classes of ds have no training images (images in parentheses): dog (0), owl (0)" in (
        one_line(excinfo)
    )
    assert check_shots(data, 3, allow_missing_classes=True) == [
        ShortClass(1, "dog", 0),
        ShortClass(2, "fox", 2),
        ShortClass(3, "owl", 0),
    ]
    train, val = sample_train_shots(data, 2, seed=1, allow_missing_classes=True)
    assert sorted(s.label for s in train) == [0, 0, 2, 2] and [s.label for s in val] == [2]


def test_check_shots_passes_complete_datasets():
    digits = load_dataset("digits")
    assert check_shots(digits, 16) == []
    train, _ = sample_train_shots(digits, 4, seed=1)
    assert len(train) == 40


# ---------------------------------------------------------------------------------------- identity


def fake_model() -> SimpleNamespace:
    return SimpleNamespace(identity="model", preprocess="transform")


def test_same_names_in_different_folders_give_different_identities_and_cache_keys(tmp_path):
    first = load_dataset(f"folder:{make_custom_folder(tmp_path / 'a' / 'ds', UNEVEN, seed=0)}")
    second = load_dataset(f"folder:{make_custom_folder(tmp_path / 'b' / 'ds', UNEVEN, seed=1)}")
    assert first.name == second.name == "ds"
    assert len(first.fingerprint) == 16 and first.identity == f"ds@{first.fingerprint}"
    assert first.identity != second.identity
    assert feature_cache_key(fake_model(), first, first.test) != feature_cache_key(fake_model(), second, second.test)


def test_relative_spec_resolves_to_the_folder_it_names(tmp_path, monkeypatch):
    make_custom_folder(tmp_path / "a" / "ds", UNEVEN, seed=0)
    make_custom_folder(tmp_path / "b" / "ds", UNEVEN, seed=1)
    monkeypatch.chdir(tmp_path / "a")
    in_a = load_dataset("folder:ds")
    monkeypatch.chdir(tmp_path / "b")
    in_b = load_dataset("folder:ds")
    assert in_a.test[0].source == str(tmp_path / "a" / "ds" / "test" / "cat" / "0.png")
    assert in_a.identity != in_b.identity
    assert feature_cache_key(fake_model(), in_a, in_a.test) != feature_cache_key(fake_model(), in_b, in_b.test)


def test_touching_or_replacing_a_file_changes_the_identity(tmp_path):
    path = make_custom_folder(tmp_path / "ds", UNEVEN)
    before = load_image_folder(path)
    assert load_image_folder(path).identity == before.identity  # stable when nothing changes
    target = path / "test" / "owl" / "1.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = load_image_folder(path)
    assert touched.identity != before.identity
    replacement = tmp_path / "other.png"
    shutil.copy2(path / "test" / "cat" / "0.png", replacement)
    os.replace(replacement, target)
    assert load_image_folder(path).identity not in (before.identity, touched.identity)


def test_manifest_identity_follows_its_rows_and_files(tmp_path):
    manifest = make_custom_manifest(
        tmp_path / "m", [("train", "a", 2), ("train", "b", 2), ("test", "a", 1), ("test", "b", 1)]
    )
    before = load_manifest(manifest)
    table = pd.read_csv(manifest)
    table.loc[table.split == "test", "label"] = ["b", "a"]  # same files, swapped test labels
    table.to_csv(manifest, index=False)
    assert load_manifest(manifest).identity != before.identity


def test_built_in_datasets_keep_their_name_as_identity(tmp_path):
    assert load_dataset("digits").identity == "digits" and load_dataset("digits").fingerprint == ""
    root = make_fixture_root(tmp_path, ["dtd"])
    dtd = load_dataset("dtd", root)
    assert dtd.identity == "dtd"
    # The feature-cache key of a built-in dataset is what it was before identities existed.
    import hashlib

    from nemesis_analysis.data.base import fingerprint_samples

    old = "|".join(["model", "dtd", fingerprint_samples(dtd.test), repr("transform")])
    assert feature_cache_key(fake_model(), dtd, dtd.test) == hashlib.sha256(old.encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- missing and damaged files


def test_manifest_naming_missing_files_is_one_line_with_count_and_examples(tmp_path):
    manifest = make_custom_manifest(tmp_path / "m", [("train", "a", 2), ("test", "a", 5)])
    for k in range(4):
        (tmp_path / "m" / "img" / f"test_a_{k}.png").unlink()
    with pytest.raises(DataError) as excinfo:
        load_manifest(manifest)
    base = tmp_path / "m" / "img"
    assert one_line(excinfo) == (
        f"manifest {manifest} names 4 test file(s) that do not exist ({base / 'test_a_0.png'}, "
        f"{base / 'test_a_1.png'}, {base / 'test_a_2.png'} and 1 more); fix the paths in the manifest "
        f"(relative ones are relative to {tmp_path / 'm'}) or drop those rows"
    )


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_header_check_finds_damaged_images(tmp_path, suffix, how):
    path = make_custom_folder(tmp_path / "ds", {"train": {"a": 1}, "test": {"a": 1}}, image_size=32, suffix=suffix)
    good = path / "train" / "a" / f"0{suffix}"
    bad = damage_image(path / "test" / "a" / f"0{suffix}", how)
    assert integrity.image_problem(str(good)) is None
    assert integrity.image_problem(str(bad)) is not None
    assert integrity.image_problem(str(bad), decode=True) is not None
    data = load_image_folder(path)
    data.check_images("train")
    with pytest.raises(DataError) as excinfo:
        data.check_images("test")
    message = one_line(excinfo)
    assert message.startswith(f"ds: 1 of 1 test images are damaged ({bad}; {bad}: ")
    assert message.endswith("replace them with intact copies or remove them from the dataset")


def test_jpeg_with_data_after_its_end_marker_is_not_damaged(tmp_path):
    path = tmp_path / "x.jpg"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(path)
    path.write_bytes(path.read_bytes() + b"trailer written by some camera")
    assert integrity.image_problem(str(path)) is None


def test_loader_names_file_and_split_of_an_unreadable_image(tmp_path):
    path = make_custom_folder(tmp_path / "ds", {"train": {"a": 2}, "test": {"a": 1}}, image_size=32)
    bad = damage_image(path / "train" / "a" / "1.png", "garbage")
    data = load_image_folder(path)
    with pytest.raises(DataError) as excinfo:
        data.load_image(str(bad))
    assert one_line(excinfo).startswith(f"ds: train image {bad} cannot be read (UnidentifiedImageError")
    with pytest.raises(DataError) as excinfo:
        data.check_samples(data.train)
    assert one_line(excinfo).startswith(f"ds: 1 of 2 train images are damaged ({bad};")
    with pytest.raises(DataError):
        sample_train_shots(data, 2, seed=1)


def test_diagnose_reports_custom_dataset_problems(tmp_path):
    path = make_custom_folder(tmp_path / "ds", UNEVEN, image_size=32)
    bad = damage_image(path / "test" / "fox" / "1.png", "truncate")
    spec = f"folder:{path}"
    report = diagnose_custom(spec, shots=3, sample_size=0)
    assert report.found and report.num_classes == 4 and report.counts == {"train": 5, "val": 1, "test": 8}
    assert report.problems == [
        f"{spec}: 3 of 4 classes of ds have fewer than 3 training images (images in parentheses): dog (0), fox (2), "
        f"owl (0); add images, lower --shots, or train with --allow-missing-classes",
        f"{spec}: 1 of 8 test images are damaged ({bad}; first error "
        f"{integrity.image_problem(str(bad))}); replace them with intact copies or remove them from the dataset",
    ]
    (only,) = diagnose_datasets(None, names=[spec], sample_size=0)  # no data root needed for a custom spec
    assert only.problems[0].startswith(f"{spec}: 2 of 4 classes of ds have no training images")
    manifest = make_custom_manifest(tmp_path / "m", [("train", "a", 1), ("test", "a", 2)])
    (tmp_path / "m" / "img" / "test_a_1.png").unlink()
    (missing,) = diagnose_datasets(None, names=[f"manifest:{manifest}"])
    assert (
        missing.found
        and len(missing.problems) == 1
        and "names 1 test file(s) that do not exist" in (missing.problems[0])
    )
    assert not diagnose_custom(f"folder:{tmp_path / 'nowhere'}").found


# --------------------------------------------------------------------------------------------- CLI


runner = CliRunner()


def train_args(spec: str, checkpoints: Path, reports: Path, shots: int = 1) -> list[str]:
    return [
        "train",
        "--quiet",
        "--dataset",
        spec,
        "--backbone",
        "nemesis-tiny",
        "--shots",
        str(shots),
        "--epochs",
        "1",
        "--checkpoints",
        str(checkpoints),
        "--reports",
        str(reports),
    ]


def assert_one_line_exit_2(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert "Traceback" not in result.output


def test_cli_train_refuses_a_class_without_training_images(checkpoints_dir, tmp_path):
    from nemesis_analysis.cli import app

    path = make_custom_folder(tmp_path / "ds", UNEVEN)
    result = runner.invoke(app, train_args(f"folder:{path}", checkpoints_dir, tmp_path / "reports"))
    assert_one_line_exit_2(result, "2 of 4 classes of ds have no training images")
    assert not (tmp_path / "reports").exists()


def test_cli_train_names_a_damaged_test_image_before_encoding(checkpoints_dir, tmp_path):
    from nemesis_analysis.cli import app

    path = make_custom_folder(tmp_path / "ds", {"train": {"a": 1, "b": 1}, "test": {"a": 2, "b": 2}}, image_size=32)
    bad = damage_image(path / "test" / "b" / "0.png", "truncate")
    result = runner.invoke(app, train_args(f"folder:{path}", checkpoints_dir, tmp_path / "reports"))
    assert_one_line_exit_2(result, f"ds: 1 of 4 test images are damaged ({bad};")


def test_cli_train_reports_missing_manifest_files(checkpoints_dir, tmp_path):
    from nemesis_analysis.cli import app

    manifest = make_custom_manifest(tmp_path / "m", [("train", "a", 1), ("train", "b", 1), ("test", "a", 1)])
    (tmp_path / "m" / "img" / "train_b_0.png").unlink()
    result = runner.invoke(app, train_args(f"manifest:{manifest}", checkpoints_dir, tmp_path / "reports"))
    assert_one_line_exit_2(result, "names 1 train file(s) that do not exist")


def test_coop_readers_get_the_same_checks_before_encoding(tmp_path):
    from nemesis_analysis.clip.features import encode_samples

    root = make_fixture_root(tmp_path, ["dtd"], image_size=32)
    dtd = load_dataset("dtd", root)
    bad = damage_image(Path(dtd.test[3].source), "truncate")
    dtd.check_images("train")
    with pytest.raises(DataError) as excinfo:
        dtd.check_images("test")
    assert one_line(excinfo).startswith(f"dtd: 1 of 6 test images are damaged ({bad};")
    # Encoding checks its samples first: the model is never called (a stub without encode_images suffices).
    with pytest.raises(DataError) as excinfo:
        encode_samples(fake_model(), dtd, dtd.test, progress=False)
    assert one_line(excinfo).startswith(f"dtd: 1 of 6 test images are damaged ({bad};")
    Path(dtd.train[0].source).unlink()
    with pytest.raises(DataError) as excinfo:
        sample_train_shots(dtd, 2, seed=1)
    assert one_line(excinfo).startswith(f"dtd: 1 of 6 train images do not exist ({dtd.train[0].source})")


def test_replaced_dataset_names_its_own_splits(tmp_path):
    import dataclasses

    path = make_custom_folder(tmp_path / "ds", {"train": {"a": 2}, "test": {"a": 1}}, image_size=32)
    bad = damage_image(path / "train" / "a" / "1.png", "garbage")
    data = load_image_folder(path)
    moved = dataclasses.replace(data, name="renamed", train=[], test=data.train)
    assert moved.load_image == data.load_image  # same loader, compared by the function it wraps
    with pytest.raises(DataError) as excinfo:
        moved.load_image(str(bad))
    assert one_line(excinfo).startswith(f"renamed: test image {bad} cannot be read")


# --------------------------------------------------------------------------------------------- bad manifests


def _edited_manifest(tmp_path, edit) -> Path:
    manifest = make_custom_manifest(
        tmp_path / "m", [("train", "a", 3), ("train", "b", 3), ("test", "a", 2), ("test", "b", 2)]
    )
    table = pd.read_csv(manifest)
    edit(table).to_csv(manifest, index=False)
    return manifest


def test_a_manifests_exact_duplicates_are_dropped_with_a_warning_and_reported(tmp_path, caplog):
    manifest = _edited_manifest(tmp_path, lambda t: pd.concat([t, t.iloc[[0, 0, 1]]]))
    with caplog.at_level("WARNING"):
        data = load_manifest(manifest)
    assert len(data.train) == 6 and len({s.source for s in data.train}) == 6  # no image twice in a few-shot sample
    first = str(tmp_path / "m" / "img" / "train_a_0.png")
    assert f"3 exact duplicate row(s), e.g. {first}; dropped them" in caplog.text
    (report,) = diagnose_datasets(None, names=[f"manifest:{manifest}"], sample_size=0)
    assert not report.ok and any("3 exact duplicate row(s)" in p for p in report.problems)


@pytest.mark.parametrize("case", ["two labels", "train and test"])
def test_a_manifest_with_conflicting_labels_or_split_overlap_is_refused_in_one_line(tmp_path, case):
    def edit(table):
        row = table.iloc[[0]].copy()  # train_a_0.png again, under label b or in the test split
        row[["label"] if case == "two labels" else ["split"]] = "b" if case == "two labels" else "test"
        return pd.concat([table, row])

    manifest = _edited_manifest(tmp_path, edit)
    first = tmp_path / "m" / "img" / "train_a_0.png"
    expected = (f"1 image(s) have two or more labels, e.g. {first} (labels [0, 1])" if case == "two labels"
                else f"1 image(s) are in test and in train or val, e.g. {first}; keep each image in one split")  # fmt: skip
    with pytest.raises(DataError) as error:
        load_manifest(manifest)
    assert str(error.value).startswith(f"manifest {manifest}: ") and expected in str(error.value)
    assert "\n" not in str(error.value)
    (report,) = diagnose_datasets(None, names=[f"manifest:{manifest}"], sample_size=0)
    assert not report.ok and expected in report.problems[0]
    from nemesis_analysis.cli import app

    result = CliRunner().invoke(app, ["datasets", "--dataset", f"manifest:{manifest}", "--sample", "0"])
    assert result.exit_code == 0 and "1 problem(s)" in result.output and "0 without problems" in result.output
