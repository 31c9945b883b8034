"""Datasets: the registry, its readers (imported here, so registration never depends on import order), few-shot sampling."""

from nemesis_analysis.data import coop, embedded, specs  # noqa: F401  (each registers its datasets)
