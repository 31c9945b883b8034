"""Tiny stand-ins for the CoOp datasets, written in their *real* on-disk layout.

Tests (and anyone without the real data) get a data root that the real readers, ``load_dataset`` and
``diagnose_datasets`` accept unchanged: split_zhou JSON files in CoOp's format, FGVC's text lists,
ImageNet's ``classnames.txt`` and class-folder val set, Caltech's ignored folders present on disk.
Each image is a flat class colour plus seeded noise, so a tiny model can learn the classes.
"""

from __future__ import annotations

import colorsys
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nemesis_analysis.data.coop import (
    CALTECH_NEW_CNAMES,
    EUROSAT_NEW_CNAMES,
    IMAGENET_A_WNIDS,
    IMAGENET_R_WNIDS,
    LAYOUTS,
    CoopLayout,
)
from nemesis_analysis.errors import ConfigError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NOISE = 12  # +- per channel: images of a class differ, yet the class colour dominates


@dataclass(frozen=True)
class FixtureClass:
    raw: str  # the class's folder (or file prefix) in the real dataset
    name: str  # the class name the real split file stores


# First classes of each dataset, as the real folders and split files name them.
REAL_CLASSES: dict[str, list[FixtureClass]] = {
    "caltech101": [
        FixtureClass(raw, CALTECH_NEW_CNAMES.get(raw, raw))
        for raw in ["Faces", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant", "barrel"]
    ],
    "oxford_pets": [
        FixtureClass(raw, raw.lower())
        for raw in ["Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle"]
    ],
    "stanford_cars": [
        FixtureClass(name, name)
        for name in [
            "2000 AM General Hummer SUV",
            "2012 Acura RL Sedan",
            "2012 Acura TL Sedan",
            "2008 Acura TL Type-S",
            "2012 Acura TSX Sedan",
        ]
    ],
    "oxford_flowers": [
        FixtureClass(name, name)
        for name in ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold"]
    ],
    "food101": [FixtureClass(raw, raw) for raw in ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio"]],
    "sun397": [
        FixtureClass("a/abbey", "abbey"),
        FixtureClass("a/airplane_cabin", "airplane_cabin"),
        FixtureClass("a/apse/indoor", "indoor apse"),
        FixtureClass("b/bakery/shop", "shop bakery"),
    ],
    "dtd": [FixtureClass(raw, raw) for raw in ["banded", "blotchy", "braided", "bubbly", "bumpy"]],
    "eurosat": [FixtureClass(raw, EUROSAT_NEW_CNAMES[raw]) for raw in EUROSAT_NEW_CNAMES],
    "ucf101": [FixtureClass(raw, raw) for raw in ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling"]],
    # Variant names may hold spaces and slashes; the list files separate them from the id by one space.
    "fgvc_aircraft": [FixtureClass(v, v) for v in ["707-320", "Cessna 172", "F/A-18", "A300B4", "DC-3"]],
    # WordNet ids in both ImageNet-A and ImageNet-R, so the variants share the fixture's classes.
    "imagenet": [
        FixtureClass(wnid, name)
        for wnid, name in [
            ("n01498041", "stingray"),
            ("n01531178", "goldfinch"),
            ("n01534433", "junco"),
            ("n01614925", "bald eagle"),
            ("n01616318", "vulture"),
        ]
    ],
}


def fixture_classes(name: str, num_classes: int) -> list[FixtureClass]:
    """The first ``num_classes`` real classes of a dataset, padded with made-up ones when it runs out."""
    real = REAL_CLASSES.get(_family(name), [])  # a dataset added later gets made-up classes
    if _family(name) == "imagenet":
        spare = sorted((IMAGENET_A_WNIDS & IMAGENET_R_WNIDS) - {c.raw for c in real})
        extra = [FixtureClass(w, f"object {w}") for w in spare]
    else:
        extra = [FixtureClass(f"class_{i:03d}", f"class_{i:03d}") for i in range(len(real), num_classes)]
    classes = (real + extra)[:num_classes]
    if len(classes) < num_classes:
        raise ConfigError(f"fixtures support at most {len(classes)} classes for {name}, got num_classes={num_classes}")
    return classes


def _family(name: str) -> str:
    return "imagenet" if name.startswith("imagenet") else name


def class_colour(label: int, num_classes: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour per label (hues evenly spaced), the signal a tiny model can learn."""
    r, g, b = colorsys.hsv_to_rgb(label / max(num_classes, 1), 0.85, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


class _ImageWriter:
    """Writes the class-coloured images of one dataset; noise is seeded per file, so output is reproducible."""

    def __init__(self, dataset: str, num_classes: int, image_size: int, seed: int):
        self.dataset, self.num_classes, self.size, self.seed = dataset, num_classes, image_size, seed

    def write(self, path: Path, label: int) -> None:
        rng = random.Random(f"{self.seed}-{self.dataset}-{path.name}-{label}")
        base = class_colour(label, self.num_classes)
        pixels = bytes(
            min(255, max(0, channel + rng.randint(-NOISE, NOISE)))
            for _ in range(self.size * self.size)
            for channel in base
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.frombytes("RGB", (self.size, self.size), pixels)
        image.save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG", quality=95)


def _write_classnames_txt(path: Path, classes: list[FixtureClass]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{c.raw} {c.name}\n" for c in classes))


# --------------------------------------------------------------------------------------------------
# split_zhou datasets: where each image of (class, split, running number) lives, relative to the image dir
# --------------------------------------------------------------------------------------------------

ZhouPath = Callable[[FixtureClass, str, int], str]


def _class_folder_path(c: FixtureClass, split: str, n: int) -> str:
    """The common layout (``<class>/<n>.jpg``), for split_zhou datasets without a real pattern below."""
    return f"{c.raw}/{n:05d}.jpg"


ZHOU_PATHS: dict[str, ZhouPath] = {
    "caltech101": lambda c, split, n: f"{c.raw}/image_{n:04d}.jpg",
    "oxford_pets": lambda c, split, n: f"{c.raw}_{n}.jpg",
    "stanford_cars": lambda c, split, n: f"{'cars_test' if split == 'test' else 'cars_train'}/{n:05d}.jpg",
    "oxford_flowers": lambda c, split, n: f"image_{n:05d}.jpg",
    "food101": lambda c, split, n: f"{c.raw}/{1000000 + n}.jpg",
    "sun397": lambda c, split, n: f"{c.raw}/sun_{n:06d}.jpg",
    "dtd": lambda c, split, n: f"{c.raw}/{c.raw}_{n:04d}.jpg",
    "eurosat": lambda c, split, n: f"{c.raw}/{c.raw}_{n}.jpg",
    "ucf101": lambda c, split, n: f"{c.raw}/v_{c.raw.replace('_', '')}_g{n:02d}_c01.jpg",
}


def _make_zhou(
    layout: CoopLayout, root: Path, classes: list[FixtureClass], counts: dict[str, int], writer: _ImageWriter
) -> None:
    image_dir = layout.image_path(root)
    relpath = ZHOU_PATHS.get(layout.name, _class_folder_path)
    split: dict[str, list] = {s: [] for s in SPLITS}
    number = 1
    for s in SPLITS:
        for label, c in enumerate(classes):
            for _ in range(counts[s]):
                rel = relpath(c, s, number)
                writer.write(image_dir / rel, label)
                split[s].append([rel, label, c.name])
                number += 1
    for ignored in layout.ignored:  # on disk, never in the split file: proves the reader skips them
        for k in range(2):
            writer.write(image_dir / ignored / f"image_{k + 1:04d}.jpg", 0)
    (layout.dataset_dir(root) / layout.split_file).write_text(json.dumps(split, indent=4))


def _make_fgvc(
    layout: CoopLayout, root: Path, classes: list[FixtureClass], counts: dict[str, int], writer: _ImageWriter
) -> None:
    base = layout.dataset_dir(root)
    (base / layout.image_dir).mkdir(parents=True, exist_ok=True)
    (base / "variants.txt").write_text("".join(f"{c.name}\n" for c in classes))
    image_id = 1000000
    for s in SPLITS:
        lines = []
        for label, c in enumerate(classes):
            for _ in range(counts[s]):
                image_id += 1
                writer.write(base / layout.image_dir / f"{image_id:07d}.jpg", label)
                lines.append(f"{image_id:07d} {c.name}\n")
        (base / f"images_variant_{s}.txt").write_text("".join(lines))


def _make_imagenet(
    layout: CoopLayout, root: Path, classes: list[FixtureClass], counts: dict[str, int], writer: _ImageWriter
) -> None:
    images = layout.dataset_dir(root) / layout.image_dir
    _write_classnames_txt(layout.dataset_dir(root) / "classnames.txt", classes)
    number = 0
    for label, c in enumerate(classes):
        for k in range(counts["train"]):
            writer.write(images / "train" / c.raw / f"{c.raw}_{k + 1}.JPEG", label)
        for _ in range(counts["test"]):  # CoOp tests on the official val set, kept in class folders
            number += 1
            writer.write(images / "val" / c.raw / f"ILSVRC2012_val_{number:08d}.JPEG", label)


def _make_imagenet_variant(
    layout: CoopLayout, root: Path, classes: list[FixtureClass], counts: dict[str, int], writer: _ImageWriter
) -> None:
    dataset_dir = layout.dataset_dir(root)
    image_dir = layout.image_path(root)
    _write_classnames_txt(dataset_dir / "classnames.txt", classes)  # DATASETS.md: copy of imagenet's
    subset = {"imagenet_a": IMAGENET_A_WNIDS, "imagenet_r": IMAGENET_R_WNIDS}.get(layout.name)
    kept = [c for c in classes if subset is None or c.raw in subset]
    for c in kept:
        label = classes.index(c)  # ImageNet's label: picks the colour, and names ImageNetV2's folders
        folder = str(label) if layout.name == "imagenetv2" else c.raw
        for k in range(counts["test"]):
            writer.write(image_dir / folder / f"{layout.name}_{k + 1}.jpg", label)
    if subset is not None:  # the official archives ship a README beside the class folders
        (image_dir / "README.txt").write_text("fixture copy of the archive's README\n")


def _builder(layout: CoopLayout):
    if layout.split_file is not None:
        return _make_zhou
    elif layout.name == "fgvc_aircraft":
        return _make_fgvc
    elif layout.name == "imagenet":
        return _make_imagenet
    elif layout.name.startswith("imagenet"):
        return _make_imagenet_variant
    else:
        raise ConfigError(
            f"no fixture builder for dataset {layout.name!r}; add one to nemesis_analysis/data/fixtures.py"
        )


def make_fixture_root(
    root: Path,
    datasets: list[str] | None = None,
    num_classes: int = 3,
    images_per_split: tuple[int, int, int] = (2, 1, 2),
    image_size: int = 16,
    seed: int = 0,
) -> Path:
    """Write tiny versions of ``datasets`` (default: every CoOp dataset) under ``root`` and return ``root``.

    ``images_per_split`` is (train, val, test) images per class. ImageNet has no val split (its val
    folder is CoOp's test set, sized by the test count) and the test-only variants get the test count.
    """
    root = Path(root)
    names = list(LAYOUTS) if datasets is None else list(datasets)
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        raise ConfigError(f"no fixture for dataset(s) {unknown}; choose from: {', '.join(LAYOUTS)}")
    if num_classes < 1 or any(n < 0 for n in images_per_split):
        raise ConfigError(
            f"need num_classes >= 1 and non-negative images_per_split, got {num_classes}, {images_per_split}"
        )
    counts = dict(zip(SPLITS, images_per_split))
    for name in names:
        layout = LAYOUTS[name]
        layout.dataset_dir(root).mkdir(parents=True, exist_ok=True)
        classes = fixture_classes(name, num_classes)
        # Colours are per class index of the *parent* class list, so a class looks alike across variants.
        writer = _ImageWriter(_family(name), num_classes, image_size, seed)
        _builder(layout)(layout, root, classes, counts, writer)
        logger.debug("fixture %s written under %s", name, layout.dataset_dir(root))
    return root


# --------------------------------------------------------------------------------------------------
# Custom datasets (folder:PATH, manifest:PATH) with uneven splits, and damaged files
# --------------------------------------------------------------------------------------------------


def make_custom_folder(
    path: Path, counts: dict[str, dict[str, int]], image_size: int = 8, seed: int = 0, suffix: str = ".png"
) -> Path:
    """Write ``path/<split>/<class>/<k><suffix>`` with ``counts[split][class]`` images (0: an empty class folder).

    An image's colour is that of its class's index in the sorted union of all class names, so a test
    can tell from the pixels which label an image must get.
    """
    path = Path(path)
    classes = sorted({c for per_class in counts.values() for c in per_class})
    writer = _ImageWriter(path.name, len(classes), image_size, seed)
    for split, per_class in counts.items():
        for name, n in per_class.items():
            (path / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                writer.write(path / split / name / f"{k}{suffix}", classes.index(name))
    return path


def make_custom_manifest(
    folder: Path, rows: list[tuple[str, str, int]], name: str = "manifest.csv", image_size: int = 8, seed: int = 0
) -> Path:
    """Write images ``folder/img/<split>_<label>_<k>.png`` and a manifest (csv or parquet by ``name``) of them.

    ``rows`` are ``(split, label name, count)``; colours follow the sorted union of label names.
    """
    import pandas as pd

    folder = Path(folder)
    labels = sorted({label for _, label, _ in rows})
    writer = _ImageWriter(folder.name, len(labels), image_size, seed)
    table = []
    for split, label, count in rows:
        for k in range(count):
            relative = f"img/{split}_{label}_{k}.png"
            writer.write(folder / relative, labels.index(label))
            table.append({"path": relative, "label": label, "split": split})
    frame = pd.DataFrame(table, columns=["path", "label", "split"])
    target = folder / name
    frame.to_parquet(target) if target.suffix == ".parquet" else frame.to_csv(target, index=False)
    return target


def damage_image(path: Path, how: str = "truncate") -> Path:
    """Damage an image file in place: ``truncate`` keeps its first half (header intact), ``garbage`` replaces it."""
    path = Path(path)
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"this is not an image")
    else:
        raise ConfigError(f"unknown damage {how!r}; use truncate or garbage")
    return path
