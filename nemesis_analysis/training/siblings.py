"""Sibling runs: runs whose training data stream is identical, so that they can train fused.

Two runs see exactly the same batches (the same few-shot sample, order and augmentation at every step) when
they agree on every field of :data:`STREAM_FIELDS`: the dataset (and so its augmentation) and its content,
the frozen model and its precision, the shots and seed (sample, order and augmentation seeds), the protocol
(the training view), the epochs, and the batch size and rule. They may differ in everything else: the
Nemesis variant, norm weights, learning rate, prompt method and layout. Pure and torch-free.
"""

from __future__ import annotations

from nemesis_analysis.config import RunConfig
from nemesis_analysis.errors import ConfigError

STREAM_FIELDS: tuple[str, ...] = (
    "dataset",
    "dataset_fingerprint",
    "backbone",
    "pretrained",
    "precision",
    "shots",
    "seed",
    "protocol",
    "allow_missing_classes",
    "epochs",
    "optim.batch_size",
    "optim.drop_last",
)


def _value(config: RunConfig, dotted: str):
    if dotted == "epochs":
        return config.num_epochs
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return getattr(value, "value", value)  # enums by their value


def stream_key(config: RunConfig) -> tuple:
    """The values of :data:`STREAM_FIELDS`: runs with equal keys train on the same batches."""
    return tuple(_value(config, name) for name in STREAM_FIELDS)


def check_siblings(configs: list[RunConfig]) -> None:
    """Refuse a group whose runs would not see the same batches, naming the first field that differs."""
    if not configs:
        raise ConfigError("no runs to train: give at least one")
    first = configs[0]
    for other in configs[1:]:
        for name in STREAM_FIELDS:
            a, b = _value(first, name), _value(other, name)
            if a != b:
                raise ConfigError(
                    f"runs {first.run_id} and {other.run_id} cannot train together: their {name} differs "
                    f"({a!r} vs {b!r}); train them separately"
                )


def group_by_stream(configs: list[RunConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped by :func:`stream_key`, groups in order of their first member."""
    groups: dict[tuple, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(stream_key(config), []).append(index)
    return list(groups.values())
