"""Shared fixtures. The tiny CLIP is pretrained once per test session (about half a minute) and cached."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def checkpoints_dir(tmp_path_factory) -> Path:
    """One checkpoints folder for the session, so the tiny CLIP and feature caches are built once.

    Set NEMESIS_TEST_CHECKPOINTS to reuse a folder across sessions (e.g. a developer's warm cache).
    """
    shared = os.environ.get("NEMESIS_TEST_CHECKPOINTS")
    if shared:
        path = Path(shared)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("checkpoints")


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
    """A quiet Session on the shared checkpoints folder whose caches hold the embedded tiny CLIP and the
    digits dataset (loaded once); tests take ``tiny_session.replace(reports_dir=...)`` for their own tables."""
    from nemesis_analysis.config import RunConfig
    from nemesis_analysis.session import Session
    from nemesis_analysis.training.train import load_model_and_data

    session = Session(checkpoints_dir, checkpoints_dir.parent / "unused-reports", progress=False)
    load_model_and_data(RunConfig(), session)
    return session


@pytest.fixture
def tiny_context(tiny_session):
    """The loaded tiny CLIP and digits from the session's caches (``.loaded``, ``.dataset``)."""
    from types import SimpleNamespace

    from nemesis_analysis.config import RunConfig
    from nemesis_analysis.training.train import load_model_and_data

    loaded, dataset = load_model_and_data(RunConfig(), tiny_session)
    return SimpleNamespace(loaded=loaded, dataset=dataset)
