"""Training-step speed: the training step as ``nemesis train`` runs it against the reference-style step.

    python benchmarks/bench_train.py                  # all three cases (minutes on CPU; run on a quiet machine)
    python benchmarks/bench_train.py --quick          # case 1 only, 3 measured steps
    python benchmarks/bench_train.py --device cuda    # the same on a GPU (ours under the default amp precision)

Both steps do what a CoOp step does: encode the image batch with the frozen image tower (every step: the
training images are augmented), encode every class prompt with the context, cosine logits, cross-entropy,
backward to the context, SGD (CoOp's lr, momentum and weight decay). They differ only on the text side:
  reference: every class's full 77-token sequence through the plain pass, fp32 (the reference code's step);
  ours:      ``train.train_step`` on a :class:`~nemesis_analysis.training.train.TrainingRun` with the CoOp method, i.e.
             ``CoOp.text_features``: prompts cut at the longest EOS, the tokens every class shares (SOS and
             the context before the name) encoded once, each class over its own tokens only; under the
             model's precision (fp32 on CPU, amp on CUDA).
Augmentation is done once up front (identical CPU work in both, not timed). Losses and predictions of the
two paths are asserted equal on every measured step (fp32: losses to 1e-4 relative, predictions but for
float ties; amp on CUDA: losses to 2e-2 relative, predictions on at least 90% of the batch).

Cases: (1) digits: the embedded tiny CLIP on the digits few-shot set, measured; (2) caltech101-size: a
random-init ViT-B-16 with Caltech101's 100 class names and synthetic 224-pixel batches, measured;
(3) imagenet-size: the same with 1,000 class names; ours measured, the reference *projected* from case 2's
measured reference text cost per class (a 77-token, 1,000-class backward pass needs tens of GB) plus the
measured image cost, and ours' features checked against the 77-token pass on a sample of classes.
Each line: ``case <name>: reference <s>/step, ours <s>/step, speedup <x>`` and the peak memory of each path
(from the path's first step on: resident memory above its start on CPU, sampled every 5 ms after handing
freed heap memory back with ``malloc_trim``; on CUDA ``torch.cuda.max_memory_allocated`` above the start).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classnames import CALTECH_CLASSNAMES, imagenet_size_classnames  # noqa: E402

from nemesis_analysis.choices import Precision  # noqa: E402
from nemesis_analysis.clip.augment import augment_image  # noqa: E402
from nemesis_analysis.clip.encoding import LoadedModel, encode_text_from_embeddings  # noqa: E402
from nemesis_analysis.clip.loading import load_model  # noqa: E402
from nemesis_analysis.config import PromptConfig, RunConfig  # noqa: E402
from nemesis_analysis.data.fewshot import sample_few_shot  # noqa: E402
from nemesis_analysis.data.registry import load_dataset  # noqa: E402
from nemesis_analysis.methods.coop import CoOp  # noqa: E402
from nemesis_analysis.training.train import TrainingRun, build_optimizer, train_step  # noqa: E402

BATCH = 32  # CoOp's batch size
OPTIM = RunConfig().optim  # CoOp's SGD settings, as a default training run uses them


class RecordingCoOp(CoOp):
    """CoOp that keeps its last training logits, so the benchmark can compare the step's predictions."""

    def logits(self, image_features: torch.Tensor, local_features: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().logits(image_features, local_features)
        self.last_logits = logits.detach()
        return logits


def training_run(learner: CoOp) -> TrainingRun:
    """A :class:`TrainingRun` holding just what ``train_step`` uses: the method, its SGD and a plain CoOp config."""
    optimizer = build_optimizer(list(learner.slots().values()), OPTIM)
    empty = torch.empty(0)
    return TrainingRun(RunConfig(), learner.loaded, learner, optimizer, images=None, test_features=empty,
                       test_labels=empty, zero_shot_acc=float("nan"), run_dir=None)  # fmt: skip


def ours_step(learner: RecordingCoOp, ctx0: torch.Tensor) -> Callable:
    """The training step as ``nemesis train`` runs it (``train.train_step``), from a fresh copy of ``ctx0``."""
    with torch.no_grad():
        learner.ctx.copy_(ctx0)
    run = training_run(learner)
    generator = torch.Generator().manual_seed(0)

    def step(pixels, labels):
        losses, _ = train_step(run, pixels, labels, 0.0, generator, epoch=0)
        return float(losses["loss"]), learner.last_logits.argmax(dim=1).cpu()

    return step


def reference_step(loaded: LoadedModel, text: Callable, ctx0: torch.Tensor) -> Callable:
    """The reference-style step: fp32 image tower, ``text(ctx)`` (classes, embed), CE, backward, the same SGD."""
    ctx = ctx0.clone().requires_grad_()
    optimizer = build_optimizer([ctx], OPTIM)
    scale = loaded.logit_scale

    def step(pixels, labels):
        features = loaded.encode_images(pixels)  # (batch, embed)
        logits = scale * features @ text(ctx).T  # (batch, classes)
        loss = F.cross_entropy(logits, labels.to(logits.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach()), logits.detach().argmax(dim=1).cpu()

    return step


class FullLength:
    """The reference-style text pass: every class's whole context-length sequence, fp32, no cut."""

    def __init__(self, learner: CoOp):
        model = learner.loaded.model
        context_length = model.positional_embedding.shape[0]
        tokens = F.pad(learner.tokens, (0, context_length - learner.tokens.shape[1]))  # open_clip pads with 0
        with torch.no_grad():
            self.base = model.token_embedding(tokens).float()  # (classes, 77, width)
        self.learner, self.model = learner, model

    def text_features(self, ctx: torch.Tensor, classes: slice = slice(None)) -> torch.Tensor:
        learner = self.learner
        prompts = self.base[classes].clone()
        rows = torch.arange(prompts.shape[0], device=prompts.device)[:, None]
        context = ctx[None].expand(prompts.shape[0], -1, -1) if ctx.dim() == 2 else ctx[classes]
        prompts[rows, learner.ctx_index[classes]] = context.to(prompts.dtype)
        features = encode_text_from_embeddings(self.model, prompts, learner.eos[classes], truncate=False)
        return F.normalize(features.float(), dim=-1)


class PeakMemory:
    """Peak memory of a block: bytes above the start (resident set on CPU, allocated on CUDA)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._start)
            self._stop.wait(0.005)

    def __enter__(self):
        _release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start, self._stop = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()
        return False


def _release_freed_memory() -> None:
    """Hand memory freed by an earlier path back to the system, so resident-set peaks start clean (glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class PathResult:
    seconds: float  # per measured step
    peak_bytes: int
    losses: list[float]
    predictions: list[torch.Tensor]


def run_steps(device: torch.device, step: Callable, batches: list, warmup: int = 1) -> PathResult:
    """``step(pixels, labels)`` on every batch; the first ``warmup`` batches are run (and count for memory) but not timed."""
    losses, predictions = [], []
    with PeakMemory(device) as memory:
        for pixels, labels in batches[:warmup]:
            step(pixels, labels)
        _sync(device)
        started = time.perf_counter()
        for pixels, labels in batches[warmup:]:
            loss, predicted = step(pixels, labels)  # float() syncs each step, as the training loop does
            losses.append(loss)
            predictions.append(predicted)
        _sync(device)
        elapsed = time.perf_counter() - started
    return PathResult(elapsed / max(1, len(batches) - warmup), memory.peak, losses, predictions)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_equal(reference: PathResult, ours: PathResult, exact: bool) -> str:
    """Assert the two paths' losses and predictions agree; return a short note."""
    rtol, min_agree = (1e-4, 1.0) if exact else (2e-2, 0.9)
    for step, (a, b) in enumerate(zip(reference.losses, ours.losses)):
        assert abs(a - b) <= rtol * max(abs(a), 1e-6), f"step {step}: reference loss {a} vs ours {b}"
    same = torch.cat([(a == b).double() for a, b in zip(reference.predictions, ours.predictions)])
    assert float(same.mean()) >= min(min_agree, 1.0 - 2.0 / len(same)), f"predictions agree on {float(same.mean()):.3f}"
    return f"losses equal to {rtol:g} relative on {len(ours.losses)} steps, predictions {int(same.sum())}/{len(same)} equal"


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def _line(name: str, reference: float, ours: float, ref_mem: str, ours_mem: str, note: str = "") -> str:
    return (
        f"case {name}: reference {reference:.4g}s/step{note}, ours {ours:.4g}s/step, speedup {reference / ours:.1f}x"
        f"{note}; peak memory reference {ref_mem}, ours {ours_mem}"
    )


def _synthetic_batches(loaded: LoadedModel, num_classes: int, steps: int, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    size = loaded.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    batches = []
    for _ in range(steps):
        pixels = torch.randn(BATCH, 3, size, size, generator=generator).to(loaded.device)
        labels = torch.randint(0, num_classes, (BATCH,), generator=generator).to(loaded.device)
        batches.append((pixels, labels))
    return batches


def _compare(loaded, learner, batches, exact):
    full = FullLength(learner)
    ctx0 = learner.ctx.detach().clone()
    ours = run_steps(loaded.device, ours_step(learner, ctx0), batches)
    reference = run_steps(loaded.device, reference_step(_fp32(loaded), full.text_features, ctx0), batches)
    return reference, ours, check_equal(reference, ours, exact), learner.shared_tokens


def _fp32(loaded: LoadedModel) -> LoadedModel:
    """The same frozen model without autocast: the reference-style step runs in fp32."""
    return dataclasses.replace(loaded, precision=Precision.FP32)


def _memory(result: PathResult) -> str:
    return _mib(result.peak_bytes)


# --------------------------------------------------------------------------------------------------- cases


def case_digits(device: torch.device, checkpoints: Path, steps: int) -> None:
    loaded = load_model("nemesis-tiny", "embedded", device=device, checkpoints_dir=checkpoints, progress=False)
    dataset = load_dataset("digits")
    samples = sample_few_shot(dataset.train, 16, seed=1)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(samples), generator=generator).tolist()
    batches = []
    for step in range(steps + 1):  # + the warm-up step
        chosen = [samples[order[(step * BATCH + i) % len(samples)]] for i in range(BATCH)]
        pixels = torch.stack(
            [
                augment_image(dataset.load_image(s.source), loaded.preprocess_cfg, dataset.augmentation, generator)
                for s in chosen
            ]
        )
        batches.append((pixels.to(device), torch.tensor([s.label for s in chosen], device=device)))
    learner = RecordingCoOp(loaded, dataset.classnames, PromptConfig(n_ctx=16), seed=1)
    reference, ours, note, shared = _compare(loaded, learner, batches, exact=loaded.precision == Precision.FP32)
    print(
        f"digits: nemesis-tiny, {dataset.num_classes} classes, batch {BATCH}, {steps} measured steps, prompt "
        f"{learner.base.shape[1]} of 77 tokens with {shared} shared, {loaded.precision.value}; {note}"
    )
    print(_line("digits", reference.seconds, ours.seconds, _memory(reference), _memory(ours)))


def case_caltech_size(device: torch.device, steps: int, backbone: str) -> PathResult:
    loaded = load_model(backbone, "none", device=device, progress=False)
    learner = RecordingCoOp(loaded, CALTECH_CLASSNAMES, PromptConfig(n_ctx=16), seed=1)
    batches = _synthetic_batches(loaded, learner.num_classes, steps + 1, seed=2)
    reference, ours, note, shared = _compare(loaded, learner, batches, exact=loaded.precision == Precision.FP32)
    image = _image_seconds(loaded, batches)
    print(
        f"caltech101-size: random-init {backbone}, 100 classes, batch {BATCH} synthetic {batches[0][0].shape[-1]}-pixel images, {steps} "
        f"measured steps, prompt {learner.base.shape[1]} of 77 tokens with {shared} shared, "
        f"{loaded.precision.value}; image tower {image:.3g}s/step; {note}"
    )
    print(_line("caltech101-size", reference.seconds, ours.seconds, _memory(reference), _memory(ours)))
    return reference, image, loaded


def _image_seconds(loaded: LoadedModel, batches: list) -> float:
    """Measured image-tower time of one step (the part both paths share), fp32 like the reference."""
    fp32 = _fp32(loaded)
    fp32.encode_images(batches[0][0])
    _sync(loaded.device)
    started = time.perf_counter()
    for pixels, _ in batches[1:]:
        fp32.encode_images(pixels)
    _sync(loaded.device)
    return (time.perf_counter() - started) / max(1, len(batches) - 1)


def case_imagenet_size(loaded: LoadedModel, reference_100: PathResult, image: float, steps: int) -> None:
    names = imagenet_size_classnames(1000)
    learner = RecordingCoOp(loaded, names, PromptConfig(n_ctx=16), seed=1)
    shared = learner.shared_tokens
    batches = _synthetic_batches(loaded, learner.num_classes, steps + 1, seed=3)
    ours = run_steps(loaded.device, ours_step(learner, learner.ctx.detach().clone()), batches)
    _release_freed_memory()
    # reference projected: the measured 100-class text cost per class, times 1,000, plus the image tower
    per_class = (reference_100.seconds - image) / 100
    reference = image + 1000 * per_class
    sample = slice(0, 1000, 50)  # 20 classes through the 77-token pass, against ours' features for them
    with torch.no_grad():
        ours_features = learner.text_features()[0, sample]
        full_features = FullLength(learner).text_features(learner.ctx.detach(), sample)
    gap = float((ours_features - full_features).abs().max())
    assert gap < (1e-5 if loaded.precision == Precision.FP32 else 2e-2), f"features differ by {gap}"
    print(
        f"imagenet-size: random-init {loaded.backbone}, 1000 classes, batch {BATCH}, ours {steps} measured steps, prompt "
        f"{learner.base.shape[1]} of 77 tokens with {shared} shared; reference projected from the 100-class case "
        f"({per_class:.3g}s per class + {image:.3g}s image tower); ours' features equal the 77-token pass to {gap:.1e}"
    )
    print(_line("imagenet-size", reference, ours.seconds, "(projected)", _memory(ours), note=" (projected)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Only case 1, with 3 measured steps.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (ours under the model's default precision).")
    parser.add_argument(
        "--steps", type=int, default=None, help="Measured steps per case (default 10 / 2 / 2; quick 3)."
    )
    parser.add_argument("--backbone", default="ViT-B-16", help="Random-init architecture of cases 2 and 3.")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="Holds the tiny CLIP cache.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_train: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2
    case_digits(device, args.checkpoints, args.steps or (3 if args.quick else 10))
    if not args.quick:
        reference_100, image, loaded = case_caltech_size(device, args.steps or 2, args.backbone)
        case_imagenet_size(loaded, reference_100, image, args.steps or 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
