"""Shared fixtures. The tiny CLIP is pretrained once per test session (about half a minute) and cached.

Tests choose their device: every fixture's Session runs on the CPU whatever hardware is present, and the
CUDA tests are exactly those marked ``cuda`` (skipped here without a CUDA device; ``pytest -m cuda`` runs them).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ["NEMESIS_DEVICE"] = "cpu"  # the commands tests run (in process or as subprocesses) default to the CPU


@pytest.fixture(scope="session")
def checkpoints_dir(tmp_path_factory) -> Path:
    """One checkpoints folder for the session, so the tiny CLIP and feature caches are built once. Its
    ``features`` folder exists from the start, so tests may link to it before anything is encoded.

    Set NEMESIS_TEST_CHECKPOINTS to reuse a folder across sessions (e.g. a developer's warm cache).
    """
    shared = os.environ.get("NEMESIS_TEST_CHECKPOINTS")
    path = Path(shared) if shared else tmp_path_factory.mktemp("checkpoints")
    (path / "features").mkdir(parents=True, exist_ok=True)
    return path


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` are skipped without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def user_cache(checkpoints_dir) -> Path:
    """The per-user cache (the tiny CLIP) is the session's checkpoints folder: tests never write to the real
    home, and subprocesses inherit it through $NEMESIS_CACHE."""
    previous = os.environ.get("NEMESIS_CACHE")
    os.environ["NEMESIS_CACHE"] = str(checkpoints_dir)
    yield checkpoints_dir
    if previous is None:
        os.environ.pop("NEMESIS_CACHE", None)
    else:
        os.environ["NEMESIS_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_session(checkpoints_dir):
    """A quiet CPU Session on the shared checkpoints folder whose caches hold the embedded tiny CLIP and the
    digits dataset (loaded once); tests take ``tiny_session.replace(reports_dir=...)`` for their own tables."""
    from nemesis_analysis.config import RunConfig
    from nemesis_analysis.session import Session
    from nemesis_analysis.training.train import load_model_and_data

    session = Session(checkpoints_dir, checkpoints_dir.parent / "unused-reports", device="cpu", progress=False)
    load_model_and_data(RunConfig(), session)
    return session


@pytest.fixture
def folders(tmp_path):
    """Fresh, not yet created folders of one test: ``.checkpoints``, ``.reports`` and ``.cache``."""
    from types import SimpleNamespace

    return SimpleNamespace(checkpoints=tmp_path / "checkpoints", reports=tmp_path / "reports", cache=tmp_path / "cache")


@pytest.fixture
def session(tiny_session, folders):
    """The tiny session (its warm model, dataset and feature caches) writing its tables to fresh reports."""
    return tiny_session.replace(reports_dir=folders.reports)


@pytest.fixture
def fresh_session(tiny_session, folders):
    """The tiny session with fresh checkpoints and reports: nothing trained or written yet."""
    return tiny_session.replace(checkpoints_dir=folders.checkpoints, reports_dir=folders.reports)


@pytest.fixture
def tiny_context(tiny_session):
    """The loaded tiny CLIP and digits from the session's caches (``.loaded``, ``.dataset``)."""
    from types import SimpleNamespace

    from nemesis_analysis.config import RunConfig
    from nemesis_analysis.training.train import load_model_and_data

    loaded, dataset = load_model_and_data(RunConfig(), tiny_session)
    return SimpleNamespace(loaded=loaded, dataset=dataset)
