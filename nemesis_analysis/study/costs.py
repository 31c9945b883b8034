"""What a plan will cost, from its configs alone: images to encode, epochs and images to train, variants to sweep.

Dataset sizes come from the embedded datasets themselves and, for the CoOp datasets, from their published
split sizes (classes, test images), so a plan is estimated without the data at hand; unknown sizes count
as missing. Where reports/jobs holds finished jobs of a kind, their mean time gives a time estimate.
"""

from __future__ import annotations

import math

import pandas as pd

from nemesis_analysis.config import RunConfig

# CoOp's splits (Zhou et al., DATASETS.md): (classes, test images).
COOP_SIZES: dict[str, tuple[int, int]] = {
    "imagenet": (1000, 50000),
    "caltech101": (100, 2465),
    "oxford_pets": (37, 3669),
    "stanford_cars": (196, 8041),
    "oxford_flowers": (102, 2463),
    "food101": (101, 30300),
    "fgvc_aircraft": (100, 3333),
    "sun397": (397, 19850),
    "dtd": (47, 1692),
    "eurosat": (10, 8100),
    "ucf101": (101, 3783),
}


def dataset_size(name: str) -> tuple[int, int] | None:
    """(classes, test images) of a dataset, or None when it cannot be known without reading it."""
    if name in COOP_SIZES:
        return COOP_SIZES[name]
    from nemesis_analysis.data.registry import CUSTOM_PREFIXES, get_dataset_entry, load_dataset

    if name.startswith(CUSTOM_PREFIXES) or get_dataset_entry(name).folder is not None:
        return None
    data = load_dataset(name)  # embedded: in the package, cheap
    return data.num_classes, len(data.test)


def job_cost(job, sizes: dict) -> dict:
    """Images encoded, epochs, training images seen and corruption variants of one job (NaN: unknown size)."""
    size = sizes.get(job.dataset)
    classes, test = size if size is not None else (math.nan, math.nan)
    cost = {"images_encoded": 0.0, "epochs": 0.0, "train_images": 0.0, "variants": 0.0}
    if job.kind == "encode":
        cost["images_encoded"] = test
    elif job.kind == "train":
        config = RunConfig.from_dict(job.payload["config"])
        base2new = config.protocol.value == "base2new" and not math.isnan(classes)
        trained = math.ceil(classes / 2) if base2new else classes
        cost["epochs"] = config.num_epochs
        cost["train_images"] = config.num_epochs * config.shots * trained  # base2new trains on the base classes
    elif job.kind == "corrupt":
        from nemesis_analysis.study.plan import expected_corruption_keys

        # one key per variant and class subset (base2new: base and new), each one text pass over the classes
        cost["variants"] = len(expected_corruption_keys(job))
    return cost


def estimate(jobs: list, history: pd.DataFrame) -> pd.DataFrame:
    """One row per job kind: jobs, the summed costs and, where jobs of the kind finished before, est_seconds."""
    sizes = {name: dataset_size(name) for name in {job.dataset for job in jobs}}
    rows = [{"kind": job.kind, **job_cost(job, sizes)} for job in jobs]
    if not rows:
        return pd.DataFrame(
            columns=["kind", "jobs", "images_encoded", "epochs", "train_images", "variants", "est_seconds"]
        )
    frame = pd.DataFrame(rows)
    total = lambda column: column.sum(skipna=False)  # noqa: E731 - an unknown size makes the sum unknown
    table = frame.groupby("kind", sort=False).agg(
        jobs=("kind", "size"), images_encoded=("images_encoded", total), epochs=("epochs", total),
        train_images=("train_images", total), variants=("variants", total),
    ).reset_index()  # fmt: skip
    finished = history[(history["state"] == "done") & history["seconds"].notna()]
    mean = finished.groupby("kind")["seconds"].mean()
    table["est_seconds"] = [row.jobs * mean.get(row.kind, math.nan) for row in table.itertuples()]
    return table
