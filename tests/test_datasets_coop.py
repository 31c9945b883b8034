"""CoOp dataset readers, diagnose, custom datasets and load_dataset, on tiny fixture trees in the real layouts.

Parametrized over every registered on-disk dataset, so a new reader is tested as soon as it has a fixture.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from nemesis_analysis.data import coop
from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.data.custom import load_image_folder, load_manifest
from nemesis_analysis.data.diagnose import DatasetReport, diagnose_datasets
from nemesis_analysis.data.fewshot import sample_few_shot
from nemesis_analysis.data.fixtures import class_colour, make_fixture_root
from nemesis_analysis.data.registry import DATASETS, DatasetEntry, dataset_names, load_dataset
from nemesis_analysis.errors import ConfigError, DataError

COOP_DATASETS = [n for n in dataset_names() if DATASETS[n].folder is not None]
TRAINABLE = [n for n in COOP_DATASETS if not DATASETS[n].test_only]

# The first three classes of each fixture, as CoOp names them (renames applied, "_" -> " ").
EXPECTED_CLASSNAMES = {
    "imagenet": ["stingray", "goldfinch", "junco"],
    "caltech101": ["face", "leopard", "motorbike"],
    "oxford_pets": ["abyssinian", "american bulldog", "american pit bull terrier"],
    "stanford_cars": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan"],
    "oxford_flowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
    "food101": ["apple pie", "baby back ribs", "baklava"],
    "fgvc_aircraft": ["707-320", "Cessna 172", "F/A-18"],
    "sun397": ["abbey", "airplane cabin", "indoor apse"],
    "dtd": ["banded", "blotchy", "braided"],
    "eurosat": ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land"],
    "ucf101": ["Apply Eye Makeup", "Apply Lipstick", "Archery"],
    "imagenetv2": ["stingray", "goldfinch", "junco"],
    "imagenet_sketch": ["stingray", "goldfinch", "junco"],
    "imagenet_a": ["stingray", "goldfinch", "junco"],
    "imagenet_r": ["stingray", "goldfinch", "junco"],
}
# (train, val, test) sizes with the default fixture: 3 classes x (2, 1, 2) images.
EXPECTED_SIZES = {"imagenet": (6, 0, 6)}  # CoOp tests on ImageNet's val set; there is no val split
DEFAULT_SIZES = (6, 3, 6)
TEST_ONLY_SIZES = (0, 0, 6)


def expected_sizes(name: str) -> tuple[int, int, int]:
    if name in EXPECTED_SIZES:
        return EXPECTED_SIZES[name]
    return TEST_ONLY_SIZES if DATASETS[name].test_only else DEFAULT_SIZES


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One pristine fixture root with every dataset; tests that damage data build their own."""
    return make_fixture_root(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def loaded(data_root) -> dict[str, DatasetSplits]:
    return {name: load_dataset(name, data_root) for name in COOP_DATASETS}


def single_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_every_coop_dataset_is_registered_with_its_coop_folder():
    assert set(EXPECTED_CLASSNAMES) <= set(COOP_DATASETS)
    folders = {n: DATASETS[n].folder for n in COOP_DATASETS}
    assert folders == {n: coop.LAYOUTS[n].folder for n in COOP_DATASETS}
    assert folders["caltech101"] == "caltech-101"
    assert folders["food101"] == "food-101"
    assert folders["imagenet_a"] == "imagenet-adversarial"
    assert {n for n in COOP_DATASETS if DATASETS[n].test_only} == {
        "imagenetv2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
    }


def test_imagenet_a_and_r_subsets_have_200_wordnet_ids():
    assert len(coop.IMAGENET_A_WNIDS) == 200 and len(coop.IMAGENET_R_WNIDS) == 200
    assert "n01498041" in coop.IMAGENET_A_WNIDS and "n01498041" in coop.IMAGENET_R_WNIDS  # stingray
    assert "n01440764" not in coop.IMAGENET_A_WNIDS and "n01440764" not in coop.IMAGENET_R_WNIDS  # tench
    assert "n01443537" in coop.IMAGENET_R_WNIDS and "n01443537" not in coop.IMAGENET_A_WNIDS  # goldfish
    assert len(coop.IMAGENET_A_WNIDS & coop.IMAGENET_R_WNIDS) == 86


# --------------------------------------------------------------------------------------------------
# Readers, parametrized over every registered on-disk dataset
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COOP_DATASETS)
def test_classnames(name, loaded):
    splits = loaded[name]
    assert splits.name == name
    assert splits.num_classes == 3
    if name in EXPECTED_CLASSNAMES:
        assert splits.classnames == EXPECTED_CLASSNAMES[name]
    assert all("_" not in c for c in splits.classnames)
    assert "{}" in splits.template


