"""Synthetic study timing on one GPU: a Caltech101-size corruption sweep and ImageNet-size training epochs.

    python benchmarks/gpu_study.py                 # needs CUDA; about 2-4 minutes on a recent GPU
    python benchmarks/gpu_study.py --epochs 1      # shorter

Nothing is downloaded: random-init ViT-B-16 (``--pretrained none``) under the default CUDA precision (amp).
  sweep: Caltech101's 100 class names, 2,465 synthetic 224-pixel test images through the image tower (timed),
         then the full default corruption grid over all 16 context positions (``expand_grid(16)``) through
         the batched prediction engine against those features (timed);
  train: 1,000 class names (ImageNet size), 16 shots (16,000 images, 500 steps of 32 per epoch), ``--epochs``
         epochs of the training step as ``nemesis train`` runs it (``train.train_step``: image tower +
         class-shared text pass + backward + SGD) on synthetic batches made on the GPU (no decoding or
         augmentation). When an epoch would pass ``--budget`` seconds, the rest is projected from the
         measured steps and the line says so.
Prints one paste-ready line per part, with the peak GPU memory (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import BATCH, training_run  # noqa: E402
from classnames import CALTECH_CLASSNAMES, imagenet_size_classnames  # noqa: E402

from nemesis_analysis.clip.loading import load_model  # noqa: E402
from nemesis_analysis.config import PromptConfig  # noqa: E402
from nemesis_analysis.corruption.engine import predict_corruptions  # noqa: E402
from nemesis_analysis.corruption.ops import expand_grid  # noqa: E402
from nemesis_analysis.methods.coop import CoOp  # noqa: E402
from nemesis_analysis.training.train import train_step  # noqa: E402

CALTECH_TEST_IMAGES = 2465


def _timed(function):
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = function()
    torch.cuda.synchronize()
    return result, time.perf_counter() - started


def _peak() -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def sweep(loaded) -> None:
    torch.cuda.reset_peak_memory_stats()
    learner = CoOp(loaded, CALTECH_CLASSNAMES, PromptConfig(n_ctx=16), seed=1)
    generator = torch.Generator(device="cuda").manual_seed(0)

    def encode():
        chunks = []
        for start in range(0, CALTECH_TEST_IMAGES, 256):
            count = min(256, CALTECH_TEST_IMAGES - start)
            chunks.append(loaded.encode_images(torch.randn(count, 3, 224, 224, generator=generator, device="cuda")))
        return torch.cat(chunks)  # (2465, embed)

    loaded.encode_images(torch.randn(8, 3, 224, 224, generator=generator, device="cuda"))  # warm-up
    features, image_seconds = _timed(encode)
    grid = expand_grid(16)
    predictions, sweep_seconds = _timed(
        lambda: predict_corruptions(learner, learner.ctx.detach(), grid, "gpu-study", features)
    )
    assert predictions.shape == (len(grid), CALTECH_TEST_IMAGES), (
        f"predictions {tuple(predictions.shape)}, expected {(len(grid), CALTECH_TEST_IMAGES)}"
    )
    print(
        f"gpu-study sweep: ViT-B-16 (random init, {loaded.precision.value}; text passes fp32), 100 classes, {CALTECH_TEST_IMAGES} images "
        f"encoded in {image_seconds:.1f}s; {len(grid)} variants x 16 positions grid in {sweep_seconds:.1f}s "
        f"({1000 * sweep_seconds / len(grid):.1f} ms/variant); peak {_peak()}"
    )


def train(loaded, epochs: int, shots: int, budget: float) -> None:
    torch.cuda.reset_peak_memory_stats()
    learner = CoOp(loaded, imagenet_size_classnames(1000), PromptConfig(n_ctx=16), seed=1)
    run = training_run(learner)
    generator = torch.Generator(device="cuda").manual_seed(1)
    pan_generator = torch.Generator().manual_seed(2)  # unused: plain CoOp draws no PAN positions
    steps_per_epoch = -(-1000 * shots // BATCH)

    def step():
        pixels = torch.randn(BATCH, 3, 224, 224, generator=generator, device="cuda")
        labels = torch.randint(0, 1000, (BATCH,), generator=generator, device="cuda")
        losses, _ = train_step(run, pixels, labels, 0.0, pan_generator, epoch=0)
        return float(losses["loss"])  # a sync per step, so that the timing covers the finished steps

    step()  # warm-up
    done, started = 0, time.perf_counter()
    for _ in range(epochs * steps_per_epoch):
        step()
        done += 1
        if time.perf_counter() - started > budget:
            break
    elapsed = time.perf_counter() - started
    total = elapsed / done * epochs * steps_per_epoch
    how = "measured" if done == epochs * steps_per_epoch else f"projected from {done} measured steps"
    print(
        f"gpu-study train: ViT-B-16 (random init, {loaded.precision.value}), 1000 classes, {shots} shots, "
        f"{epochs} epochs x {steps_per_epoch} steps of {BATCH}: {total:.1f}s ({how}), "
        f"{1000 * elapsed / done:.1f} ms/step; peak {_peak()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--budget", type=float, default=150.0, help="Seconds of measured training before projecting.")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_study: no CUDA device is available; run it on a machine with a GPU", file=sys.stderr)
        return 2
    print(
        f"gpu: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    )
    loaded = load_model("ViT-B-16", "none", device="cuda", progress=False)
    sweep(loaded)
    train(loaded, args.epochs, args.shots, args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
