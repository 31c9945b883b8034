"""Cheap checks that a dataset's image files exist and are readable, each failure one line naming file and split.

The header check (:func:`image_problem`) costs a fraction of a decode: PIL reads the header, PNG
chunks are CRC-checked without decompressing (``verify``), and a JPEG must end with its end-of-image
marker (a truncated JPEG has an intact header; only the missing tail gives it away). A JPEG whose
tail looks wrong (e.g. data appended after the marker) is decoded once to be sure, so nothing valid
is ever rejected. Used by the custom loaders, by feature encoding before the first image is
decoded, by few-shot sampling and by ``nemesis datasets``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

from PIL import Image

from nemesis_analysis.errors import DataError

MAX_EXAMPLES = 3  # paths quoted in one problem line
JPEG_EOI = b"\xff\xd9"
JPEG_TAIL_PADDING = b"\x00\r\n \t"  # bytes some writers leave after the end-of-image marker
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class Sample(Protocol):
    """What the checks read of a sample (data.base.Sample, which imports this module): its file path."""

    source: str


def examples(paths: list[str], limit: int = MAX_EXAMPLES) -> str:
    """``a, b, c and 4 more``: the first few paths of a list, for one problem line."""
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _jpeg_tail_ok(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 64))
        tail = handle.read().rstrip(JPEG_TAIL_PADDING)
    return tail.endswith(JPEG_EOI)


def _decode_problem(path: str) -> str | None:
    try:
        with Image.open(path) as image:
            image.load()
    except IMAGE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def image_problem(path: str, decode: bool = False) -> str | None:
    """Why ``path`` is not a readable image (one short phrase), or None when it is.

    ``decode=False`` is the cheap header check described in the module docstring; ``decode=True``
    decodes every pixel, as training would.
    """
    if decode:
        return _decode_problem(path)
    try:
        with Image.open(path) as image:
            image_format = image.format
            if image_format == "PNG":
                image.verify()  # walks the chunks and checks their CRCs: catches truncation, no decompression
    except IMAGE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    if image_format == "JPEG":
        try:
            tail_ok = _jpeg_tail_ok(path)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        if not tail_ok:
            return _decode_problem(path)  # the rare JPEG without a clean tail: decode it to be sure
    return None


def missing_sources(samples: Iterable[Sample]) -> list[str]:
    """Sources of ``samples`` that are not existing files, in order."""
    return [s.source for s in samples if not os.path.isfile(s.source)]


def unreadable_images(samples: Iterable[Sample], decode: bool = False) -> list[tuple[str, str]]:
    """``(path, reason)`` of every sample whose file exists but is not a readable image."""
    out = []
    for sample in samples:
        if os.path.isfile(sample.source) and (reason := image_problem(sample.source, decode)) is not None:
            out.append((sample.source, reason))
    return out


def check_image_files(dataset_name: str, split: str, samples: list[Sample]) -> None:
    """Raise a one-line DataError naming the first missing or damaged files of ``split``; silent when all are fine."""
    missing = missing_sources(samples)
    if missing:
        raise DataError(
            f"{dataset_name}: {len(missing)} of {len(samples)} {split} images do not exist ({examples(missing)}); "
            f"restore the files or remove them from the dataset"
        )
    broken = unreadable_images(samples)
    if broken:
        first_path, first_reason = broken[0]
        raise DataError(
            f"{dataset_name}: {len(broken)} of {len(samples)} {split} images are damaged "
            f"({examples([p for p, _ in broken])}; {first_path}: {first_reason}); "
            f"replace them with intact copies or remove them from the dataset"
        )