@pytest.mark.parametrize("name", COOP_DATASETS)
def test_split_sizes_and_labels(name, loaded, data_root):
    splits = loaded[name]
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sizes == expected_sizes(name)
    per_class = expected_sizes(name)[2] // 3
    assert Counter(s.label for s in splits.test) == {0: per_class, 1: per_class, 2: per_class}
    dataset_dir = data_root / DATASETS[name].folder
    for sample in splits.train + splits.val + splits.test:
        assert os.path.isabs(sample.source)
        assert Path(sample.source).is_file()
        assert Path(sample.source).is_relative_to(dataset_dir)


@pytest.mark.parametrize("name", COOP_DATASETS)
def test_labels_match_the_class_colour_of_the_images(name, loaded):
    """The fixture paints each class its own colour: a reader that mislabels images fails here."""
    splits = loaded[name]
    for sample in splits.test:
        pixel = splits.load_image(sample.source).resize((1, 1)).getpixel((0, 0))
        expected = class_colour(sample.label, splits.num_classes)
        assert max(abs(a - b) for a, b in zip(pixel, expected)) < 25, (sample, pixel, expected)


@pytest.mark.parametrize("name", TRAINABLE)
def test_few_shot_sampling_on_the_train_split(name, loaded):
    train = loaded[name].train
    one_shot = sample_few_shot(train, shots=1, seed=1)
    assert Counter(s.label for s in one_shot) == {0: 1, 1: 1, 2: 1}
    assert set(one_shot) <= set(train)
    assert sample_few_shot(train, shots=1, seed=1) == one_shot
    picks = {tuple(sample_few_shot(train, shots=1, seed=seed)) for seed in range(8)}
    assert len(picks) > 1  # different seeds pick different images
    assert sample_few_shot(train, shots=16, seed=0) == sorted(train, key=lambda s: s.label)


# --------------------------------------------------------------------------------------------------
# Dataset-specific CoOp rules
# --------------------------------------------------------------------------------------------------


def test_caltech101_skips_ignored_folders_and_renames(tmp_path):
    root = make_fixture_root(tmp_path, ["caltech101"], num_classes=5)
    image_dir = root / "caltech-101" / "101_ObjectCategories"
    assert (image_dir / "BACKGROUND_Google").is_dir() and (image_dir / "Faces_easy").is_dir()
    splits = load_dataset("caltech101", root)
    assert splits.classnames == ["face", "leopard", "motorbike", "accordion", "airplane"]
    sources = [s.source for s in splits.train + splits.val + splits.test]
    assert not any("BACKGROUND_Google" in s or "Faces_easy" in s for s in sources)

    # A split file that lists an ignored folder and stores raw names gets the same treatment.
    split_path = root / "caltech-101" / "split_zhou_Caltech101.json"
    split = json.loads(split_path.read_text())
    split["train"] = [[p, lbl, "airplanes" if name == "airplane" else name] for p, lbl, name in split["train"]]
    split["train"].append(["BACKGROUND_Google/image_0001.jpg", 5, "BACKGROUND_Google"])
    split_path.write_text(json.dumps(split))
    again = load_dataset("caltech101", root)
    assert again.classnames == splits.classnames
    assert len(again.train) == len(splits.train) == 10


def test_eurosat_gets_readable_names_from_raw_folder_names(tmp_path):
    root = make_fixture_root(tmp_path, ["eurosat"], num_classes=4)
    split_path = root / "eurosat" / "split_zhou_EuroSAT.json"
    split = json.loads(split_path.read_text())
    for s in ("train", "val", "test"):  # an older split file that stores the folder names
        split[s] = [[p, lbl, p.split("/")[0]] for p, lbl, _ in split[s]]
    split_path.write_text(json.dumps(split))
    assert load_dataset("eurosat", root).classnames == [
        "Annual Crop Land",
        "Forest",
        "Herbaceous Vegetation Land",
        "Highway or Road",
    ]


