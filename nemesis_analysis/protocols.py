"""The evaluation protocols as pure rules (torch-free): base/new class splits, relabelling and target lists.

base2new follows CoOp/CoCoOp (``subsample_classes`` in their dataset readers): sort the label ids,
base = the first ``ceil(n/2)``, new = the rest, each half relabelled from 0 in sorted order. Their
readers draw the few-shot sample (``generate_fewshot_dataset``) over all classes *first* and restrict
it to the base classes *afterwards*; :func:`restrict_samples` is that second step. dg and crossdataset
train on ImageNet and evaluate the same context on other datasets with their own class names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

from nemesis_analysis.choices import EvalClasses, Protocol, choice
from nemesis_analysis.data.base import DatasetSplits, Sample
from nemesis_analysis.errors import ConfigError, FieldError

TRANSFER_SOURCE = "imagenet"  # dg and crossdataset train here
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
CROSSDATASET_TARGETS: tuple[str, ...] = (
    "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
    "sun397", "dtd", "eurosat", "ucf101",
)  # fmt: skip


def split_base_new(labels: Iterable[int]) -> tuple[list[int], list[int]]:
    """(base, new) label ids: the sorted distinct ids cut after the first ``ceil(n/2)``."""
    ordered = sorted(set(int(label) for label in labels))
    cut = math.ceil(len(ordered) / 2)
    return ordered[:cut], ordered[cut:]


def selected_labels(labels: Iterable[int], classes: EvalClasses | str) -> list[int]:
    """The original label ids that ``classes`` (all, base or new) keeps, sorted."""
    classes = choice(EvalClasses, classes, "class subset")
    if classes is EvalClasses.ALL:
        return sorted(set(int(label) for label in labels))
    base, new = split_base_new(labels)
    return base if classes is EvalClasses.BASE else new


def relabeler(selected: Sequence[int]) -> dict[int, int]:
    """{original id: new id}: the selected ids renumbered from 0 in sorted order."""
    return {old: new for new, old in enumerate(sorted(selected))}


def restrict_samples(samples: Sequence[Sample], selected: Sequence[int]) -> list[Sample]:
    """The samples of the selected classes, relabelled with :func:`relabeler`, in their original order."""
    mapping = relabeler(selected)
    return [Sample(s.source, mapping[s.label]) for s in samples if s.label in mapping]


def class_view(dataset: DatasetSplits, classes: EvalClasses | str) -> DatasetSplits:
    """The dataset seen through a class subset: its class names and every split restricted and relabelled.

    The split is over the dataset's label ids ``0 .. num_classes - 1`` (CoOp takes the ids present in the
    few-shot train set, the same set whenever every class has a training image).
    """
    selected = selected_labels(range(dataset.num_classes), classes)
    if choice(EvalClasses, classes, "class subset") is EvalClasses.ALL:
        return dataset
    return replace(
        dataset,
        classnames=[dataset.classnames[label] for label in selected],
        train=restrict_samples(dataset.train, selected),
        val=restrict_samples(dataset.val, selected),
        test=restrict_samples(dataset.test, selected),
    )


def training_view(
    protocol: Protocol | str, dataset: DatasetSplits, samples: tuple[list[Sample], list[Sample]]
) -> tuple[DatasetSplits, tuple[list[Sample], list[Sample]]]:
    """What a run trains on: base2new restricts the already drawn (train, val) few-shot samples to the base
    classes and the dataset to its base view; other protocols keep both."""
    if choice(Protocol, protocol, "protocol") is not Protocol.BASE2NEW:
        return dataset, samples
    base, _ = split_base_new(range(dataset.num_classes))
    train, val = samples
    return class_view(dataset, EvalClasses.BASE), (restrict_samples(train, base), restrict_samples(val, base))


def sweep_classes(protocol: Protocol | str) -> tuple[EvalClasses, ...]:
    """The class subsets a corruption sweep of a run evaluates: base and new for base2new, all otherwise."""
    if choice(Protocol, protocol, "protocol") is Protocol.BASE2NEW:
        return (EvalClasses.BASE, EvalClasses.NEW)
    return (EvalClasses.ALL,)


def subset_classnames(classnames: Sequence[str], classes: EvalClasses | str) -> list[str]:
    """The class names of a subset (all, base or new) of a dataset's classes, in label order."""
    return [classnames[label] for label in selected_labels(range(len(classnames)), classes)]


def evaluation_plan(protocol: Protocol | str, dataset: str) -> list[tuple[str, EvalClasses]]:
    """The (eval_dataset, eval_classes) a finished run of ``protocol`` on ``dataset`` is evaluated on."""
    protocol = choice(Protocol, protocol, "protocol")
    if protocol is Protocol.FEWSHOT:
        return []
    if protocol is Protocol.BASE2NEW:
        return [(dataset, EvalClasses.BASE), (dataset, EvalClasses.NEW)]
    targets = DG_TARGETS if protocol is Protocol.DG else CROSSDATASET_TARGETS
    return [(dataset, EvalClasses.ALL)] + [(target, EvalClasses.ALL) for target in targets]


def check_protocol(protocol: Protocol | str, dataset: str, csc: bool) -> Protocol:
    """Refuse combinations a protocol cannot evaluate; returns the protocol as an enum."""
    protocol = choice(Protocol, protocol, "protocol")
    if protocol is Protocol.FEWSHOT:
        return protocol
    if csc:
        raise FieldError(
            "prompt.csc", f"prompt.csc: protocol {protocol.value} evaluates on other class names, which "
            "class-specific context has no vectors for; set prompt.csc = false"
        )  # fmt: skip
    if protocol in (Protocol.DG, Protocol.CROSSDATASET) and dataset != TRANSFER_SOURCE:
        raise FieldError(
            "dataset", f"protocol {protocol.value} trains on {TRANSFER_SOURCE}; set dataset = {TRANSFER_SOURCE}"
        )
    return protocol


def check_transfer(csc: bool, trained_names: Sequence[str], eval_names: Sequence[str]) -> None:
    """Class-specific context evaluates only on the class names it was learned for (same names, same order)."""
    if csc and list(trained_names) != list(eval_names):
        raise ConfigError(
            "class-specific context has vectors only for the classes it was trained on; evaluate it on its own "
            "dataset with --classes matching its training classes"
        )


def subsequence_indices(child: Sequence[str], parent: Sequence[str]) -> list[int]:
    """Index in ``parent`` of each of ``child``'s class names, matched in order (ImageNet-A/R in ImageNet).

    Both lists are in WordNet-id order, so the child is a subsequence of the parent; matching in order
    keeps repeated names apart.
    """
    indices, start = [], 0
    for name in child:
        try:
            found = list(parent).index(name, start)
        except ValueError:
            raise ConfigError(f"class {name!r} is not among the parent dataset's classes (in order)") from None
        indices.append(found)
        start = found + 1
    return indices
