"""Which data a study needs and which of its files are missing, checked from the paths alone (nothing is read).

A plan is made on a machine without the data (a laptop, a login node): it lists, one line each, the
dataset folders, image folders and split files it would read and does not find under the data root.
"""

from __future__ import annotations

from pathlib import Path

from nemesis_analysis.study.spec import Study


def needed_datasets(study: Study) -> list[str]:
    """Training datasets, evaluation targets and the transfer targets of the protocol, in first-use order."""
    from nemesis_analysis.protocols import evaluation_plan

    names = list(study.grid.datasets)
    if study.evaluate is not None:
        names += list(study.evaluate.targets)
    for dataset in study.grid.datasets:
        names += [target for target, _ in evaluation_plan(study.grid.protocol, dataset)]
    return list(dict.fromkeys(names))


def missing_data(study: Study) -> list[str]:
    """One line per missing folder or file (and how to get it); empty when everything is in place."""
    from nemesis_analysis.data.coop import LAYOUTS
    from nemesis_analysis.data.registry import CUSTOM_PREFIXES, get_dataset_entry, resolve_data_root

    root = resolve_data_root(study.outputs.data_root)
    lines = []
    for name in needed_datasets(study):
        if name.startswith(CUSTOM_PREFIXES):
            path = Path(name.split(":", 1)[1]).expanduser()
            lines += [] if path.exists() else [f"{name}: {path} not found"]
            continue
        if get_dataset_entry(name).folder is None:
            continue  # embedded in the package
        layout = LAYOUTS.get(name)
        if root is None:
            lines.append(f"{name}: no data root (set outputs.data_root or $NEMESIS_DATA)")
            continue
        wanted = (
            [layout.dataset_dir(root), layout.image_path(root)] if layout else [root / get_dataset_entry(name).folder]
        )
        if layout is not None and layout.split_file:
            wanted.append(layout.dataset_dir(root) / layout.split_file)
        absent = [str(path) for path in dict.fromkeys(wanted) if not path.exists()]
        absent = absent[:1] if not wanted[0].exists() else absent  # no dataset folder: nothing inside it either
        if absent:
            how = f" ({layout.how_to_get()})" if layout is not None else ""
            lines.append(f"{name}: missing {', '.join(absent)}{how}")
    return lines
