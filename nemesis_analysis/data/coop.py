"""Readers for the 11 CoOp datasets and the 4 ImageNet variants, in the layout of CoOp's DATASETS.md.

Every reader takes the data root (the folder that holds ``caltech-101/``, ``oxford_pets/``, ...) and
returns a :class:`DatasetSplits` with *every* sample of each split; few-shot sampling happens later.
Readers only read: they never write CoOp's ``split_fewshot/`` pickles or any other file, so a
read-only dataset mount works and :mod:`nemesis_analysis.data.diagnose` can reuse them safely.

Class names follow CoOp: the names stored in the ``split_zhou_*.json`` files, with Caltech101's and
EuroSAT's renames applied (idempotent, so a split file that already holds the new names is fine) and
``_`` turned into a space, as CoOp's prompt learner and zero-shot CLIP both do before tokenising.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.data.registry import DATA_ROOT_ENV, register_dataset
from nemesis_analysis.errors import DataError

logger = logging.getLogger(__name__)

DATASETS_MD = "CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)"
SPLITS = ("train", "val", "test")

# Caltech101: CoOp drops the background class and the duplicate face class, and singularises four names.
CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

# EuroSAT: CoOp's readable names; the folder names (AnnualCrop, ...) make poor prompts.
EUROSAT_NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}

# Files that the ImageNet-A/R archives ship next to the class folders.
IMAGENET_VARIANT_IGNORED = ("README.txt",)


@dataclass(frozen=True)
class CoopLayout:
    """Where one dataset lives under the data root (CoOp's DATASETS.md), shared by readers, diagnose and fixtures."""

    name: str  # registry name
    folder: str  # folder directly under the data root
    image_dir: str  # image folder, relative to ``folder`` ("" = ``folder`` itself)
    split_file: str | None  # split_zhou JSON inside ``folder``; None where the split comes from elsewhere
    section: str  # heading of DATASETS.md with the download steps; also the display name in figures and tables
    template: str  # CoOp's hand-crafted zero-shot prompt (trainers/zsclip.py CUSTOM_TEMPLATES)
    test_only: bool = False
    renames: dict[str, str] = field(default_factory=dict)  # raw class name -> CoOp name
    ignored: tuple[str, ...] = ()  # top-level image folders that are not classes

    def dataset_dir(self, root: Path) -> Path:
        return Path(root) / self.folder

    def image_path(self, root: Path) -> Path:
        return self.dataset_dir(root) / self.image_dir if self.image_dir else self.dataset_dir(root)

    def how_to_get(self) -> str:
        return f"see section {self.section!r} of {DATASETS_MD}"


def register_layout(name: str, description: str):
    """``register_dataset`` for a CoOp dataset: folder, test-only flag and display name from ``LAYOUTS[name]``."""
    layout = LAYOUTS[name]
    return register_dataset(
        name, folder=layout.folder, test_only=layout.test_only, description=description, label=layout.section
    )


def _layouts(*layouts: CoopLayout) -> dict[str, CoopLayout]:
    return {layout.name: layout for layout in layouts}


# One row per dataset: name, folder under the data root, image folder, split file, DATASETS.md section, template.
# fmt: off
LAYOUTS: dict[str, CoopLayout] = _layouts(
    CoopLayout("imagenet", "imagenet", "images", None, "ImageNet", "a photo of a {}."),
    CoopLayout("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "Caltech101",
               "a photo of a {}.", renames=CALTECH_NEW_CNAMES, ignored=CALTECH_IGNORED),
    CoopLayout("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "OxfordPets",
               "a photo of a {}, a type of pet."),
    CoopLayout("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", "StanfordCars",
               "a photo of a {}."),
    CoopLayout("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "Flowers102",
               "a photo of a {}, a type of flower."),
    CoopLayout("food101", "food-101", "images", "split_zhou_Food101.json", "Food101",
               "a photo of {}, a type of food."),
    CoopLayout("fgvc_aircraft", "fgvc_aircraft", "images", None, "FGVCAircraft",
               "a photo of a {}, a type of aircraft."),
    CoopLayout("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", "SUN397", "a photo of a {}."),
    CoopLayout("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", "DTD", "{} texture."),
    CoopLayout("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", "EuroSAT",
               "a centered satellite photo of {}.", renames=EUROSAT_NEW_CNAMES),
    CoopLayout("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "UCF101",
               "a photo of a person doing {}."),
    CoopLayout("imagenetv2", "imagenetv2", "imagenetv2-matched-frequency-format-val", None, "ImageNetV2",
               "a photo of a {}.", test_only=True),
    CoopLayout("imagenet_sketch", "imagenet-sketch", "images", None, "ImageNet-Sketch", "a photo of a {}.",
               test_only=True),
    CoopLayout("imagenet_a", "imagenet-adversarial", "imagenet-a", None, "ImageNet-A", "a photo of a {}.",
               test_only=True),
    CoopLayout("imagenet_r", "imagenet-rendition", "imagenet-r", None, "ImageNet-R", "a photo of a {}.",
               test_only=True),
)
# fmt: on


# FGVC-Aircraft: CoOp moves the archive's data/ folder to fgvc_aircraft/; an unmoved data/ works too.
FGVC_BASE_CANDIDATES = ("", "data")


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def coop_classname(raw: str, renames: dict[str, str] | None = None) -> str:
    """CoOp's display name of a class: dataset renames first, then ``_`` -> space (as CoOp's prompt learner)."""
    name = (renames or {}).get(raw, raw)
    return name.replace("_", " ")


def require_dataset_dir(layout: CoopLayout, root: Path | None) -> Path:
    """The dataset folder under ``root``, or a DataError that says where it should be and how to get it."""
    if root is None:
        raise DataError(
            f"{layout.name}: needs a data root; pass --data-root DIR (or set {DATA_ROOT_ENV}) "
            f"pointing at the folder that contains {layout.folder}/"
        )
    dataset_dir = layout.dataset_dir(root)
    if not dataset_dir.is_dir():
        raise DataError(
            f"{layout.name}: folder {dataset_dir} not found; download the dataset there ({layout.how_to_get()})"
        )
    return dataset_dir


def require_dir(layout: CoopLayout, path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{layout.name}: {what} {path} not found; extract the images there ({layout.how_to_get()})")
    return path


def _absolute(path: Path) -> Path:
    # Absolute without resolving symlinks: DATASETS.md suggests symlinking datasets into $DATA.
    return Path(os.path.abspath(path))


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    """Entries of ``folder`` without hidden files (``.DS_Store``, ...), sorted by name."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _files_in(folder: Path) -> list[str]:
    """Sorted paths of the visible files in ``folder`` (CoOp lists class folders the same way)."""
    return [os.path.join(folder, e.name) for e in _visible_entries(folder) if e.is_file()]


# --------------------------------------------------------------------------------------------------
# split_zhou JSON datasets
# --------------------------------------------------------------------------------------------------


def split_file_path(layout: CoopLayout, root: Path) -> Path:
    if layout.split_file is None:
        raise ValueError(f"{layout.name} has no split_zhou file")
    return layout.dataset_dir(root) / layout.split_file


def read_zhou_json(layout: CoopLayout, path: Path) -> dict[str, list]:
    """Parse a split_zhou file: ``{"train"|"val"|"test": [[relative_impath, label, classname], ...]}``."""
    if not path.is_file():
        raise DataError(
            f"{layout.name}: split file {path} not found; download {layout.split_file} "
            f"({layout.how_to_get()}) and place it in {path.parent}"
        )
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{layout.name}: split file {path} is not valid JSON ({exc}); download it again ({layout.how_to_get()})"
        ) from None
    missing = [s for s in SPLITS if not isinstance(payload, dict) or not isinstance(payload.get(s), list)]
    if missing:
        raise DataError(
            f"{layout.name}: split file {path} has no {'/'.join(missing)} list; download it again "
            f"({layout.how_to_get()})"
        )
    return payload


def _parse_zhou_entries(
    layout: CoopLayout, path: Path, payload: dict[str, list]
) -> dict[str, list[tuple[str, int, str]]]:
    """Validated ``(relative_impath, label, raw_classname)`` triples per split, ignored folders removed."""
    out: dict[str, list[tuple[str, int, str]]] = {}
    for split in SPLITS:
        rows = []
        for index, entry in enumerate(payload[split]):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
                raise DataError(
                    f"{layout.name}: split file {path}, {split}[{index}] is {entry!r}, expected "
                    f"[relative_path, label, classname]; download the file again ({layout.how_to_get()})"
                )
            impath, label, classname = entry
            top = str(impath).replace("\\", "/").split("/", 1)[0]
            if top in layout.ignored:
                continue
            if isinstance(label, bool) or not isinstance(label, int):
                raise DataError(
                    f"{layout.name}: split file {path}, {split}[{index}] has label {label!r}, expected an integer; "
                    f"download the file again ({layout.how_to_get()})"
                )
            rows.append((str(impath), label, str(classname)))
        out[split] = rows
    return out


def _label_names(layout: CoopLayout, path: Path, rows: dict[str, list[tuple[str, int, str]]]) -> dict[int, str]:
    """Label -> CoOp class name, checking that every label has one name throughout the file."""
    names: dict[int, str] = {}
    for split in SPLITS:
        for _, label, raw in rows[split]:
            name = coop_classname(raw, layout.renames)
            if names.setdefault(label, name) != name:
                raise DataError(
                    f"{layout.name}: split file {path} gives label {label} two class names "
                    f"({names[label]!r} and {name!r}); download the file again ({layout.how_to_get()})"
                )
    return names


def read_zhou_split(layout: CoopLayout, root: Path | None) -> DatasetSplits:
    """Read a dataset whose fixed split is a CoOp ``split_zhou_*.json`` file (paths relative to the image dir)."""
    require_dataset_dir(layout, root)
    path = split_file_path(layout, root)
    rows = _parse_zhou_entries(layout, path, read_zhou_json(layout, path))
    image_dir = _absolute(require_dir(layout, layout.image_path(root), "image folder"))
    names = _label_names(layout, path, rows)
    # Labels are kept as stored; they are only renumbered (order kept) if ignored classes left gaps.
    relabel = {old: new for new, old in enumerate(sorted(names))}
    if any(old != new for old, new in relabel.items()):
        logger.info("%s: renumbered %d labels to close gaps in %s", layout.name, len(relabel), path)
    splits = {
        split: [Sample(os.path.join(image_dir, impath), relabel[label]) for impath, label, _ in rows[split]]
        for split in SPLITS
    }
    classnames = [names[old] for old in sorted(names)]
    logger.info("%s: %d classes, %s", layout.name, len(classnames), {s: len(v) for s, v in splits.items()})
    return DatasetSplits(
        name=layout.name,
        classnames=classnames,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        template=layout.template,
    )


@register_layout("caltech101", "Caltech101, 100 object classes (CoOp split)")
def read_caltech101(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["caltech101"], root)


@register_layout("oxford_pets", "Oxford-IIIT Pets, 37 breeds (CoOp split)")
def read_oxford_pets(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["oxford_pets"], root)


@register_layout("stanford_cars", "Stanford Cars, 196 models (CoOp split)")
def read_stanford_cars(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["stanford_cars"], root)


@register_layout("oxford_flowers", "Flowers102, 102 species (CoOp split)")
def read_oxford_flowers(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["oxford_flowers"], root)


@register_layout("food101", "Food-101, 101 dishes (CoOp split)")
def read_food101(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["food101"], root)


@register_layout("sun397", "SUN397, 397 scene categories (CoOp split)")
def read_sun397(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["sun397"], root)


@register_layout("dtd", "Describable Textures, 47 textures (CoOp split)")
def read_dtd(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["dtd"], root)


@register_layout("eurosat", "EuroSAT RGB, 10 land-use classes (CoOp split)")
def read_eurosat(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["eurosat"], root)


@register_layout("ucf101", "UCF101 middle frames, 101 actions (CoOp split)")
def read_ucf101(root: Path | None) -> DatasetSplits:
    return read_zhou_split(LAYOUTS["ucf101"], root)


# --------------------------------------------------------------------------------------------------
# FGVC-Aircraft: the official variant lists
# --------------------------------------------------------------------------------------------------


def fgvc_base_dir(layout: CoopLayout, dataset_dir: Path) -> Path:
    """The folder holding ``variants.txt`` and ``images/``: ``fgvc_aircraft/`` (CoOp) or ``fgvc_aircraft/data/``."""
    for candidate in FGVC_BASE_CANDIDATES:
        base = dataset_dir / candidate if candidate else dataset_dir
        if (base / "variants.txt").is_file():
            return base
    raise DataError(
        f"{layout.name}: {dataset_dir / 'variants.txt'} not found; move the archive's data/ folder to "
        f"{dataset_dir} so that variants.txt and images/ sit directly in it ({layout.how_to_get()})"
    )


def _read_fgvc_variants(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_fgvc_list(layout: CoopLayout, path: Path, image_dir: Path, label_of: dict[str, int]) -> list[Sample]:
    """``images_variant_<split>.txt``: lines ``<image id> <variant name, may contain spaces>``."""
    if not path.is_file():
        raise DataError(f"{layout.name}: split list {path} not found; re-extract the dataset ({layout.how_to_get()})")
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in label_of:
            raise DataError(
                f"{layout.name}: {path} line {number} names variant {variant!r}, which is not in variants.txt; "
                f"re-extract the dataset ({layout.how_to_get()})"
            )
        samples.append(Sample(os.path.join(image_dir, image_id + ".jpg"), label_of[variant]))
    return samples


@register_layout("fgvc_aircraft", "FGVC-Aircraft, 100 variants (official split)")
def read_fgvc_aircraft(root: Path | None) -> DatasetSplits:
    layout = LAYOUTS["fgvc_aircraft"]
    base = fgvc_base_dir(layout, require_dataset_dir(layout, root))
    image_dir = _absolute(require_dir(layout, base / layout.image_dir, "image folder"))
    variants = _read_fgvc_variants(base / "variants.txt")
    label_of = {variant: label for label, variant in enumerate(variants)}
    splits = {
        split: _read_fgvc_list(layout, base / f"images_variant_{split}.txt", image_dir, label_of) for split in SPLITS
    }
    return DatasetSplits(
        name=layout.name,
        classnames=[coop_classname(v) for v in variants],
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        template=layout.template,
    )


# --------------------------------------------------------------------------------------------------
# ImageNet and its variants: class folders named by WordNet id, names from classnames.txt
# --------------------------------------------------------------------------------------------------


def read_imagenet_classnames(path: Path) -> dict[str, str]:
    """``classnames.txt``: lines ``<wnid> <class name with spaces>``, in label order (CoOp's copy is wnid-sorted)."""
    names: dict[str, str] = {}
    for line in path.read_text().splitlines():
        wnid, _, name = line.strip().partition(" ")
        if wnid:
            names[wnid] = name.strip()
    return names


def imagenet_classnames_file(layout: CoopLayout, root: Path) -> Path:
    """The variant's own copy of classnames.txt (as DATASETS.md asks), else the one in ``imagenet/``."""
    own = layout.dataset_dir(root) / "classnames.txt"
    shared = Path(root) / LAYOUTS["imagenet"].folder / "classnames.txt"
    for path in (own, shared):
        if path.is_file():
            return path
    raise DataError(
        f"{layout.name}: {own} not found; download classnames.txt (see section 'ImageNet' of {DATASETS_MD}) "
        f"to {shared} and copy it to {own.parent}"
    )


def _flat_images(folder: Path) -> list[str]:
    return [e.name for e in _visible_entries(folder) if e.is_file() and e.name not in IMAGENET_VARIANT_IGNORED]


def read_wnid_folders(layout: CoopLayout, folder: Path, label_of: dict[str, int], what: str) -> list[Sample]:
    """Samples of ``folder/<wnid>/*``; a flat file or an unknown wnid folder is a DataError, not a silent skip."""
    flat = _flat_images(folder)
    if flat:
        raise DataError(
            f"{layout.name}: {folder} holds {len(flat)} image files directly (e.g. {flat[0]}) instead of in "
            f"class folders {folder}/<wnid>/; sort them into one folder per class "
            f"(e.g. with valprep.sh from the PyTorch ImageNet example)"
        )
    samples = []
    for entry in _visible_entries(folder):
        if not entry.is_dir():
            continue
        if entry.name not in label_of:
            raise DataError(
                f"{layout.name}: folder {entry.path} is not one of the {len(label_of)} {what}; "
                f"remove it or re-extract the official archive ({layout.how_to_get()})"
            )
        label = label_of[entry.name]
        samples.extend(Sample(path, label) for path in _files_in(Path(entry.path)))
    return samples


def _imagenet_splits(
    layout: CoopLayout, wnids: list[str], names: dict[str, str], **splits: list[Sample]
) -> DatasetSplits:
    return DatasetSplits(
        name=layout.name,
        classnames=[coop_classname(names[w]) for w in wnids],
        train=splits.get("train", []),
        val=splits.get("val", []),
        test=splits.get("test", []),
        template=layout.template,
    )


@register_layout("imagenet", "ImageNet-1k; CoOp tests on the official val set")
def read_imagenet(root: Path | None) -> DatasetSplits:
    """ImageNet: labels follow classnames.txt; ``images/val`` is the test split and there is no val split.

    CoOp evaluates the last-epoch model on the official val set and does no model selection, so the
    val set is exposed as ``test`` only (exposing it twice would invite tuning on the test set).
    """
    layout = LAYOUTS["imagenet"]
    dataset_dir = require_dataset_dir(layout, root)
    names = read_imagenet_classnames(imagenet_classnames_file(layout, root))
    wnids = list(names)
    label_of = {w: i for i, w in enumerate(wnids)}
    images = _absolute(require_dir(layout, dataset_dir / layout.image_dir, "image folder"))
    what = "imagenet class folders of classnames.txt"
    train = read_wnid_folders(layout, require_dir(layout, images / "train", "folder"), label_of, what)
    test = read_wnid_folders(layout, require_dir(layout, images / "val", "folder"), label_of, what)
    return _imagenet_splits(layout, wnids, names, train=train, test=test)


def read_imagenet_test_set(
    layout: CoopLayout, root: Path | None, subset: frozenset[str] | None = None, folders_by_label: bool = False
) -> DatasetSplits:
    """A test-only ImageNet variant: classnames.txt's classes (or those in ``subset``), in its order.

    Sketch, A and R name class folders by WordNet id; ImageNetV2 by ImageNet label (``0`` .. ``999``).
    A and R keep their 200-class subset, labelled in wnid order, i.e. CoOp's sorted class folders.
    """
    dataset_dir = require_dataset_dir(layout, root)
    names = read_imagenet_classnames(imagenet_classnames_file(layout, root))
    wnids = list(names) if subset is None else sorted(w for w in names if w in subset)
    if subset is not None and len(wnids) < len(subset):
        logger.warning("%s: classnames.txt names %d of the %d classes", layout.name, len(wnids), len(subset))
    image_dir = _absolute(require_dir(layout, dataset_dir / layout.image_dir, "image folder"))
    folders = [str(label) for label in range(len(wnids))] if folders_by_label else wnids
    what = f"{layout.name} class folders of classnames.txt" + (" (named by label)" if folders_by_label else "")
    test = read_wnid_folders(layout, image_dir, {f: i for i, f in enumerate(folders)}, what)
    return _imagenet_splits(layout, wnids, names, test=test)


@register_layout("imagenet_sketch", "ImageNet-Sketch (test only)")
def read_imagenet_sketch(root: Path | None) -> DatasetSplits:
    return read_imagenet_test_set(LAYOUTS["imagenet_sketch"], root)


@register_layout("imagenetv2", "ImageNetV2 matched-frequency (test only)")
def read_imagenetv2(root: Path | None) -> DatasetSplits:
    return read_imagenet_test_set(LAYOUTS["imagenetv2"], root, folders_by_label=True)


@register_layout("imagenet_a", "ImageNet-A, 200 classes (test only)")
def read_imagenet_a(root: Path | None) -> DatasetSplits:
    return read_imagenet_test_set(LAYOUTS["imagenet_a"], root, subset=IMAGENET_A_WNIDS)


@register_layout("imagenet_r", "ImageNet-R, 200 classes (test only)")
def read_imagenet_r(root: Path | None) -> DatasetSplits:
    return read_imagenet_test_set(LAYOUTS["imagenet_r"], root, subset=IMAGENET_R_WNIDS)


def _wnids(block: str) -> frozenset[str]:
    return frozenset("n" + digits for digits in block.split())


# The 200 WordNet ids of ImageNet-A (Hendrycks et al., natural-adv-examples), without the leading "n".
IMAGENET_A_WNIDS = _wnids("""
01498041 01531178 01534433 01558993 01580077 01614925 01616318 01631663 01641577 01669191
01677366 01687978 01694178 01698640 01735189 01770081 01770393 01774750 01784675 01819313
01820546 01833805 01843383 01847000 01855672 01882714 01910747 01914609 01924916 01944390
01985128 01986214 02007558 02009912 02037110 02051845 02077923 02085620 02099601 02106550
02106662 02110958 02119022 02123394 02127052 02129165 02133161 02137549 02165456 02174001
02177972 02190166 02206856 02219486 02226429 02231487 02233338 02236044 02259212 02268443
02279972 02280649 02281787 02317335 02325366 02346627 02356798 02361337 02410509 02445715
02454379 02486410 02492035 02504458 02655020 02669723 02672831 02676566 02690373 02701002
02730930 02777292 02782093 02787622 02793495 02797295 02802426 02814860 02815834 02837789
02879718 02883205 02895154 02906734 02948072 02951358 02980441 02992211 02999410 03014705
03026506 03124043 03125729 03187595 03196217 03223299 03250847 03255030 03291819 03325584
03355925 03384352 03388043 03417042 03443371 03444034 03445924 03452741 03483316 03584829
03590841 03594945 03617480 03666591 03670208 03717622 03720891 03721384 03724870 03775071
03788195 03804744 03837869 03840681 03854065 03888257 03891332 03935335 03982430 04019541
04033901 04039381 04067472 04086273 04099969 04118538 04131690 04133789 04141076 04146614
04147183 04179913 04208210 04235860 04252077 04252225 04254120 04270147 04275548 04310018
04317175 04344873 04347754 04355338 04366367 04376876 04389033 04399382 04442312 04456115
04482393 04507155 04509417 04532670 04540053 04554684 04562935 04591713 04606251 07583066
07695742 07697313 07697537 07714990 07718472 07720875 07734744 07749582 07753592 07760859
07768694 07831146 09229709 09246464 09472597 09835506 11879895 12057211 12144580 12267677
""")

# The 200 WordNet ids of ImageNet-R (Hendrycks et al., imagenet-r), without the leading "n".
IMAGENET_R_WNIDS = _wnids("""
01443537 01484850 01494475 01498041 01514859 01518878 01531178 01534433 01614925 01616318
01630670 01632777 01644373 01677366 01694178 01748264 01770393 01774750 01784675 01806143
01820546 01833805 01843383 01847000 01855672 01860187 01882714 01910747 01944390 01983481
01986214 02007558 02009912 02051845 02056570 02066245 02071294 02077923 02085620 02086240
02088094 02088238 02088364 02088466 02091032 02091134 02092339 02094433 02096585 02097298
02098286 02099601 02099712 02102318 02106030 02106166 02106550 02106662 02108089 02108915
02109525 02110185 02110341 02110958 02112018 02112137 02113023 02113624 02113799 02114367
02117135 02119022 02123045 02128385 02128757 02129165 02129604 02130308 02134084 02138441
02165456 02190166 02206856 02219486 02226429 02233338 02236044 02268443 02279972 02317335
02325366 02346627 02356798 02363005 02364673 02391049 02395406 02398521 02410509 02423022
02437616 02445715 02447366 02480495 02480855 02481823 02483362 02486410 02510455 02526121
02607072 02655020 02672831 02701002 02749479 02769748 02793495 02797295 02802426 02808440
02814860 02823750 02841315 02843684 02883205 02906734 02909870 02939185 02948072 02950826
02951358 02966193 02980441 02992529 03124170 03272010 03345487 03372029 03424325 03452741
03467068 03481172 03494278 03495258 03498962 03594945 03602883 03630383 03649909 03676483
03710193 03773504 03775071 03888257 03930630 03947888 04086273 04118538 04133789 04141076
04146614 04147183 04192698 04254680 04266014 04275548 04310018 04325704 04347754 04389033
04409515 04465501 04487394 04522168 04536866 04552348 04591713 07614500 07693725 07695742
07697313 07697537 07714571 07714990 07718472 07720875 07734744 07742313 07745940 07749582
07753275 07753592 07768694 07873807 07880968 07920052 09472597 09835506 10565667 12267677
""")
