"""Cost of the dataset checks that run on every call: custom-dataset fingerprint and image header check.

    python benchmarks/bench_dataset_checks.py             # 10,000-file folder dataset, 200 photos per format
    python benchmarks/bench_dataset_checks.py --files 2000

Prints the time to load a ``folder:`` dataset (listing + fingerprint), the fingerprint alone, and, per
image format at photo size (500x375), the header check against a full decode with their ratio. The
header check must find what a decode finds on damaged files; that is asserted, not just timed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nemesis_analysis.data import integrity
from nemesis_analysis.data.base import fingerprint_files
from nemesis_analysis.data.custom import load_image_folder
from nemesis_analysis.data.fixtures import damage_image

NUM_CLASSES = 100
NUM_PHOTOS = 200


def best_of(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def write_folder(root: Path, num_files: int) -> Path:
    image = Image.new("RGB", (32, 32), (10, 100, 200))
    for k in range(num_files):
        split = "test" if k % 10 >= 7 else "train"
        folder = root / split / f"c{k % NUM_CLASSES:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{k}.png")
    return root


def bench_fingerprint(root: Path, num_files: int) -> None:
    data = load_image_folder(root)
    load = best_of(lambda: load_image_folder(root))
    splits = {"train": data.train, "val": data.val, "test": data.test}
    alone = best_of(lambda: fingerprint_files(root, data.classnames, splits, "bench"))
    print(f"folder dataset, {num_files} files: load {load * 1e3:.0f} ms, of which fingerprint {alone * 1e3:.0f} ms")


def bench_header_check(folder: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.random((375, 500, 3)) * 60 + np.linspace(0, 180, 500)[None, :, None]).astype("uint8")
    photo = Image.fromarray(pixels)
    for suffix in (".jpg", ".png"):
        paths = [folder / f"{k}{suffix}" for k in range(NUM_PHOTOS)]
        for path in paths:
            photo.save(path, quality=90) if suffix == ".jpg" else photo.save(path)
        names = [str(p) for p in paths]
        header = best_of(lambda names=names: [integrity.image_problem(p) for p in names])
        decode = best_of(lambda names=names: [integrity.image_problem(p, decode=True) for p in names])
        damaged = str(damage_image(paths[0], "truncate"))
        found = (integrity.image_problem(damaged), integrity.image_problem(damaged, decode=True))
        assert found[0] is not None and found[1], (
            f"truncated {suffix} file: header check {found[0]!r}, decode {found[1]!r}"
        )
        print(
            f"{suffix[1:]} 500x375 ({paths[1].stat().st_size // 1024} KiB): header check "
            f"{header * 1e6 / NUM_PHOTOS:.0f} us/file, full decode {decode * 1e6 / NUM_PHOTOS:.0f} us/file, "
            f"ratio {decode / header:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_fingerprint(write_folder(Path(tmp) / "ds", args.files), args.files)
        photos = Path(tmp) / "photos"
        photos.mkdir()
        bench_header_check(photos)


if __name__ == "__main__":
    main()