def test_split_file_with_conflicting_names_is_rejected(tmp_path):
    root = make_fixture_root(tmp_path, ["dtd"])
    split_path = root / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(split_path.read_text())
    split["test"][0][2] = "zigzagged"
    split_path.write_text(json.dumps(split))
    with pytest.raises(DataError) as excinfo:
        load_dataset("dtd", root)
    assert "label 0 two class names ('banded' and 'zigzagged')" in single_line_error(excinfo)


def test_missing_split_file_names_the_file_and_the_fix(tmp_path):
    root = make_fixture_root(tmp_path, ["oxford_pets"])
    (root / "oxford_pets" / "split_zhou_OxfordPets.json").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("oxford_pets", root)
    message = single_line_error(excinfo)
    assert message.startswith(
        f"oxford_pets: split file {root / 'oxford_pets' / 'split_zhou_OxfordPets.json'} not found"
    )
    assert "DATASETS.md" in message and "OxfordPets" in message


def test_missing_dataset_folder_names_the_folder(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("sun397", tmp_path)
    assert single_line_error(excinfo).startswith(f"sun397: folder {tmp_path / 'sun397'} not found")


def test_fgvc_aircraft_reads_the_official_lists_and_the_unmoved_data_folder(tmp_path):
    root = make_fixture_root(tmp_path, ["fgvc_aircraft"])
    base = root / "fgvc_aircraft"
    lines = (base / "images_variant_train.txt").read_text().splitlines()
    assert lines[0] == "1000001 707-320" and lines[2] == "1000003 Cessna 172"
    first = load_dataset("fgvc_aircraft", root)
    # The archive's own layout, fgvc_aircraft/data/..., works too.
    (base / "data").mkdir()
    for item in list(base.iterdir()):
        if item.name != "data":
            shutil.move(str(item), base / "data" / item.name)
    moved = load_dataset("fgvc_aircraft", root)
    assert moved.classnames == first.classnames
    assert [s.label for s in moved.train] == [s.label for s in first.train]
    assert moved.train[0].source == str(base / "data" / "images" / "1000001.jpg")


def test_imagenet_uses_val_folder_as_test_and_classnames_txt(data_root, loaded):
    lines = (data_root / "imagenet" / "classnames.txt").read_text().splitlines()
    assert lines == ["n01498041 stingray", "n01531178 goldfinch", "n01534433 junco"]
    test_sources = [s.source for s in loaded["imagenet"].test]
    assert all(f"{os.sep}images{os.sep}val{os.sep}" in s for s in test_sources)
    assert loaded["imagenet"].val == []


def test_imagenet_flat_val_folder_is_rejected_with_the_fix(tmp_path):
    root = make_fixture_root(tmp_path, ["imagenet"])
    flatten_imagenet_val(root)
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet", root)
    message = single_line_error(excinfo)
    assert f"{root / 'imagenet' / 'images' / 'val'} holds 6 image files directly" in message
    assert "class folders" in message


def test_imagenet_variant_falls_back_to_imagenet_classnames_txt(tmp_path):
    root = make_fixture_root(tmp_path, ["imagenet", "imagenet_sketch"])
    (root / "imagenet-sketch" / "classnames.txt").unlink()
    assert load_dataset("imagenet_sketch", root).classnames == ["stingray", "goldfinch", "junco"]
    (root / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet_sketch", root)
    assert f"{root / 'imagenet-sketch' / 'classnames.txt'} not found" in single_line_error(excinfo)


def test_imagenetv2_labels_come_from_numbered_folders(loaded):
    for sample in loaded["imagenetv2"].test:
        assert Path(sample.source).parent.name == str(sample.label)


def test_imagenet_a_keeps_only_its_200_class_subset(tmp_path):
    root = make_fixture_root(tmp_path, ["imagenet_a"])
    classnames_txt = root / "imagenet-adversarial" / "classnames.txt"
    classnames_txt.write_text("n01440764 tench\n" + classnames_txt.read_text())  # tench is not in ImageNet-A
    splits = load_dataset("imagenet_a", root)
    assert splits.classnames == ["stingray", "goldfinch", "junco"]
    assert (root / "imagenet-adversarial" / "imagenet-a" / "README.txt").is_file()  # shipped file is skipped

    stray = root / "imagenet-adversarial" / "imagenet-a" / "n01440764"
    stray.mkdir()
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet_a", root)
    assert f"folder {stray} is not one of the 3 imagenet_a class folders of classnames.txt" in single_line_error(
        excinfo
    )


# --------------------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------------------


def flatten_imagenet_val(root: Path) -> None:
    """The layout of the official ImageNet val tarball: all images directly in val/."""
    val = root / "imagenet" / "images" / "val"
    for class_dir in [p for p in val.iterdir() if p.is_dir()]:
        for image in class_dir.iterdir():
            image.rename(val / image.name)
        class_dir.rmdir()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_diagnose_reports_every_planted_problem_and_modifies_nothing(tmp_path):
    root = make_fixture_root(tmp_path, [n for n in coop.LAYOUTS if n != "ucf101"])
    (root / "caltech-101" / "split_zhou_Caltech101.json").unlink()
    flatten_imagenet_val(root)
    dtd = load_dataset("dtd", root)
    corrupt = Path(dtd.train[1].source)
    corrupt.write_bytes(b"this is not a JPEG")
    pets = load_dataset("oxford_pets", root)
    deleted = Path(pets.test[0].source)
    deleted.unlink()
    before = snapshot(root)

    reports = {r.name: r for r in diagnose_datasets(root)}

    assert snapshot(root) == before
    assert sorted(reports) == sorted(COOP_DATASETS)
    assert all(isinstance(r, DatasetReport) for r in reports.values())

    caltech = reports["caltech101"]
    assert caltech.found and caltech.root == root / "caltech-101"
    assert len(caltech.problems) == 1
    assert f"split file {root / 'caltech-101' / 'split_zhou_Caltech101.json'} not found" in caltech.problems[0]

    imagenet = reports["imagenet"]
    assert imagenet.found and len(imagenet.problems) == 1
    assert "holds 6 image files directly" in imagenet.problems[0] and "class folders" in imagenet.problems[0]

    dtd_report = reports["dtd"]
    assert dtd_report.counts == {"train": 6, "val": 3, "test": 6} and dtd_report.num_classes == 3
    assert len(dtd_report.problems) == 1
    assert dtd_report.problems[0].startswith(f"dtd: 1 of 6 sampled train images cannot be opened ({corrupt};")

    pets_report = reports["oxford_pets"]
    assert pets_report.counts == {"train": 6, "val": 3, "test": 6}
    assert len(pets_report.problems) == 1
    assert pets_report.problems[0].startswith(f"oxford_pets: 1 of 6 test entries point at missing files ({deleted})")

    ucf = reports["ucf101"]
    assert not ucf.found and ucf.counts == {} and ucf.root == root / "ucf101"
    assert ucf.problems == [
        f"ucf101: not found at {root / 'ucf101'}; download it there (see section 'UCF101' of {coop.DATASETS_MD})"
    ]
    assert ucf.summary() == f"ucf101: not found at {root / 'ucf101'}"

    damaged = {"caltech101", "imagenet", "dtd", "oxford_pets", "ucf101"}
    for name in set(COOP_DATASETS) - damaged:
        assert reports[name].ok, reports[name].problems
        assert reports[name].counts == dict(zip(("train", "val", "test"), expected_sizes(name)))
    assert reports["food101"].summary() == "food101: 3 classes, train=6 val=3 test=6, ok"
    assert all("\n" not in p for r in reports.values() for p in r.problems)


def test_diagnose_sample_size_bounds_the_images_opened(tmp_path):
    root = make_fixture_root(tmp_path, ["dtd"])
    dtd = load_dataset("dtd", root)
    Path(dtd.train[1].source).write_bytes(b"junk")
    Path(dtd.test[0].source).unlink()
    (report,) = diagnose_datasets(root, names=["dtd"], sample_size=0)
    # Existence is always checked in full; decoding is skipped with a zero sample.
    assert len(report.problems) == 1 and "1 of 6 test entries point at missing files" in report.problems[0]
    (report,) = diagnose_datasets(root, names=["dtd"], sample_size=None)
    assert len(report.problems) == 2


def test_diagnose_uses_nemesis_data_and_needs_a_root(tmp_path, monkeypatch):
    root = make_fixture_root(tmp_path, ["eurosat"])
    monkeypatch.setenv("NEMESIS_DATA", str(root))
    reports = {r.name: r for r in diagnose_datasets(None)}
    assert reports["eurosat"].ok and not reports["dtd"].found
    monkeypatch.delenv("NEMESIS_DATA")
    with pytest.raises(DataError) as excinfo:
        diagnose_datasets(None)
    assert "--data-root DIR (or NEMESIS_DATA)" in single_line_error(excinfo)
    with pytest.raises(ConfigError):
        diagnose_datasets(root, names=["digits"])


# --------------------------------------------------------------------------------------------------
# Custom datasets
# --------------------------------------------------------------------------------------------------


def write_png(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), class_colour(label, 2)).save(path)


def make_image_folder(path: Path, with_val: bool) -> Path:
    splits = {"train": 4, "test": 2} | ({"val": 1} if with_val else {})
    for split, count in splits.items():
        for label, cls in enumerate(["black_cat", "dog"]):
            for k in range(count):
                write_png(path / split / cls / f"{k}.png", label)
    (path / "train" / "dog" / "notes.txt").write_text("not an image")
    return path


def test_load_image_folder(tmp_path):
    splits = load_image_folder(make_image_folder(tmp_path / "pets", with_val=True))
    assert splits.name == "pets"
    assert splits.classnames == ["black cat", "dog"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
    assert splits.train[0] == Sample(str(tmp_path / "pets" / "train" / "black_cat" / "0.png"), 0)
    assert Counter(s.label for s in splits.test) == {0: 2, 1: 2}


def test_load_image_folder_carves_val_from_train_by_seed(tmp_path):
    path = make_image_folder(tmp_path / "pets", with_val=False)
    splits = load_image_folder(path, val_fraction=0.25, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 4)
    assert Counter(s.label for s in splits.val) == {0: 1, 1: 1}
    assert set(splits.train).isdisjoint(splits.val)
    assert load_image_folder(path, val_fraction=0.25, seed=3).val == splits.val
    vals = {tuple(load_image_folder(path, val_fraction=0.25, seed=seed).val) for seed in range(6)}
    assert len(vals) > 1
    assert load_image_folder(path).val == []


def test_load_image_folder_errors(tmp_path):
    path = make_image_folder(tmp_path / "pets", with_val=True)
    with pytest.raises(ConfigError):
        load_image_folder(path, val_fraction=0.2)
    shutil.rmtree(path / "test")
    with pytest.raises(DataError) as excinfo:
        load_image_folder(path)
    assert f"image folder {path} has no test/ subfolder" in single_line_error(excinfo)


def make_manifest_images(folder: Path) -> list[dict]:
    rows = []
    for split, count in {"train": 3, "val": 1, "test": 2}.items():
        for label in (0, 1):
            for k in range(count):
                rel = f"img/{split}_{label}_{k}.png"
                write_png(folder / rel, label)
                rows.append({"path": rel, "label": label, "split": split})
    return rows


def test_load_manifest_csv_with_integer_labels_and_classnames_file(tmp_path):
    rows = make_manifest_images(tmp_path)
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "names.txt").write_text("red square\ncyan square\n")
    splits = load_manifest(tmp_path / "manifest.csv", tmp_path / "names.txt")
    assert splits.name == "manifest"
    assert splits.classnames == ["red square", "cyan square"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 4)
    assert splits.train[0] == Sample(str(tmp_path / "img" / "train_0_0.png"), 0)
    assert splits.load_image(splits.test[-1].source).size == (8, 8)


def test_load_manifest_parquet_with_class_names_and_absolute_paths(tmp_path):
    rows = make_manifest_images(tmp_path / "images")
    names = {0: "zebra", 1: "antelope"}
    table = pd.DataFrame(
        [{"path": str(tmp_path / "images" / r["path"]), "label": names[r["label"]], "split": r["split"]} for r in rows]
    )
    (tmp_path / "meta").mkdir()
    table.to_parquet(tmp_path / "meta" / "animals.parquet")
    splits = load_manifest(tmp_path / "meta" / "animals.parquet")
    assert splits.classnames == ["antelope", "zebra"]  # alphabetical without a class-name file
    assert Counter(s.label for s in splits.train) == {1: 3, 0: 3}
    assert splits.train[0] == Sample(str(tmp_path / "images" / "img" / "train_0_0.png"), 1)
    ordered = load_manifest(tmp_path / "meta" / "animals.parquet", _write(tmp_path / "order.txt", "zebra\nantelope\n"))
    assert ordered.classnames == ["zebra", "antelope"] and ordered.train[0].label == 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_manifest_errors(tmp_path):
    rows = make_manifest_images(tmp_path)
    pd.DataFrame(rows).to_csv(tmp_path / "ints.csv", index=False)
    with pytest.raises(DataError) as excinfo:
        load_manifest(tmp_path / "ints.csv")
    assert "integer labels but no class names" in single_line_error(excinfo)
    with pytest.raises(DataError) as excinfo:
        load_manifest(tmp_path / "ints.csv", _write(tmp_path / "one.txt", "only one\n"))
    assert "labels [1] outside 0..0" in single_line_error(excinfo)
    pd.DataFrame(rows).drop(columns="split").to_csv(tmp_path / "nosplit.csv", index=False)
    with pytest.raises(DataError) as excinfo:
        load_manifest(tmp_path / "nosplit.csv")
    assert "lacks column(s) split" in single_line_error(excinfo)
    pd.DataFrame([{"path": "a.png", "label": "x", "split": "holdout"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError) as excinfo:
        load_manifest(tmp_path / "bad.csv")
    assert "split value(s) ['holdout']" in single_line_error(excinfo)
    with pytest.raises(DataError):
        load_manifest(tmp_path / "absent.csv")


# --------------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------------


def test_load_dataset_needs_a_data_root(monkeypatch):
    monkeypatch.delenv("NEMESIS_DATA", raising=False)
    with pytest.raises(DataError) as excinfo:
        load_dataset("caltech101")
    assert single_line_error(excinfo) == (
        "dataset caltech101 needs --data-root DIR (or NEMESIS_DATA) pointing at the folder that contains caltech-101/"
    )


def test_load_dataset_rejects_a_missing_data_root(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("dtd", tmp_path / "nowhere")
    assert single_line_error(excinfo).startswith(f"data root {tmp_path / 'nowhere'} does not exist")


def test_load_dataset_unknown_name():
    with pytest.raises(ConfigError) as excinfo:
        load_dataset("caltech102")
    message = single_line_error(excinfo)
    assert message.startswith("unknown dataset 'caltech102'; choose one of: ")
    assert "caltech101" in message and "folder:PATH" in message


def test_load_dataset_reads_nemesis_data(data_root, monkeypatch):
    monkeypatch.setenv("NEMESIS_DATA", str(data_root))
    assert load_dataset("dtd").classnames == ["banded", "blotchy", "braided"]
    assert load_dataset("dtd", str(data_root)).train == load_dataset("dtd").train


def test_load_dataset_calls_folderless_readers_with_none(monkeypatch):
    calls = []

    def reader(root):
        calls.append(root)
        return DatasetSplits("toy", ["a"], [], [], [Sample("toy:0", 0)])

    monkeypatch.setitem(DATASETS, "toy", DatasetEntry("toy", reader, folder=None))
    monkeypatch.delenv("NEMESIS_DATA", raising=False)
    assert load_dataset("toy").name == "toy"
    assert calls == [None]


def test_load_dataset_custom_specs(tmp_path):
    folder = make_image_folder(tmp_path / "pets", with_val=True)
    assert load_dataset(f"folder:{folder}").classnames == ["black cat", "dog"]
    rows = make_manifest_images(tmp_path / "m")
    pd.DataFrame(rows).to_csv(tmp_path / "m" / "data.csv", index=False)
    (tmp_path / "m" / "classnames.txt").write_text("red\ncyan\n")  # picked up beside the manifest
    assert load_dataset(f"manifest:{tmp_path / 'm' / 'data.csv'}").classnames == ["red", "cyan"]
    with pytest.raises(ConfigError):
        load_dataset("folder:")
